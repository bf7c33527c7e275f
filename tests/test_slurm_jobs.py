"""The batch scripts of launch/slurm/ on a real local SLURM cluster: multi-node DDP, a CV array, preemption, failure."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ravdess_dist.checkpoint import load_checkpoint
from tests.slurm_cluster import job_info, submit, wait_for_job
from tests.trainer_fixtures import ROOT, tiny_config, tiny_shards, train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny shards and config, and the environment the batch scripts need (repository, Python environment)."""
    tmp = tmp_path_factory.mktemp("slurm_jobs")
    env = f"ALL,RAVDESS_ROOT={ROOT},RAVDESS_VENV={sys.prefix}"
    return tmp, tiny_shards(tmp / "data", actors=range(1, 5)), tiny_config(tmp / "tiny.yaml"), env


def sbatch(data, script: str, *args, extra=(), env_extra="") -> int:
    """Submit one of the repository's batch scripts with its log in the test folder; returns the job id."""
    tmp, _, _, env = data
    return submit(["--chdir", str(ROOT), f"--export={env}{env_extra}", f"--output={tmp}/%x-%j.out", *extra,
                   str(ROOT / "launch/slurm" / script), *map(str, args)])


def log_of(data, job_id: int) -> str:
    """The job's output file (all attempts: the scripts append)."""
    return next(data[0].glob(f"*-{job_id}.out")).read_text(errors="replace")


def test_multinode_job_runs_two_rank_ddp_on_two_nodes(slurm_cluster, data):
    """multinode.sbatch on 2 nodes: COMPLETED, world size 2 with node ranks 0 and 1, checkpoint and TensorBoard files."""
    tmp, shards, config, _ = data
    job = sbatch(data, "multinode.sbatch", *train_args(tmp, shards, config, "multinode", "--epochs", "1"),
                 extra=["--nodes", "2"])
    state, code = wait_for_job(job, timeout_s=240)
    assert (state, code) == ("COMPLETED", 0), log_of(data, job)
    metrics = json.loads((tmp / "models/multinode/metrics.json").read_text())
    ranks = json.loads((tmp / "models/multinode/ranks.json").read_text())
    assert metrics["world_size"] == 2 and len(set(metrics["weight_checksums"])) == 1
    assert sorted((r["node_rank"], r["slurm_node"]) for r in ranks) == [(0, "node1"), (1, "node2")]
    assert (tmp / "models/multinode/best.pt").is_file()
    assert list((tmp / "runs/multinode").rglob("events.out.tfevents.*"))


def test_cv_array_trains_two_folds_and_aggregates_them(slurm_cluster, data):
    """submit_cv.sh with a 2-task array: two trainings, then one summary listing both."""
    tmp, shards, config, _ = data
    env = {**os.environ, "MODELS": "hybrid", "INTENSITIES": "normal", "FOLDS": "4", "ARRAY": "0-1",
           "OUTPUT_DIR": str(tmp / "cv"), "LOGGING_DIR": str(tmp / "cv-runs"), "RAVDESS_VENV": sys.prefix,
           "SBATCH_ARGS": f"--output={tmp}/cv-%A_%a.out", "SUMMARY_LOG": f"{tmp}/summary-%j.out"}
    done = subprocess.run(["launch/slurm/submit_cv.sh", "--config", str(config), "--shards", str(shards), "--epochs", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    array, summary = map(int, re.search(r"array job (\d+) .*summary job (\d+)", done.stdout).groups())
    assert wait_for_job(summary, timeout_s=300) == ("COMPLETED", 0), (tmp / f"summary-{summary}.out").read_text()
    result = json.loads((tmp / f"cv/cv-{array}/summary.json").read_text())
    assert sorted(r["run"] for r in result["runs"]) == ["hybrid-normal-fold0", "hybrid-normal-fold1"]
    assert result["summary"][0]["folds"] == 2


def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(slurm_cluster, data):
    """USR1 to the batch shell (SLURM's time-limit warning) mid-training: checkpoint, requeue, resume, COMPLETED."""
    tmp, shards, config, _ = data
    job = sbatch(data, "train.sbatch", *train_args(tmp, shards, config, "preempt", "--epochs", "12", "--patience", "50"))
    deadline = time.monotonic() + 120
    while not re.search(r"epoch 2: loss", log_of_or_empty(data, job)):  # poll until training is under way
        assert time.monotonic() < deadline, log_of_or_empty(data, job)
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job)], check=True)
    state, code = wait_for_job(job, timeout_s=300)
    log = log_of(data, job)
    assert (state, code) == ("COMPLETED", 0), log
    assert int(job_info(job)["Restarts"]) == 1
    saved = re.search(r"checkpoint saved at epoch (\d+) step (\d+)", log).groups()
    assert re.search(rf"resumed from epoch {saved[0]} step {saved[1]}", log), log
    assert int(saved[0]) >= 2
    history = json.loads((tmp / "models/preempt/metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(12))
    assert load_checkpoint(tmp / "models/preempt/last.pt")["epoch"] == 12


def log_of_or_empty(data, job_id: int) -> str:
    """The job's output so far, or '' before the job has started."""
    found = list(data[0].glob(f"*-{job_id}.out"))
    return found[0].read_text(errors="replace") if found else ""  # may end inside a character


def test_failing_training_ends_failed(slurm_cluster, data):
    """A training that fails (here: no shards there) exits non-zero and SLURM records FAILED."""
    tmp, _, config, _ = data
    job = sbatch(data, "train.sbatch", *train_args(tmp, Path(tmp / "nowhere"), config, "fails"))
    state, code = wait_for_job(job, timeout_s=120)
    assert state == "FAILED" and code != 0
    assert "no shard manifest" in log_of(data, job)
