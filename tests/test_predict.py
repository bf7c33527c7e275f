"""predict on finished runs: any audio file (resampled, downmixed), one or several checkpoints."""
import json

import pytest
import soundfile as sf
import torch

from ravdess_dist.features import FeatureConfig
from ravdess_dist.predict import speaker_statistics
from tests.corpus import SAMPLE, tone
from tests.test_loaders import loader, shards  # noqa: F401  (shards is a fixture)
from tests.trainer_fixtures import run_python, run_train


def test_predict_stereo_48k_file(two_seeds, tmp_path):
    """predict resamples and downmixes any file, and prints class probabilities that sum to 1."""
    wav = tmp_path / "stereo.wav"
    sf.write(wav, tone(2.2, 48000, 330, channels=2), 48000)
    proc = run_python(["-m", "ravdess_dist.predict", str(two_seeds[0]), str(wav), "--json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["file"] == str(wav) and len(out["probabilities"]) == 8
    assert sum(out["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert out["emotion"] == max(out["probabilities"], key=out["probabilities"].get)
    proc = run_python(["-m", "ravdess_dist.predict", str(two_seeds[0]), str(tmp_path / "missing.wav")])
    assert proc.returncode == 1 and "missing.wav" in proc.stderr


def test_predict_with_two_checkpoints_averages_their_probabilities(two_seeds, tmp_path):
    """predict RUN RUN FILE: the mean of each run's class probabilities."""
    wav = tmp_path / "clip.wav"
    sf.write(wav, tone(0.7, 16000, 330), 16000)
    single = [json.loads(run_python(["-m", "ravdess_dist.predict", str(r), str(wav), "--json"]).stdout) for r in two_seeds]
    both = json.loads(run_python(["-m", "ravdess_dist.predict", *map(str, two_seeds), str(wav), "--json"]).stdout)
    assert single[0]["probabilities"] != single[1]["probabilities"]  # two different models, else the mean proves nothing
    for c, p in both["probabilities"].items():
        assert p == pytest.approx((single[0]["probabilities"][c] + single[1]["probabilities"][c]) / 2, abs=2e-4)


def test_speaker_statistics_equal_the_device_paths(shards):  # noqa: F811
    """predict's statistics of a speaker's files are the device path's speaker_norm statistics of that actor (the same
    centre windows over the speech, the same features), so a speaker_norm model sees at prediction what it trained on."""
    feats = FeatureConfig(speech_top_db=40.0)
    ldr = loader("device", shards, "normal", 32, speaker_norm=True, features=feats)
    files = sorted(p for p in (SAMPLE / "Actor_03").glob("*.flac") if p.name.split("-")[3] == "01")  # normal ones
    assert len(files) == 32
    mean, std = speaker_statistics(files, feats)
    torch.testing.assert_close(mean, ldr.speaker_stats[0][3], atol=1e-4, rtol=0)
    torch.testing.assert_close(std, ldr.speaker_stats[1][3], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="nowhere.wav: cannot read the speaker's audio"):
        speaker_statistics([files[0], SAMPLE / "nowhere.wav"], feats)


def test_speaker_norm_model_needs_and_uses_the_speakers_audio(setup, two_seeds, tmp_path):
    """A speaker_norm run predicts only with --speaker-audio (refused without it, naming the option); the option is
    refused where no model uses it."""
    tmp = setup[0]
    proc = run_train(setup, "spk-predict", "--epochs", "1", "--backend", "device", "--speaker-norm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run, clips = tmp / "models/spk-predict", sorted((tmp / "data/archive/Actor_05").glob("*.wav"))[:6]
    refused = run_python(["-m", "ravdess_dist.predict", str(run), str(clips[0])])
    assert refused.returncode == 2 and "--speaker-audio" in refused.stderr and "spk-predict" in refused.stderr
    out = run_python(["-m", "ravdess_dist.predict", str(run), str(clips[0]), "--json", "--speaker-audio",
                      *map(str, clips)])
    assert out.returncode == 0, out.stderr[-2000:]
    assert sum(json.loads(out.stdout)["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    unused = run_python(["-m", "ravdess_dist.predict", str(two_seeds[0]), str(clips[0]), "--speaker-audio", str(clips[1])])
    assert unused.returncode == 2 and "only used by models trained with speaker_norm" in unused.stderr


def test_pitch_rows_train_and_predict(setup, tmp_path):
    """features.pitch_bins end to end: a device-backend run sizes its model for the extra rows, and predict rebuilds
    the same front end from the checkpoint's config (a mismatch would fail to load or to run the model)."""
    proc = run_train(setup, "pitch-predict", "--epochs", "1", "--backend", "device", "features.pitch_bins=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = setup[0] / "models/pitch-predict"
    wav = tmp_path / "clip.wav"
    sf.write(wav, tone(0.7, 16000, 200), 16000)
    proc = run_python(["-m", "ravdess_dist.predict", str(run), str(wav), "--json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sum(json.loads(proc.stdout)["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert torch.load(run / "best.pt", weights_only=False)["config"]["features"]["pitch_bins"] == 8
