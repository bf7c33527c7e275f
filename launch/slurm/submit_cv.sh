#!/bin/bash
# submit_cv.sh - submit cv_array.sbatch for every (model, intensity, fold) and a job that aggregates the results
# into working_directory/models/cv-ARRAYJOB/summary.{md,json} once every task has ended.
#
#   launch/slurm/submit_cv.sh [train.py flags]                    e.g. --epochs 40
#   MODELS=hybrid INTENSITIES=normal FOLDS=3 launch/slurm/submit_cv.sh
#
# Run from the repository root. Variables: MODELS, INTENSITIES, FOLDS, OUTPUT_DIR (as in cv_array.sbatch), and
# SBATCH_ARGS: extra sbatch options for both jobs (partition, account, resources: e.g.
# "--gpus-per-node=0 --cpus-per-task=4 --mem=8G" on a CPU-only partition; see cv_array.sbatch for the defaults),
# ARRAY: the task ids to run (default all, e.g. ARRAY=0-1 to try two), SUMMARY_LOG: the aggregation's log file.
# The aggregation job asks for one CPU and no GPU unless SBATCH_ARGS says otherwise. Prints the two job ids.
set -euo pipefail
read -r -a models <<<"${MODELS:-cnn hybrid}"
read -r -a intensities <<<"${INTENSITIES:-normal strong}"
export MODELS="${models[*]}" INTENSITIES="${intensities[*]}" FOLDS=${FOLDS:-6}
out=${OUTPUT_DIR:-working_directory/models}
tasks=$((${#models[@]} * ${#intensities[@]} * FOLDS))
mkdir -p working_directory/logs
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
array=$(sbatch --parsable ${SBATCH_ARGS:-} --array="${ARRAY:-0-$((tasks - 1))}" launch/slurm/cv_array.sbatch "$@")
array=${array%%;*}
# shellcheck disable=SC2086
summary=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency="afterany:$array" --job-name=ravdess-cv-summary \
  --output="${SUMMARY_LOG:-working_directory/logs/%x-%j.out}" --ntasks=1 --time=00:10:00 \
  --wrap "${RAVDESS_VENV:-.venv}/bin/python -m ravdess_dist.cv summarize $out/cv-$array/*/ --out $out/cv-$array")
echo "array job $array (tasks ${ARRAY:-0-$((tasks - 1))}), summary job $summary -> $out/cv-$array/summary.md"
