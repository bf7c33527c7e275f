"""Shared set-up for trainer tests: a tiny generated corpus packed into shards, and a small, fast config."""
import os
import subprocess
import sys
from pathlib import Path

import yaml

from preprocess.__main__ import main as preprocess_main
from tests.corpus import make_corpus

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "model": "hybrid", "epochs": 2, "batch_size": 16, "lr": 0.003, "warmup_epochs": 0, "num_workers": 1, "patience": 5,
    # no per-utterance normalisation: it would erase the steady tones that encode the emotion in the test corpus
    "features": {"kind": "logmel", "n_mels": 32, "clip_seconds": 0.5, "normalize": False},
    "augment": {"noise_snr_db": [20.0, 30.0], "freq_masks": 1, "freq_mask_width": 4, "time_masks": 1, "time_mask_width": 5},
}


def tiny_shards(root: Path, actors=range(1, 7)) -> Path:
    """Shards of a generated corpus (tones whose pitch encodes the emotion, so a model can learn it)."""
    make_corpus(root / "archive", actors=tuple(actors), seconds=0.6)
    assert preprocess_main(["--archive", str(root / "archive"), "--out", str(root), "--no-analysis", "--jobs", "2"]) == 0
    return root / "shards"


def tiny_config(path: Path, **overrides) -> Path:
    """Write the tiny config (with overrides) as YAML and return its path."""
    path.write_text(yaml.safe_dump({**TINY, **overrides}))
    return path


def train_args(tmp: Path, shards: Path, config: Path, run: str, *extra) -> list[str]:
    """train.py flags that keep every output inside TMP."""
    return ["--config", str(config), "--shards", str(shards), "--output-dir", str(tmp / "models"),
            "--logging-dir", str(tmp / "runs"), "--run-name", run, *map(str, extra)]


def run_python(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """A Python subprocess from the repository root, unbuffered, output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, **kwargs)
