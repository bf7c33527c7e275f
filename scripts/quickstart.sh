#!/usr/bin/env bash
# The main job, from nothing: set up ./.venv, then preprocess the archive (working_directory/archive if it holds
# the corpus, else the bundled 4-actor sample): label tables, descriptive analysis, shards.
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
echo "quickstart: tables in working_directory/data*.csv, report in working_directory/analysis/report.md"
