# Sourced by the device scripts, on the GPU machine, in the repository root: paths, a timed step, the payload's stash.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
R=/tmp/res  # results of every call of this machine; each script packs them into $OUT at its end
mkdir -p $R /tmp/pay

# step SECONDS NAME CMD...: CMD under its own timeout (one hang must not eat the call); its status and wall time
step() {
  local t=$1 name=$2; shift 2
  echo "=== $(date +%T) [$name] $* (timeout ${t}s)"
  local s=$(date +%s%N); timeout -k 5 "$t" "$@"; local rc=$?
  local ms=$(( ($(date +%s%N) - s) / 1000000 ))
  echo "=== [$name] rc=$rc wall=${ms} ms"; echo "$name rc=$rc ms=$ms" >> $R/steps.txt
}

# the payload this call carried (.devpay/...), kept in /tmp/pay for the calls after it
stash() { [ -d .devpay ] && cp -r .devpay/. /tmp/pay/ && du -sh /tmp/pay/* | tr '\n' ' '; echo; }

# everything under /tmp/res as one file in $OUT (at most 8 files come back)
pack() { tar czf "$OUT/res-$1.tgz" -C /tmp res && ls -la "$OUT"; }

# keep NAME: the small outputs (json, md, png, yaml) of run folder /tmp/m/NAME in the results
keep() { mkdir -p $R/$1 && (cd /tmp/m/$1 && find . \( -name '*.json' -o -name '*.md' -o -name '*.png' -o -name '*.yaml' \) -print | tar cf - -T - | tar xf - -C $R/$1); }

# the test modules holding GPU tests (`@gpu`, tests/gpu.py; tests/test_conftest.py checks that this lists them all)
export GPU_TESTS="tests/test_device.py tests/test_graphed_step.py tests/test_device_path.py tests/test_data_wait.py tests/test_preemption.py tests/test_trainer.py"
# gpu_tests: every GPU test (`pytest -m gpu`), the report in $R/pytest-gpu.txt, its summary shown; exported, so that
# a step runs it: `step 120 pytest-gpu bash -c gpu_tests`
gpu_tests() { python3 -m pytest -q -p no:cacheprovider -o addopts= -rfE $GPU_TESTS -m gpu > $R/pytest-gpu.txt 2>&1; local rc=$?; tail -5 $R/pytest-gpu.txt; return $rc; }
export R; export -f gpu_tests
