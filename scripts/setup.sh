#!/usr/bin/env bash
# Create ./.venv and install ravdess_dist with its pinned dependencies, the DALI backend and the test tools.
# Re-running is cheap (uv caches wheels). Variables:
#   PYTHON        interpreter to build the venv from (default python3)
#   RAVDESS_CUDA  which CUDA build of torch and DALI to install:
#                   13 (default): torch 2.11.0 from PyPI (a CUDA 13.0 build) + nvidia-dali-cuda130; driver >= 580.
#                   12 (or 12.6): torch/torchaudio 2.11.0+cu126 from the PyTorch index + nvidia-dali-cuda120, for
#                                 drivers 525-570 (CUDA 12 minor-version compatibility; GPUs from Maxwell to Hopper).
#                   12.8:         the same with torch's cu128 build (Turing to Blackwell, no Volta).
#   RAVDESS_TORCH_INDEX  the index that holds the CUDA 12 builds (default https://download.pytorch.org/whl/cu126,
#                 or .../cu128), e.g. a mirror of it: it must carry torch==2.11.0+cu126 (+cu128) and their dependencies.
# The CUDA 12 install runs in two steps: torch and torchaudio (and their nvidia-* libraries) from the PyTorch index,
# then the project from the usual index, where torch==2.11.0 is already met by 2.11.0+cu126. Switching an existing
# .venv between the builds uninstalls torch, torchaudio and the other DALI flavour first (.venv/ravdess-cuda says
# which is installed); `rm -rf .venv` gives a clean one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup.sh: ravdess_dist needs Python >= 3.11 ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1; }
case ${RAVDESS_CUDA:-13} in
  13 | 13.0) cuda_tag= ;;
  12 | 12.6) cuda_tag=cu126 ;;
  12.8) cuda_tag=cu128 ;;
  *) echo "setup.sh: RAVDESS_CUDA must be 13 (default), 12 (= 12.6) or 12.8, not '$RAVDESS_CUDA'" >&2; exit 1 ;;
esac
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip >/dev/null  # e.g. a venv made by uv
.venv/bin/python -m pip install -q --disable-pip-version-check uv==0.13.9
uv=(.venv/bin/python -m uv pip)
marker=.venv/ravdess-cuda  # the CUDA 12 build installed here, if any
if [ -z "$cuda_tag" ]; then
  if [ -f "$marker" ]; then  # back from a CUDA 12 build: PyPI's torch==2.11.0 would count as already installed
    echo "setup.sh: replacing the $(cat "$marker") builds of torch and DALI in .venv with the default CUDA 13 ones"
    "${uv[@]}" uninstall -q --python .venv/bin/python torch torchaudio nvidia-dali-cuda120
    rm -f "$marker"
  fi
  "${uv[@]}" install -q --python .venv/bin/python -e ".[dali,dev]"
else
  index=${RAVDESS_TORCH_INDEX:-https://download.pytorch.org/whl/$cuda_tag}
  tag=$cuda_tag
  if [ "$(cat "$marker" 2>/dev/null)" != "$tag" ]; then
    "${uv[@]}" uninstall -q --python .venv/bin/python nvidia-dali-cuda130 nvidia-dali-cuda120 2>/dev/null || true
  fi
  echo "setup.sh: installing torch 2.11.0+$tag and torchaudio from $index, then nvidia-dali-cuda120"
  "${uv[@]}" install -q --python .venv/bin/python --index-url "$index" "torch==2.11.0+$tag" "torchaudio==2.11.0+$tag"
  "${uv[@]}" install -q --python .venv/bin/python -e ".[dali-cuda120,dev]"
  echo "$tag" >"$marker"
fi
# Bytecode for every installed module and the project's own. Where PYTHONDONTWRITEBYTECODE=1 (common in containers;
# set on this project's CI machines) Python never caches it, so each process compiled torch's, accelerate's and sympy's
# sources again at start-up: 12 of a training process's 25 s of setup on a 2-core CPU. Up-to-date files are skipped.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3.*/site-packages preprocess shards ravdess_dist train.py >/dev/null \
  || echo "setup.sh: some files could not be byte-compiled; Python compiles them when they are imported" >&2
echo "setup.sh: environment ready in .venv ($(.venv/bin/python --version))"
