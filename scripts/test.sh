#!/usr/bin/env bash
# Set up ./.venv and run the whole test suite (the SLURM tests start a local cluster themselves; they need root or
# SLURM's Debian packages already installed). Extra arguments go to pytest, e.g. scripts/test.sh -k preprocess.
# The tests run on RAVDESS_TEST_WORKERS pytest-xdist workers (default 2; 0: in this process), each with its share of the
# cores; tests that share an expensive fixture stay on one worker (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${RAVDESS_TEST_WORKERS:-2}" --dist loadgroup "$@"
