"""The descriptive-analysis report on generated audio: tables, plots, per-clip loudness and pitch, cache, bad files."""
import hashlib
import logging
import re
import shutil

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from preprocess.analysis import write_analysis
from preprocess.clip_stats import audio_stats
from preprocess.scan import scan_archive
from tests.corpus import clip_name, make_corpus

PLOTS = ["class_distribution.png", "duration_hist.png", "loudness_by_emotion.png", "pitch_by_emotion.png",
         "waveforms.png", "logmel.png"]
SINE_220 = clip_name(3, 1, 1, 1, 1)  # 16 kHz mono, amplitude 0.5
SINE_440 = clip_name(2, 2, 1, 1, 2)  # 48 kHz stereo, amplitude 0.5: downmixed and resampled before analysis


def write_sine(path, freq: float, sample_rate: int = 16000, channels: int = 1, seconds: float = 0.8) -> None:
    """A pure sine of amplitude 0.5, overwriting PATH."""
    y = 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sample_rate)) / sample_rate)
    sf.write(path, np.repeat(y[:, None], channels, axis=1), sample_rate)


def emotion_table(report: str) -> dict[str, list[int]]:
    """The rows of the report's emotion x intensity table: emotion -> [normal, strong, total]."""
    section = report.split("## Clips per emotion and intensity")[1].split("##")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if re.match(r"\| [a-z]+ \| \d", line)]
    return {cells[0].strip(): [int(c) for c in cells[1:]] for cells in rows}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """Two actors x neutral/calm/happy tones (40 clips, two of them pure sines), scanned and analysed once."""
    root = tmp_path_factory.mktemp("analysis")
    make_corpus(root / "archive", actors=(1, 2), emotions=(1, 2, 3))
    write_sine(root / "archive/Actor_01" / f"{SINE_220}.wav", 220)
    write_sine(root / "archive/Actor_02" / f"{SINE_440}.wav", 440, sample_rate=48000, channels=2)
    data = scan_archive(root / "archive", jobs=2).data
    report = write_analysis(data, root / "analysis", jobs=2)
    return data, report, pd.read_csv(root / "analysis/clip_stats.csv").set_index("key")


def test_report_counts_match_the_input(analysed):
    """The emotion x intensity table of report.md has the input's counts and totals, and links every plot."""
    data, report, _ = analysed
    text = report.read_text()
    expected = pd.crosstab(data["emotion"], data["intensity"], margins=True, margins_name="total")
    assert emotion_table(text) == {e: expected.loc[e].tolist() for e in ["neutral", "calm", "happy", "total"]}
    assert emotion_table(text)["neutral"] == [8, 0, 8]
    for plot in PLOTS:
        assert f"]({plot})" in text


def test_pitch_table_is_per_gender(analysed):
    """The pitch table keeps male and female voices apart: an overall row per gender and intensity, matching the data."""
    data, report, stats = analysed
    section = report.read_text().split("## Median pitch (Hz)")[1].split("##")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    header, rows = rows[0], rows[2:]
    assert header[:3] == ["gender", "emotion", "intensity"] and {r[0] for r in rows} == {"female", "male"}
    f0 = data.set_index("key").join(stats["f0_median_hz"])
    for gender, intensity in [("male", "normal"), ("female", "strong")]:
        row = next(r for r in rows if r[:3] == [gender, "all", intensity])
        chosen = f0[(f0["gender"] == gender) & (f0["intensity"] == intensity)]["f0_median_hz"]
        assert float(row[header.index("median")]) == pytest.approx(chosen.median(), abs=0.01)


def test_every_plot_is_a_readable_image(analysed):
    """Each PNG exists and decodes to a reasonably sized RGB(A) image."""
    _, report, _ = analysed
    for plot in PLOTS:
        image = matplotlib.image.imread(report.parent / plot)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, plot


