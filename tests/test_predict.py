"""predict on finished runs: any audio file (resampled, downmixed), one or several checkpoints."""
import json

import pytest
import soundfile as sf

from tests.corpus import tone
from tests.trainer_fixtures import run_python


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
