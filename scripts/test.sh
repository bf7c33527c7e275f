#!/usr/bin/env bash
# Set up ./.venv and run the whole test suite (the SLURM tests start a local cluster themselves; they need root or
# SLURM's Debian packages already installed). Extra arguments go to pytest, e.g. scripts/test.sh -k preprocess.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