def test_pitch_and_level_of_known_sines(analysed):
    """A 220 Hz sine at 16 kHz and a 440 Hz stereo one at 48 kHz: pitch within 5 %; amplitude 0.5 is -9.03 dBFS RMS."""
    data, _, stats = analysed
    for key, freq in [(SINE_220, 220), (SINE_440, 440)]:
        assert stats.loc[key, "f0_median_hz"] == pytest.approx(freq, rel=0.05)
        assert stats.loc[key, "rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.05)
        assert stats.loc[key, "peak_dbfs"] == pytest.approx(20 * np.log10(0.5), abs=0.1)
        assert stats.loc[key, "voiced_fraction"] > 0.9
    tones = data[~data["key"].isin([SINE_220, SINE_440])]
    expected = 110 * tones["emotion_code"] + 7 * tones["actor"]  # the frequencies tests.corpus.make_corpus writes
    np.testing.assert_allclose(stats.loc[tones["key"], "f0_median_hz"], expected, rtol=0.05)


def test_pitch_ignores_quiet_frames():
    """Faint noise (-60 dB) around a 0.4 s 220 Hz tone: only the tone's third of the frames counts as voiced."""
    sr, rng = 16000, np.random.default_rng(0)
    tone = 0.5 * np.sin(2 * np.pi * 220 * np.arange(int(0.4 * sr)) / sr)
    y = np.concatenate([1e-3 * rng.standard_normal(int(0.4 * sr)), tone, 1e-3 * rng.standard_normal(int(0.4 * sr))])
    stats = audio_stats(y.astype(np.float32), sr)
    assert stats["f0_median_hz"] == pytest.approx(220, rel=0.05)
    assert stats["voiced_fraction"] == pytest.approx(1 / 3, abs=0.05)


def test_silence_has_no_pitch():
    """An all-zero clip has no F0 and no voiced frames instead of a made-up pitch."""
    stats = audio_stats(np.zeros(8000, dtype=np.float32), 16000)
    assert np.isnan(stats["f0_median_hz"]) and stats["voiced_fraction"] == 0.0


def test_cache_reuses_unchanged_clips_and_recomputes_changed_ones(analysed, tmp_path):
    """A re-run takes unchanged sha256s from clip_stats.csv (even if the file is gone) and recomputes the rest."""
    data, report, first = analysed
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "clip_stats.csv").write_bytes((report.parent / "clip_stats.csv").read_bytes())
    archive = shutil.copytree(report.parent.parent / "archive", tmp_path / "archive")
    data = data.assign(path=data["path"].str.replace(str(report.parent.parent / "archive"), str(archive)))
    gone, changed = data["key"].iloc[0], data["key"].iloc[1]
    (archive / "Actor_01" / f"{gone}.wav").unlink()
    changed_path = archive / "Actor_01" / f"{changed}.wav"
    write_sine(changed_path, 300)
    data.loc[data["key"] == changed, "sha256"] = hashlib.sha256(changed_path.read_bytes()).hexdigest()
    write_analysis(data, out, jobs=2)
    second = pd.read_csv(out / "clip_stats.csv").set_index("key")
    assert second.loc[gone, "rms_dbfs"] == first.loc[gone, "rms_dbfs"] and not np.isnan(second.loc[gone, "rms_dbfs"])
    assert second.loc[changed, "f0_median_hz"] == pytest.approx(300, rel=0.05)
    assert first.loc[changed, "f0_median_hz"] != pytest.approx(300, rel=0.05)
    assert second.loc[changed, "sha256"] != first.loc[changed, "sha256"]


def test_corrupt_file_gives_empty_stats_and_a_warning(tmp_path, caplog):
    """A clip that no longer decodes gets NaN statistics and a warning naming it; the report is still written."""
    make_corpus(tmp_path / "archive", actors=(3,), emotions=(1, 4))
    data = scan_archive(tmp_path / "archive", jobs=1).data
    broken = data["path"].iloc[0]
    with open(broken, "wb") as f:
        f.write(b"RIFF\x00\x00garbage, not audio")
    with caplog.at_level(logging.WARNING):
        report = write_analysis(data, tmp_path / "analysis", jobs=1)
    stats = pd.read_csv(tmp_path / "analysis/clip_stats.csv").set_index("key")
    assert stats.loc[data["key"].iloc[0], ["rms_dbfs", "peak_dbfs", "f0_median_hz", "voiced_fraction"]].isna().all()
    assert stats.drop(data["key"].iloc[0])["rms_dbfs"].notna().all()
    assert broken in caplog.text
    assert f"could not be decoded (left out): `{data['key'].iloc[0]}`." in report.read_text()
