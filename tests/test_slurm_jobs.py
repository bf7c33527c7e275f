"""The batch scripts of launch/slurm/ on a real local SLURM cluster: multi-node DDP, a CV array, preemption, failure;
processes per node from the GPUs SLURM allocates (fake GRES on the local cluster, and lib.sh's helper on its own)."""
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ravdess_dist.checkpoint import load_checkpoint
from tests.slurm_cluster import FAKE_GPUS, job_info, submit, wait_for_job
from tests.trainer_fixtures import ROOT, tiny_config, tiny_shards, train_args

# What the CPU-only tests ask for, overriding the scripts' GPU defaults the way a CPU partition's users would.
CPU_JOB = ("--gpus-per-node=0", "--cpus-per-task=1", "--mem=1G")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny shards and config, and the environment the batch scripts need (repository, Python environment)."""
    tmp = tmp_path_factory.mktemp("slurm_jobs")
    env = f"ALL,RAVDESS_ROOT={ROOT},RAVDESS_VENV={sys.prefix}"
    return tmp, tiny_shards(tmp / "data", actors=range(1, 5)), tiny_config(tmp / "tiny.yaml"), env


def sbatch(data, script: str, *args, extra=(), env_extra="", resources=CPU_JOB) -> int:
    """Submit one of the repository's batch scripts with its log in the test folder; returns the job id."""
    tmp, _, _, env = data
    return submit(["--chdir", str(ROOT), f"--export={env}{env_extra}", f"--output={tmp}/%x-%j.out", *resources,
                   *extra, str(ROOT / "launch/slurm" / script), *map(str, args)])


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
           "SBATCH_ARGS": f"--output={tmp}/cv-%A_%a.out {' '.join(CPU_JOB)}", "SUMMARY_LOG": f"{tmp}/summary-%j.out"}
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


# ---- processes per node from the allocation ----------------------------------------------------------------------

def dry_runs(log: str) -> list[dict]:
    """The lines launch/slurm/dry_run.sh printed: the step's environment fields and its command as a list."""
    runs = []
    for line in log.splitlines():
        if line.startswith("dry run: "):
            fields, command = line[len("dry run: "):].split(" command: ", 1)
            runs.append({**dict(f.split("=", 1) for f in fields.split()), "command": shlex.split(command)})
    return runs


def option(command: list[str], name: str) -> str:
    """The value following NAME in COMMAND."""
    return command[command.index(name) + 1]


@pytest.mark.parametrize("script, gpus", [("train.sbatch", 0), ("train.sbatch", 1), ("train.sbatch", 2),
                                          ("cv_array.sbatch", 2)])
