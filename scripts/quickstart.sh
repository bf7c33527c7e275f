#!/usr/bin/env bash
# The main job, from nothing: set up ./.venv; preprocess the archive (working_directory/archive if it holds the
# corpus, else the bundled 4-actor sample): label tables, descriptive analysis, shards; then train and evaluate
# the recipe (resnet) and the hybrid briefly (EPOCHS, default 30, batch 16) on the normal intensity, speaker-independent. Variables: EPOCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
archive=working_directory/archive
if ! compgen -G "$archive/Actor_*/*" >/dev/null; then
  archive=sample/ravdess_actors01-04_16k
  echo "quickstart: no corpus in working_directory/archive, using the bundled sample ($archive)"
fi
.venv/bin/python -m preprocess --archive "$archive" --out working_directory
.venv/bin/python -m preprocess verify --shards working_directory/shards
for model in resnet hybrid; do
  .venv/bin/python train.py --model "$model" --intensity normal --epochs "${EPOCHS:-30}" --batch-size 16
done
cat <<'DONE'
quickstart: done.
  tables:      working_directory/data.csv, data_normal.csv, data_strong.csv (rejected.csv, duplicates.csv)
  report:      working_directory/analysis/report.md
  models:      working_directory/models/RUN/ (best.pt, last.pt, metrics.json, confusion_matrix.png)
  TensorBoard: .venv/bin/tensorboard --logdir working_directory/runs   (then open http://localhost:6006)
DONE
