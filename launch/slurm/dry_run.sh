#!/bin/bash
# dry_run.sh - what a job step runs instead of training when the batch script was submitted with RAVDESS_DRY_RUN=1
# (see lib.sh): prints one line with the node, its rank, the GPUs and threads the step got, and the exact command.
printf 'dry run: node=%s node_rank=%s CUDA_VISIBLE_DEVICES=%s OMP_NUM_THREADS=%s SLURM_CPUS_PER_TASK=%s command:' \
  "${SLURMD_NODENAME:-$(hostname)}" "${SLURM_NODEID:-0}" "${CUDA_VISIBLE_DEVICES-unset}" "${OMP_NUM_THREADS-unset}" \
  "${SLURM_CPUS_PER_TASK-unset}"
printf ' %q' "$@"
printf '\n'
