"""The local SLURM cluster (launch/local_slurm.sh) runs real jobs the way the batch scripts in launch/slurm/ need:
single and multi-node jobs, failures with their exit codes, requeues, a signal before the time limit; and its
start/status/stop commands are idempotent and leave no daemon behind."""

from pathlib import Path

from tests.slurm_cluster import LocalSlurm, job_info, require_slurm, submit_and_wait


def test_batch_job_completes_with_its_output(slurm_cluster: LocalSlurm, tmp_path: Path) -> None:
    """A one-node batch job ends COMPLETED with exit code 0, and its output file holds what it echoed."""
    out = tmp_path / "hello.out"
    job_id, state, exit_code = submit_and_wait(f"#!/bin/bash\n#SBATCH --output={out}\necho hello from $SLURM_JOB_ID\n")
    assert (state, exit_code) == ("COMPLETED", 0)
    assert out.read_text() == f"hello from {job_id}\n"


def test_two_node_job_runs_one_task_on_each_node(slurm_cluster: LocalSlurm, tmp_path: Path) -> None:
    """`-N 2 --ntasks-per-node=1` gives srun tasks with SLURM_NODEID 0 and 1, and a node list of two hosts."""
    out = tmp_path / "two.out"
    script = f"""#!/bin/bash
#SBATCH -N 2 --ntasks-per-node=1 --output={out}
srun bash -c 'echo "task $SLURM_NODEID on $SLURMD_NODENAME"'
scontrol show hostnames "$SLURM_JOB_NODELIST"
"""
    _, state, exit_code = submit_and_wait(script)
    lines = out.read_text().splitlines()
    assert (state, exit_code) == ("COMPLETED", 0)
    assert sorted(line for line in lines if line.startswith("task ")) == ["task 0 on node1", "task 1 on node2"]
    assert [line for line in lines if not line.startswith("task ")] == ["node1", "node2"]


def test_failing_job_ends_failed_with_its_exit_code(slurm_cluster: LocalSlurm, tmp_path: Path) -> None:
    """A batch script that exits 3 ends FAILED with exit code 3."""
    _, state, exit_code = submit_and_wait(f"#!/bin/bash\n#SBATCH --output={tmp_path}/fail.out\nexit 3\n")
    assert (state, exit_code) == ("FAILED", 3)


def test_requeued_job_runs_again_to_completion(slurm_cluster: LocalSlurm, tmp_path: Path) -> None:
    """A --requeue job that requeues itself (scontrol requeue) runs a second time and then reports COMPLETED, 0."""
    out = tmp_path / "requeue.out"
    script = f"""#!/bin/bash
#SBATCH --requeue --open-mode=append --output={out}
echo "run ${{SLURM_RESTART_COUNT:-0}}"
if [ "${{SLURM_RESTART_COUNT:-0}}" -eq 0 ]; then scontrol requeue "$SLURM_JOB_ID"; sleep 30; fi
"""
    job_id, state, exit_code = submit_and_wait(script, timeout_s=90)
    assert (state, exit_code) == ("COMPLETED", 0)
    assert job_info(job_id)["Restarts"] == "1"
    assert [line for line in out.read_text().splitlines() if line.startswith("run ")] == ["run 0", "run 1"]


def test_batch_shell_receives_usr1_before_the_time_limit(slurm_cluster: LocalSlurm, tmp_path: Path) -> None:
    """`--signal=B:USR1@25` with `--time=1` reaches the batch shell's trap long before the 60 s limit.

    slurmctld checks time limits every 30 s and sends the signal up to 30 s early, so with 25 s asked for
    USR1 arrives 5 to 35 s after the start (measured: 16-33 s), never later than the limit.
    """
    marker = tmp_path / "usr1"
    script = f"""#!/bin/bash
#SBATCH --time=1 --signal=B:USR1@25 --output={tmp_path}/signal.out
trap 'echo got USR1 > {marker}; exit 0' USR1
sleep 120 &
wait
"""
    _, state, exit_code = submit_and_wait(script, timeout_s=100)
    assert marker.read_text() == "got USR1\n"
    assert (state, exit_code) == ("COMPLETED", 0)


def test_start_again_is_a_no_op_and_status_reports_up(slurm_cluster: LocalSlurm) -> None:
    """`start` on a running cluster of the same size keeps its daemons; `status` exits 0 and lists both nodes."""
    pids = slurm_cluster.daemon_pids()
    again = slurm_cluster.run("start", "--nodes", "2")
    status = slurm_cluster.run("status")
    assert again.returncode == 0 and "already running" in again.stdout
    assert slurm_cluster.daemon_pids() == pids
    assert status.returncode == 0 and "node[1-2]" in status.stdout


def test_stop_ends_every_daemon_it_started(tmp_path: Path) -> None:
    """A second, one-node cluster starts beside the session's, and `stop` leaves none of its processes alive."""
    require_slurm()
    cluster = LocalSlurm.in_dir(tmp_path / "cluster", nodes=1)
    try:
        started = cluster.run("start")
        pids = cluster.daemon_pids()
        running = cluster.processes()
    finally:
        stopped = cluster.run("stop")
    assert started.returncode == 0, started.stderr
    assert sorted(pids) == ["munged", "slurmctld", "slurmd-node1"]
    assert set(pids.values()) <= set(running)
    assert stopped.returncode == 0, stopped.stderr
    assert cluster.processes() == []
    assert cluster.run("status").returncode != 0
    assert cluster.run("stop").returncode == 0
