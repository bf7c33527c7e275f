# lib.sh - sourced by the batch scripts in this folder: environment, per-job port and run name, preemption.
#
# Preemption: submit with `--signal=B:USR1@SECONDS --requeue` (the scripts do). SLURM sends USR1 to the batch shell
# SECONDS before the time limit; the shell passes USR1 on to every process of the job's steps (`scancel --signal`);
# the trainer saves a checkpoint at the next step and exits, while launchers (started through `ignore_usr1`) and
# data-loader workers ignore it; then requeue_if_preempted puts the job back in the queue. The requeued job has the
# same job id, hence the same run name, and `--resume auto` continues from that run's last checkpoint.
#
# Variables (all optional):
#   RAVDESS_ROOT    the repository (default: the folder sbatch was called from, SLURM_SUBMIT_DIR)
#   RAVDESS_VENV    the Python environment to activate (default: $RAVDESS_ROOT/.venv)
#   MAIN_PORT       rendezvous port of the main process (default: derived from the job id, 20000-39999)

RAVDESS_ROOT=${RAVDESS_ROOT:-${SLURM_SUBMIT_DIR:?run this under sbatch from the repository root}}
cd "$RAVDESS_ROOT"
# shellcheck disable=SC1091
source "${RAVDESS_VENV:-$RAVDESS_ROOT/.venv}/bin/activate"
export PYTHONUNBUFFERED=1
JOB_TAG=${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+-$SLURM_ARRAY_TASK_ID}
MAIN_PORT=${MAIN_PORT:-$((20000 + (SLURM_JOB_ID % 20000)))}
GPUS_PER_NODE=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
PROCS_PER_NODE=$((GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1))  # CPU-only nodes run one gloo process each
PREEMPTED=0
STEP_PID=

# Pass the preemption warning on to the training processes; the trainer saves a checkpoint and stops.
stop_step() {
  PREEMPTED=1
  echo "lib.sh: USR1 at $(date +%T): asking the trainer to checkpoint and stop"
  scancel --signal=USR1 "$SLURM_JOB_ID"  # the job's steps only, not this batch shell
}
trap stop_step USR1

# Run a command that ignores USR1 (inherited through exec), as launchers must: torchrun would die of it.
# The trainer installs its own USR1 handler, which replaces the inherited "ignore".
ignore_usr1=(bash -c 'trap "" USR1; exec "$@"' ignore_usr1)

# Run a command in the background and wait for it, also across trapped signals; returns its exit status.
run_step() {
  local rc
  "$@" &
  STEP_PID=$!
  while true; do
    wait "$STEP_PID" && rc=0 || rc=$?
    kill -0 "$STEP_PID" 2>/dev/null || break  # still running: the wait was cut short by a trapped signal
  done
  STEP_PID=
  return "$rc"
}

# After a preemption put the job back in the queue (it resumes from its checkpoint); otherwise exit with RC.
requeue_if_preempted() {
  local rc=$1
  if [ "$PREEMPTED" = 1 ]; then
    echo "lib.sh: requeueing job $SLURM_JOB_ID (restart count ${SLURM_RESTART_COUNT:-0})"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  exit "$rc"
}
