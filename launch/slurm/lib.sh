# lib.sh - sourced by the batch scripts in this folder: environment, resources, per-job port and run name, preemption.
#
# Preemption: submit with `--signal=B:USR1@SECONDS --requeue` (the scripts do). SLURM sends USR1 to the batch shell
# SECONDS before the time limit; the shell passes USR1 on to every process of the job's steps (`scancel --signal`);
# the trainer saves a checkpoint at the next step and exits, while launchers (started through `ignore_usr1`) and
# data-loader workers ignore it; then requeue_if_preempted puts the job back in the queue. The requeued job has the
# same job id, hence the same run name, and `--resume auto` continues from that run's last checkpoint.
#
# Resources: processes per node = the GPUs SLURM allocated to the job on this node (gpus_on_node below: never
# `nvidia-smi -L`, which also lists GPUs of other jobs), or one process on a node without GPUs. Each process gets
# OMP_NUM_THREADS = CPUs of the task / processes per node (at least 1). SRUN_CPUS_PER_TASK is exported so that
# steps get the job's --cpus-per-task: since SLURM 22.05 srun no longer takes it from SLURM_CPUS_PER_TASK.
#
# Variables (all optional):
#   RAVDESS_ROOT     the repository (default: the folder sbatch was called from, SLURM_SUBMIT_DIR)
#   RAVDESS_VENV     the Python environment to activate (default: $RAVDESS_ROOT/.venv)
#   MAIN_PORT        rendezvous port of the main process (default: derived from the job id, 20000-39999)
#   THREADS_PER_PROCESS  OMP_NUM_THREADS of each training process (default: CPUs per task / processes per node)
#   RAVDESS_DRY_RUN  1: each step prints its node, GPUs, threads and the exact command instead of training
#                    (launch/slurm/dry_run.sh), to check a submission's arithmetic before spending a queue slot
#
# Networking (export before sbatch; sbatch's default --export=ALL passes them to every node):
#   NCCL_SOCKET_IFNAME=eth0  the interface NCCL's bootstrap and socket transport use, e.g. ib0 or eth0; "^docker,lo"
#                            excludes some. Needed where NCCL picks an interface the other nodes cannot reach.
#                            GLOO_SOCKET_IFNAME does the same for gloo (CPU nodes).
#   NCCL_IB_DISABLE=1        on clusters without InfiniBand (or with a broken IB fabric): plain TCP sockets.
#   NCCL_DEBUG=INFO          for debugging hangs and slow starts: NCCL prints the transports and interfaces it
#                            chose (NCCL_DEBUG_SUBSYS=INIT,NET narrows it). Leave unset in production runs.

RAVDESS_ROOT=${RAVDESS_ROOT:-${SLURM_SUBMIT_DIR:?run this under sbatch from the repository root}}
cd "$RAVDESS_ROOT"
# shellcheck disable=SC1091
source "${RAVDESS_VENV:-$RAVDESS_ROOT/.venv}/bin/activate"
export PYTHONUNBUFFERED=1 RAVDESS_ROOT
JOB_TAG=${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+-$SLURM_ARRAY_TASK_ID}
MAIN_PORT=${MAIN_PORT:-$((20000 + (SLURM_JOB_ID % 20000)))}

# Prints how many GPUs SLURM allocated to this job on this node: SLURM_GPUS_ON_NODE; else SLURM_GPUS_PER_NODE
# ("2", "a100:2", "gpu:a100:2", or a comma list of these: summed); else the entries of SLURM_JOB_GPUS ("0,1");
# else the entries of CUDA_VISIBLE_DEVICES ("", "-1" and "NoDevFiles" mean none); else 0.
gpus_on_node() {
  local total=0 item entries
  if [[ ${SLURM_GPUS_ON_NODE:-} =~ ^[0-9]+$ ]]; then
    echo "$SLURM_GPUS_ON_NODE"
  elif [[ -n ${SLURM_GPUS_PER_NODE:-} ]]; then
    IFS=, read -r -a entries <<<"$SLURM_GPUS_PER_NODE"
    for item in "${entries[@]}"; do
      item=${item%%(*}  # a count may carry a socket list: "2(S:0-1)"
      [[ ${item##*:} =~ ^[0-9]+$ ]] && total=$((total + ${item##*:}))
    done
    echo "$total"
  elif [[ -n ${SLURM_JOB_GPUS:-} ]]; then
    IFS=, read -r -a entries <<<"$SLURM_JOB_GPUS"
    echo "${#entries[@]}"
  elif [[ -n ${CUDA_VISIBLE_DEVICES:-} && $CUDA_VISIBLE_DEVICES != -1 && $CUDA_VISIBLE_DEVICES != NoDevFiles ]]; then
    IFS=, read -r -a entries <<<"$CUDA_VISIBLE_DEVICES"
    echo "${#entries[@]}"
  else
    echo 0
  fi
}

# Prints how many CPUs each task of this job has: SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE, else nproc.
cpus_per_task() { echo "${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-$(nproc)}}"; }

GPUS_PER_NODE=$(gpus_on_node)
PROCS_PER_NODE=$((GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1))  # CPU-only nodes run one gloo process each
CPUS_PER_TASK=$(cpus_per_task)
OMP_NUM_THREADS=${THREADS_PER_PROCESS:-$((CPUS_PER_TASK / PROCS_PER_NODE > 0 ? CPUS_PER_TASK / PROCS_PER_NODE : 1))}
export OMP_NUM_THREADS
[[ -n ${SLURM_CPUS_PER_TASK:-} ]] && export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
echo "lib.sh: ${SLURMD_NODENAME:-$(hostname)}: $GPUS_PER_NODE GPU(s) allocated" \
  "(SLURM_GPUS_ON_NODE=${SLURM_GPUS_ON_NODE-unset} SLURM_GPUS_PER_NODE=${SLURM_GPUS_PER_NODE-unset}" \
  "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}), $PROCS_PER_NODE process(es) per node," \
  "$CPUS_PER_TASK CPU(s), OMP_NUM_THREADS=$OMP_NUM_THREADS"

# How one node runs train.py: `python` for one process (accelerate's simple launcher would hide the exit code),
# `accelerate launch --multi_gpu` for one process per allocated GPU.
if ((PROCS_PER_NODE > 1)); then
  node_launcher=(accelerate launch --multi_gpu --num_machines 1 --num_processes "$PROCS_PER_NODE"
    --num_cpu_threads_per_process "$OMP_NUM_THREADS" --main_process_port "$MAIN_PORT")
else
  node_launcher=(python)
fi

# Put before a step's command: with RAVDESS_DRY_RUN=1 the step prints what it would run, and runs nothing.
dry_run=()
[[ ${RAVDESS_DRY_RUN:-0} == 1 ]] && dry_run=("$RAVDESS_ROOT/launch/slurm/dry_run.sh")
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
