"""Shared set-up for the tests that train (trainer, cv, ensemble, predict): a tiny generated corpus packed into
shards, a small, fast config, helpers that run train.py / accelerate launch, and finished runs to inspect.
Registered as a pytest plugin in conftest.py, so its fixtures are everyone's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def run_train(setup, run: str, *extra) -> subprocess.CompletedProcess:
    """train.py on SETUP's shards and config as run RUN; the finished process."""
    tmp, shards, config = setup
    return run_python(["train.py", *train_args(tmp, shards, config, run, *extra)])


def launch_two(setup, run, *extra, port: int, script: str = "train.py"):
    """`accelerate launch --multi_gpu --num_processes 2` of SCRIPT (or `-m MODULE`) on CPU; the finished process."""
    tmp, shards, config = setup
    return run_python(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                       "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *script.split(),
                       *train_args(tmp, shards, config, run, *extra)])


def metrics(setup, run) -> dict:
    """metrics.json of a finished run."""
    return json.loads((setup[0] / "models" / run / "metrics.json").read_text())


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """Shards of six generated actors and the tiny config: (folder, shards, config), one per session (and xdist worker).
    Every test that trains names its runs uniquely under folder/models."""
    tmp = tmp_path_factory.mktemp("trainer")
    return tmp, tiny_shards(tmp / "data"), tiny_config(tmp / "tiny.yaml")


@pytest.fixture(scope="session")
def two_seeds(setup) -> list[Path]:
    """Two finished 2-epoch runs of the same split with seeds 0 and 1 (the members of an ensemble)."""
    runs = []
    for seed in (0, 1):
        proc = run_train(setup, f"seed{seed}", "--epochs", "2", "--seed", str(seed))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(setup[0] / "models" / f"seed{seed}")
    return runs
