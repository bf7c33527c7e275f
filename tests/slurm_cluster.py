"""Pytest fixtures for a real SLURM cluster on this machine (launch/local_slurm.sh), and helpers to run jobs on it.

`slurm_cluster` starts a 2-node cluster once per session, each node with 2 fake GPUs (GRES backed by placeholder
device files: SLURM schedules them and, as root, sets CUDA_VISIBLE_DEVICES; nothing can compute on them), in its
own state directory and on free ports, so a cluster you run yourself is left alone; it points SLURM_CONF (and
LOCAL_SLURM_*) at it for the session, so `sbatch`, `squeue` and `launch/local_slurm.sh status` in tests reach it,
and stops it at the end.
It needs root (to install the packages) or the packages already installed; otherwise its tests are skipped.
There is no slurmdbd, hence no `sacct`: job states come from `scontrol show job`, which keeps finished jobs an hour.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "launch" / "local_slurm.sh"
NODES = 2
FAKE_GPUS = 2  # per node, in the session's cluster
PACKAGES = "slurmctld slurmd slurm-client munge"
TERMINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"}
)
PROCESS_NAMES = ("munged", "slurmctld", "slurmscriptd", "slurmd", "slurmstepd")


def _port_is_free(port: int) -> bool:
    """True if nothing listens on PORT now (a daemon of the cluster binds it moments later)."""
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def free_port_base(count: int) -> int:
    """Returns a port P with P..P+count-1 all free, outside the ephemeral range, so parallel sessions do not clash."""
    for _ in range(100):
        base = random.randrange(20000, 30000)
        if all(_port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found in 20000-30000")


@dataclass(frozen=True)
class LocalSlurm:
    """A cluster of launch/local_slurm.sh: its state directory and the environment variables that select it."""

    state_dir: Path
    env: dict[str, str]

    @classmethod
    def in_dir(cls, state_dir: Path, nodes: int, gpus: int = 0) -> LocalSlurm:
        """Describes (without starting) a NODES-node cluster with GPUS fake GPUs per node, kept in STATE_DIR, on free
        ports, not linked in /etc."""
        env = {
            "LOCAL_SLURM_DIR": str(state_dir),
            "LOCAL_SLURM_PORT": str(free_port_base(nodes + 1)),
            "LOCAL_SLURM_ETC_LINK": "",
            "LOCAL_SLURM_GPUS": str(gpus),
            "SLURM_CONF": str(state_dir / "slurm.conf"),
        }
        return cls(state_dir, env)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs `launch/local_slurm.sh ARGS` for this cluster, capturing its output as text."""
        return subprocess.run(
            [str(SCRIPT), *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=300
        )

    def daemon_pids(self) -> dict[str, int]:
        """Maps each pid file the script wrote (munged, slurmctld, slurmd-nodeI) to the pid in it."""
        return {path.stem: int(path.read_text()) for path in (self.state_dir / "run").glob("*.pid")}

    def processes(self) -> list[int]:
        """Pids of live munge/SLURM processes whose environment names this cluster's config: what `stop` must end."""
        marker = f"SLURM_CONF={self.env['SLURM_CONF']}".encode()
        return sorted(pid for pid, name, environ in _processes() if name in PROCESS_NAMES and marker in environ)


def _processes() -> Iterator[tuple[int, str, list[bytes]]]:
    """Yields (pid, name, environment entries) of each process in /proc, like pgrep; zombies have no environment."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            yield int(proc.name), (proc / "comm").read_text().strip(), (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue


def require_slurm() -> None:
    """Skips the calling test when the cluster cannot be started: not root and the packages are not installed."""
    installed = shutil.which("slurmctld", path=f"{os.environ.get('PATH', '')}:/usr/sbin") is not None
    if os.geteuid() != 0 and not installed:
        pytest.skip(f"needs the SLURM packages: sudo apt-get install -y --no-install-recommends {PACKAGES}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    """A running 2-node local cluster (2 fake GPUs per node) for the whole session, selected through SLURM_CONF;
    stopped at the end."""
    require_slurm()
    cluster = LocalSlurm.in_dir(tmp_path_factory.mktemp("local_slurm"), NODES, FAKE_GPUS)
    try:
        started = cluster.run("start", "--nodes", str(NODES))
        if started.returncode != 0:
            pytest.fail(f"local_slurm.sh start failed:\n{started.stdout}{started.stderr}", pytrace=False)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in cluster.env.items():
                patch.setenv(name, value)
            yield cluster
    finally:
        stopped = cluster.run("stop")
        assert stopped.returncode == 0, f"local_slurm.sh stop failed:\n{stopped.stdout}{stopped.stderr}"


def job_info(job_id: int) -> dict[str, str]:
    """The fields of `scontrol show job` for JOB_ID (JobState, ExitCode, Restarts, ...), as strings."""
    line = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", str(job_id)], capture_output=True, text=True, check=True
    ).stdout
    return dict(field.split("=", 1) for field in line.split() if "=" in field)


def submit(script_or_args: str | Sequence[str]) -> int:
    """Submits a batch job, given as script text (options in #SBATCH lines) or as sbatch arguments; returns its id."""
    if isinstance(script_or_args, str):
        command, stdin = ["sbatch", "--parsable"], script_or_args
    else:
        command, stdin = ["sbatch", "--parsable", *script_or_args], None
    done = subprocess.run(command, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sbatch failed: {done.stderr.strip()}")
    return int(done.stdout.split(";")[0])


def wait_for_job(job_id: int, timeout_s: float = 120.0) -> tuple[str, int]:
    """Polls the job until it ends; returns (final state, exit code of the batch script). Cancels it on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = job_info(job_id)
        if info["JobState"] in TERMINAL_STATES:
            return info["JobState"], int(info["ExitCode"].split(":")[0])
        if time.monotonic() > deadline:
            subprocess.run(["scancel", str(job_id)], check=False)
            raise TimeoutError(f"job {job_id} still {info['JobState']} after {timeout_s:.0f} s; cancelled")
        time.sleep(0.25)  # polling interval, not synchronisation


def submit_and_wait(script_or_args: str | Sequence[str], timeout_s: float = 120.0) -> tuple[int, str, int]:
    """Submits a batch job (see `submit`) and waits for its end: returns (job id, final state, exit code)."""
    job_id = submit(script_or_args)
    state, exit_code = wait_for_job(job_id, timeout_s)
    return job_id, state, exit_code