def test_single_node_job_runs_one_process_per_allocated_gpu(slurm_cluster, data, script, gpus):
    """--gpus-per-node=G on nodes with 2 fake GPUs: the step sees G of them, and the launcher starts max(G, 1)
    processes (G >= 2: accelerate --multi_gpu; else plain python), each with CPUs / processes OMP threads."""
    tmp = data[0]
    job = sbatch(data, script, "--epochs", "1", env_extra=",RAVDESS_DRY_RUN=1",
                 resources=(f"--gpus-per-node={gpus}", "--cpus-per-task=2", "--mem=1G"),
                 extra=["--array=0"] if script == "cv_array.sbatch" else [])
    state, code = wait_for_job(job, timeout_s=60)
    log = next(tmp.glob(f"*-{job}*.out")).read_text()
    assert (state, code) == ("COMPLETED", 0), log
    assert re.search(rf"lib.sh: node\d: {gpus} GPU\(s\) allocated", log), log
    [run] = dry_runs(log)
    if os.geteuid() == 0:  # as root the fake GPUs are device files, and SLURM sets CUDA_VISIBLE_DEVICES
        assert run["CUDA_VISIBLE_DEVICES"] == (",".join(map(str, range(gpus))) if gpus else "unset")
    assert run["SLURM_CPUS_PER_TASK"] == "2" and run["OMP_NUM_THREADS"] == str(2 // max(gpus, 1))
    command = run["command"]
    if gpus >= 2:
        assert command[:3] == ["accelerate", "launch", "--multi_gpu"]
        assert option(command, "--num_processes") == str(gpus) and option(command, "--num_machines") == "1"
        assert option(command, "--num_cpu_threads_per_process") == run["OMP_NUM_THREADS"]
    else:
        assert command[0] == "python"
    assert "train.py" in command and command[-2:] == ["--epochs", "1"]
    assert option(command, "--resume") == "auto"


def test_multinode_job_with_gpus_runs_gpus_times_nodes_processes(slurm_cluster, data):
    """2 nodes x --gpus-per-node=2: each node's accelerate launch gets 4 processes in all, its own machine rank,
    and the first node's address and the job's port as the main process."""
    tmp = data[0]
    job = sbatch(data, "multinode.sbatch", "--epochs", "1", env_extra=",RAVDESS_DRY_RUN=1",
                 resources=("--nodes=2", "--gpus-per-node=2", "--cpus-per-task=2", "--mem=1G"))
    state, code = wait_for_job(job, timeout_s=60)
    log = log_of(data, job)
    assert (state, code) == ("COMPLETED", 0), log
    runs = sorted(dry_runs(log), key=lambda run: run["node_rank"])
    assert [(r["node"], r["node_rank"]) for r in runs] == [("node1", "0"), ("node2", "1")], log
    for run in runs:
        command = run["command"]
        assert command[:3] == ["accelerate", "launch", "--multi_gpu"]
        assert option(command, "--num_machines") == "2" and option(command, "--num_processes") == "4"
        assert option(command, "--machine_rank") == run["node_rank"]
        assert option(command, "--main_process_ip") == "127.0.0.1"  # node1's NodeAddr
        assert option(command, "--main_process_port") == str(20000 + job % 20000)
        assert run["OMP_NUM_THREADS"] == "1"
        if os.geteuid() == 0:
            assert run["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_asking_for_more_gpus_than_a_node_has_is_refused(slurm_cluster, data):
    """The fake GRES is a real limit: --gpus-per-node above the nodes' count is refused at submission."""
    with pytest.raises(RuntimeError, match="Requested node configuration is not available"):
        sbatch(data, "train.sbatch", resources=(f"--gpus-per-node={FAKE_GPUS + 1}", "--cpus-per-task=1", "--mem=1G"))


def lib_sh(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Sources launch/slurm/lib.sh outside SLURM with ENV (and no inherited SLURM or CUDA variables), a fake
    nvidia-smi listing 8 GPUs first on PATH; returns what it computed."""
    fake = tmp_path / "bin/nvidia-smi"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\nfor i in 0 1 2 3 4 5 6 7; do echo \"GPU $i: NVIDIA H100 (UUID: GPU-$i)\"; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "SRUN_", "CUDA_VISIBLE", "OMP_", "THREADS_PER"))}
    full = {**clean, "PATH": f"{fake.parent}:{os.environ['PATH']}", "RAVDESS_ROOT": str(ROOT),
            "RAVDESS_VENV": sys.prefix, "SLURM_JOB_ID": "4242", **env}
    script = ('source launch/slurm/lib.sh >/dev/null; echo "$GPUS_PER_NODE $PROCS_PER_NODE $OMP_NUM_THREADS '
              '${SRUN_CPUS_PER_TASK-unset} $(gpus_on_node) ${node_launcher[*]}"')
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=full, capture_output=True, text=True, check=True)
    gpus, procs, threads, srun_cpus, again, *launcher = done.stdout.split()
    assert gpus == again
    return {"gpus": int(gpus), "procs": int(procs), "threads": int(threads), "srun_cpus": srun_cpus,
            "launcher": " ".join(launcher)}


@pytest.mark.parametrize("env, gpus", [
    ({}, 0),  # no allocation: the 8 GPUs nvidia-smi lists are not ours
    ({"SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 2),
    ({"SLURM_GPUS_ON_NODE": "0", "CUDA_VISIBLE_DEVICES": "0"}, 0),  # the allocation wins over an inherited variable
    ({"SLURM_GPUS_PER_NODE": "4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "gpu:a100:3"}, 3),
    ({"SLURM_GPUS_PER_NODE": "a100:2(S:0-1),v100:1"}, 3),
    ({"SLURM_GPUS_PER_NODE": "0", "CUDA_VISIBLE_DEVICES": "0,1"}, 0),
    ({"SLURM_JOB_GPUS": "1,3,5"}, 3),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, 2),
    ({"CUDA_VISIBLE_DEVICES": "GPU-aaaa,GPU-bbbb,GPU-cccc"}, 3),
    ({"CUDA_VISIBLE_DEVICES": ""}, 0),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, 0),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, 0),
])
def test_lib_sh_counts_allocated_gpus_not_the_machines(tmp_path, env, gpus):
    """gpus_on_node: SLURM_GPUS_ON_NODE, else SLURM_GPUS_PER_NODE, else SLURM_JOB_GPUS, else CUDA_VISIBLE_DEVICES,
    else 0 (never nvidia-smi); at least one process."""
    got = lib_sh(env, tmp_path)
    assert (got["gpus"], got["procs"]) == (gpus, max(gpus, 1))
    expected = f"accelerate launch --multi_gpu --num_machines 1 --num_processes {gpus}" if gpus > 1 else "python"
    assert got["launcher"].startswith(expected)


def test_lib_sh_threads_and_srun_cpus(tmp_path):
    """OMP_NUM_THREADS = CPUs per task / processes (at least 1), THREADS_PER_PROCESS overrides it;
    SRUN_CPUS_PER_TASK is the job's --cpus-per-task, so srun steps get those CPUs (SLURM >= 22.05)."""
    got = lib_sh({"SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "32"}, tmp_path)
    assert (got["threads"], got["srun_cpus"]) == (8, "32")
    assert "--num_cpu_threads_per_process 8" in got["launcher"]
    assert lib_sh({"SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "2"}, tmp_path)["threads"] == 1
    assert lib_sh({"SLURM_CPUS_ON_NODE": "6"}, tmp_path)["threads"] == 6
    assert lib_sh({"SLURM_CPUS_PER_TASK": "8", "THREADS_PER_PROCESS": "3"}, tmp_path)["threads"] == 3
    outside = lib_sh({}, tmp_path)
    assert (outside["threads"], outside["srun_cpus"]) == (len(os.sched_getaffinity(0)), "unset")


def test_multi_node_accelerate_config_leaves_the_main_process_to_the_launcher():
    """multi_node.yaml loads as an accelerate config and names no main process address (the batch script passes
    --main_process_ip per job); no accelerate config hard-codes a loopback address."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "launch/accelerate/multi_node.yaml"))
    assert config.main_process_ip is None and config.num_machines > 1
    for path in (ROOT / "launch/accelerate").glob("*.yaml"):
        assert "main_process_ip" not in yaml.safe_load(path.read_text()), path
