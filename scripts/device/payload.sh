#!/usr/bin/env bash
# Build .devpay/: what a lent GPU machine lacks for the device checks (scripts/device/README.md), and .devpay/calls.json,
# the `carry` list of each call that takes it there, each call within 64 MiB together with the working tree.
# Run here, after scripts/setup.sh (with DALI) and python -m preprocess: it reads .venv and working_directory/shards.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
grep -qx '/.devpay/' .git/info/exclude 2>/dev/null || echo /.devpay/ >> .git/info/exclude
rm -rf .devpay && mkdir -p .devpay/whl .devpay/dali

# wheels for the machine's Python 3.12, at the versions installed here: the shard readers and DALI's Python needs
names="webdataset braceexpand soundfile cffi pycparser soxr optree makefun astunparse gast libcst nvtx"
pins=$(for n in $names; do echo "$n==$($PY -c "import importlib.metadata as m; print(m.version('$n'))")"; done)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .devpay/whl $pins

# the shards, their WAV members as FLAC (27 % of the bytes)
$PY scripts/device/shardpack.py pack working_directory/shards .devpay/shards

# DALI as installed here, without the other Pythons' extension modules and the C++ headers: 435 MB, 132 MB as xz
# (DALI=0 skips it: the device path's runs need none)
[ "${DALI:-1}" = 0 ] || tar cf - -C "$SITE" --exclude=__pycache__ --exclude=nvidia/dali/include \
    --exclude='*cpython-39*' --exclude='*cpython-310*' --exclude='*cpython-311*' --exclude='*cpython-313*' \
    --exclude='*cpython-314*' --exclude='*cpython-315*' nvidia/dali "$(basename "$SITE"/nvidia_dali_cuda*.dist-info)" \
  | xz -9 -T0 | split -b 16M -d - .devpay/dali/dali.tar.xz.part

# calls: each under 64 MiB minus the working tree that travels with it (and 1 MiB to spare)
$PY - <<'PY'
import json, subprocess
from pathlib import Path
tree = sum(Path(f).stat().st_size for f in subprocess.run(
    ["git", "ls-files", "--cached", "--others", "--exclude-standard"], capture_output=True, text=True,
    check=True).stdout.split() if Path(f).is_file())
budget = 63 * 2**20 - tree
size = lambda p: sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
items = [Path(".devpay/whl"), Path(".devpay/shards/normal"), Path(".devpay/shards/strong"),
         Path(".devpay/shards/manifest.json"), Path(".devpay/shards/index.json"),
         *sorted(Path(".devpay/dali").iterdir())]
calls, used = [], []  # first fit: each item into the first call with room for it (8 paths at most a call)
for item in items:
    if size(item) > budget:
        raise SystemExit(f"{item} ({size(item) / 2**20:.0f} MiB) does not fit one call ({budget / 2**20:.0f} MiB)")
    at = next((i for i, c in enumerate(calls) if used[i] + size(item) <= budget and len(c) < 8), None)
    if at is None:
        calls.append([]); used.append(0); at = len(calls) - 1
    calls[at].append(str(item)); used[at] += size(item)
Path(".devpay/calls.json").write_text(json.dumps(calls, indent=1))
print(f"working tree {tree / 2**20:.1f} MiB; {len(calls)} calls:")
for c in calls:
    print(" ", json.dumps(c))
PY
