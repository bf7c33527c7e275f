"""`python -m preprocess` end to end on generated corpora: tables, rejections, resampling, re-runs, killed runs."""
import io
import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr
import webdataset as wds

from preprocess.__main__ import main
from shards.audio import read_mono
from shards.manifest import Manifest
from tests.corpus import clip_name, make_corpus, tone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def preprocess(*args, check=True) -> subprocess.CompletedProcess:
    """Run the command line's main() in this process (imports are paid once), capturing what it prints."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    proc = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"preprocess failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_command_line_runs_as_a_module(corpus):
    """`python -m preprocess` works as a real process, and `verify` after it."""
    for args in (["--archive", corpus / "archive", "--out", corpus / "out", "--no-analysis"], ["verify", "--shards", corpus / "out/shards"]):
        proc = subprocess.run([sys.executable, "-m", "preprocess", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert "120 samples: OK" in proc.stdout


@pytest.fixture
def corpus(tmp_path):
    """Two actors (one male, one female), all 60 valid clips each."""
    make_corpus(tmp_path / "archive", actors=(1, 2))
    return tmp_path


def test_tables_counts_and_columns(corpus):
    """data.csv has every clip with its labels; the intensity subsets have 8 and 7 emotions."""
    preprocess("--archive", corpus / "archive", "--out", corpus / "out", "--no-analysis")
    data = pd.read_csv(corpus / "out/data.csv")
    assert list(data.columns) == ["path", "key", "actor", "gender", "emotion", "emotion_code", "intensity", "statement",
                                  "repetition", "sample_rate", "channels", "frames", "duration", "sha256"]
    assert len(data) == 120 and data["key"].is_unique
    normal, strong = pd.read_csv(corpus / "out/data_normal.csv"), pd.read_csv(corpus / "out/data_strong.csv")
    assert (len(normal), normal["emotion"].nunique()) == (64, 8)
    assert (len(strong), strong["emotion"].nunique()) == (56, 7) and "neutral" not in set(strong["emotion"])
    row = data.set_index("key").loc[clip_name(6, 2, 1, 2, 2)]
    assert (row.actor, row.gender, row.emotion, row.intensity, row.statement, row.repetition) == (2, "female", "fearful", "strong", 1, 2)
    assert (row.sample_rate, row.channels, row.frames) == (16000, 1, 9600) and row.duration == pytest.approx(0.6)
    assert len(pd.read_csv(corpus / "out/rejected.csv")) == 0


def write_bad_files(archive):
    """One file of each kind of problem; returns {file name: expected reason}."""
    good = archive / "Actor_01" / (clip_name(3, 1, 1, 1, 1) + ".wav")
    raw = good.read_bytes()
    bad = {
        "Actor_01/" + clip_name(3, 2, 1, 1, 1) + ".wav": (raw[: len(raw) // 2], "truncated"),
        "Actor_01/" + clip_name(4, 2, 1, 1, 1) + ".wav": (b"", "empty file"),
        "Actor_01/hello.wav": (raw, "invalid name"),
        "Actor_01/" + clip_name(5, 2, 1, 1, 1) + ".wav": (b"this is not audio\n" * 20, "not readable audio"),
        "Actor_01/" + clip_name(1, 2, 1, 1, 1) + ".wav": (raw, "neutral (emotion 01) has no strong intensity"),
        "Actor_02/" + clip_name(2, 1, 1, 1, 7) + ".wav": (raw, "actor 07 in the name but the folder is Actor_02"),
    }
    for rel, (content, _) in bad.items():
        (archive / rel).unlink(missing_ok=True)
        (archive / rel).write_bytes(content)
    return {rel.split("/")[1]: reason for rel, (_, reason) in bad.items()}


def test_bad_files_rejected_with_reasons_rest_packed(corpus):
    """Each kind of bad file lands in rejected.csv with its reason; every valid clip is still packed."""
    archive = corpus / "archive"
    expected = write_bad_files(archive)
    proc = preprocess("--archive", archive, "--out", corpus / "out", "--no-analysis")
    assert f"{len(expected)} rejected" in proc.stdout
    rejected = pd.read_csv(corpus / "out/rejected.csv")
    reasons = {os.path.basename(p): r for p, r in zip(rejected["path"], rejected["reason"])}
    assert set(reasons) == set(expected)
    for name, reason in expected.items():
        assert reason in reasons[name], (name, reasons[name])
    data = pd.read_csv(corpus / "out/data.csv")
    assert len(data) == 120 - 3  # three good clips were overwritten with bad content
    manifest = Manifest.load(corpus / "out/shards")
    assert sum(s.samples for s in manifest.shards) == len(data)


def test_missing_or_empty_archive_fails_cleanly(tmp_path):
    """No archive, or one without a valid clip: a clear error, a non-zero exit, nothing written."""
    proc = preprocess("--archive", tmp_path / "nope", "--out", tmp_path / "out", check=False)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    (tmp_path / "empty/Actor_01").mkdir(parents=True)
    proc = preprocess("--archive", tmp_path / "empty", "--out", tmp_path / "out", check=False)
    assert proc.returncode != 0 and "no valid RAVDESS clip" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_stereo_48k_flac_is_downmixed_and_resampled(tmp_path):
    """A stereo 48 kHz source ends up in its shard as mono 16 kHz PCM16 with the same content."""
    folder = tmp_path / "archive/Actor_05"
    folder.mkdir(parents=True)
    stereo = tone(1.0, 48000, 330, channels=2)
    stereo[:, 1] *= 0.5  # distinct channels, so a downmix is visible
    key = clip_name(5, 2, 2, 1, 5)
    sf.write(folder / f"{key}.flac", stereo, 48000)
    preprocess("--archive", tmp_path / "archive", "--out", tmp_path / "out", "--no-analysis")
    row = pd.read_csv(tmp_path / "out/data.csv").iloc[0]
    assert (row.channels, row.sample_rate) == (2, 48000)
    [sample] = list(wds.WebDataset(str(tmp_path / "out/shards/strong/actor_05-000000.tar"), shardshuffle=False))
    audio, sr = read_mono(sample["wav"])
    expected = soxr.resample(stereo.mean(axis=1), 48000, 16000, quality="HQ")
    assert sr == 16000 and sf.info(io.BytesIO(sample["wav"])).channels == 1
    assert len(audio) == 16000 and np.abs(audio - expected).max() < 2e-4  # PCM16 quantisation
    assert json.loads(sample["json"])["source_sha256"] == row.sha256


def test_native_rate_keeps_source_rate(corpus):
    """--sample-rate native packs at the sources' own rate."""
    preprocess("--archive", corpus / "archive", "--out", corpus / "out", "--no-analysis", "--sample-rate", "native")
    assert Manifest.load(corpus / "out/shards").sample_rate == 16000


