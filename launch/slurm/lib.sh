# lib.sh - sourced by the batch scripts in this folder: environment, per-job port and run name, preemption.
#
# Preemption: submit with `--signal=B:USR1@SECONDS --requeue` (the scripts do). SLURM sends USR1 to the batch shell
# SECONDS before the time limit; run_step forwards SIGTERM to the training step (srun passes it to every process
# of the step), the trainer saves a checkpoint at the next step and exits, and requeue_if_preempted puts the job
# back in the queue. The requeued job has the same job id, hence the same run name, and `--resume auto` continues
# from that run's last checkpoint.
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

# Pass a signal on to the training step as SIGTERM: the trainer saves a checkpoint and stops.
stop_step() {
  echo "lib.sh: signal at $(date +%T): asking the trainer to checkpoint and stop"
  if [ -n "$STEP_PID" ]; then kill -TERM "$STEP_PID" 2>/dev/null; fi
}
trap 'PREEMPTED=1; stop_step' USR1  # the time-limit warning (--signal=B:USR1@...): checkpoint, then requeue
trap stop_step TERM                 # scancel: checkpoint, then end

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
