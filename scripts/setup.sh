#!/usr/bin/env bash
# Create ./.venv and install ravdess_dist with its pinned dependencies, the DALI backend and the test tools.
# Re-running is cheap (uv caches wheels). Variables: PYTHON (interpreter to build the venv from, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup.sh: ravdess_dist needs Python >= 3.11 ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip >/dev/null  # e.g. a venv made by uv
.venv/bin/python -m pip install -q --disable-pip-version-check uv==0.13.9
.venv/bin/python -m uv pip install -q --python .venv/bin/python -e ".[dali,dev]"
echo "setup.sh: environment ready in .venv ($(.venv/bin/python --version))"