def test_rerun_skips_unchanged_and_repacks_changed(corpus):
    """A second run packs nothing; changing one clip re-packs only its shard."""
    args = ("--archive", corpus / "archive", "--out", corpus / "out", "--no-analysis")
    preprocess(*args)
    assert "(0 packed, 4 unchanged)" in preprocess(*args).stdout
    changed = corpus / "archive/Actor_02" / (clip_name(7, 2, 1, 1, 2) + ".wav")
    sf.write(changed, tone(0.7, 16000, 500), 16000)
    assert "(1 packed, 3 unchanged)" in preprocess(*args).stdout
    assert preprocess("verify", "--shards", corpus / "out/shards").returncode == 0


KILL_AFTER = """
import os, signal, sys
import shards.writer as writer
calls = 0
make_sample = writer.make_sample
def dying_make_sample(*args, **kwargs):
    global calls
    calls += 1
    if calls == {n}:  # in the middle of a shard: kill the whole run, workers and parent
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return make_sample(*args, **kwargs)
writer.make_sample = dying_make_sample
import preprocess.pack
preprocess.pack.make_sample = dying_make_sample
from preprocess.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def killed_run(*args, after: int) -> int:
    """Run preprocess with jobs=1 and SIGKILL its process group while it writes sample AFTER; return the exit code."""
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER.replace("{n}", str(after)), *map(str, args), "--jobs", "1"],
                          cwd=ROOT, capture_output=True, text=True, start_new_session=True)
    return proc.returncode


def assert_manifest_trustworthy(shards):
    """Every shard the manifest lists (if there is one) is complete and matches its entry."""
    if (shards / "manifest.json").exists():
        proc = preprocess("verify", "--shards", shards, check=False)
        assert proc.returncode == 0, proc.stdout


def test_killed_packing_leaves_no_incomplete_shard_and_rerun_completes(corpus):
    """SIGKILL mid-shard: the manifest lists no incomplete shard; a re-run finishes and verifies."""
    args = ("--archive", corpus / "archive", "--out", corpus / "out", "--no-analysis")
    assert killed_run(*args, after=70) == -9  # shards hold 28-32 clips: this is inside the third shard
    shards = corpus / "out/shards"
    assert any(p.name.endswith(".tmp") for p in shards.rglob("*"))  # a half-written shard was left behind...
    assert_manifest_trustworthy(shards)  # ...but the manifest does not list it
    preprocess(*args)
    assert sum(s.samples for s in Manifest.load(shards).shards) == 120
    assert not any(p.name.endswith(".tmp") for p in shards.rglob("*"))
    assert preprocess("verify", "--shards", shards).returncode == 0


def test_killed_repack_of_changed_clip_drops_its_stale_entry(corpus):
    """A killed re-pack after a source changed never leaves the manifest vouching for the rewritten shard."""
    args = ("--archive", corpus / "archive", "--out", corpus / "out", "--no-analysis")
    preprocess(*args)
    for actor in (1, 2):
        sf.write(corpus / f"archive/Actor_{actor:02d}" / (clip_name(8, 1, 1, 1, actor) + ".wav"), tone(0.5, 16000, 600), 16000)
    assert killed_run(*args, after=40) == -9  # the second changed shard is being written
    assert_manifest_trustworthy(corpus / "out/shards")
    assert len(Manifest.load(corpus / "out/shards").shards) < 4


def test_verify_names_corrupted_and_missing_shards(corpus):
    """verify exits non-zero and names the corrupted and the missing shard."""
    preprocess("--archive", corpus / "archive", "--out", corpus / "out", "--no-analysis")
    shards = corpus / "out/shards"
    corrupted = shards / "normal/actor_01-000000.tar"
    raw = bytearray(corrupted.read_bytes())
    raw[5000] ^= 0xFF
    corrupted.write_bytes(bytes(raw))
    (shards / "strong/actor_02-000000.tar").unlink()
    proc = preprocess("verify", "--shards", shards, check=False)
    assert proc.returncode == 1
    assert "normal/actor_01-000000.tar: size or sha256 differs" in proc.stdout
    assert "strong/actor_02-000000.tar: missing" in proc.stdout
    assert "2 problem(s)" in proc.stdout


def test_verify_without_manifest_is_a_clear_error(tmp_path):
    """verify on a folder without a manifest says so."""
    proc = preprocess("verify", "--shards", tmp_path, check=False)
    assert proc.returncode == 2 and "no shard manifest" in proc.stderr
