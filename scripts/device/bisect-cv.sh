# On the GPU machine, after setup.sh (DALI not needed): the GPU tests with their report kept, then which option makes
# the 6-concurrent-fold CV of hybrid x normal fail (2026-11-28: cuda_graph=true data_stream=true, 3 of 6 folds hit an
# illegal memory access in epoch 0, while one process alone ran 500 epochs): each option alone, both again.
source scripts/device/lib.sh
ls /usr/local/cuda*/bin 2>/dev/null | grep -i sanitizer
cv() { local name=$1; shift
  step 150 $name python3 -m ravdess_dist.cv --jobs 6 --config configs/hybrid.yaml --intensity normal --folds 6 --run-name $name --output-dir /tmp/m --logging-dir /tmp/runs "$@"
  keep $name; cp /tmp/m/$name/fold*.log $R/$name/ 2>/dev/null; pack bisect; }
step 90 pytest-gpu bash -c "python3 -m pytest -q -p no:cacheprovider -o addopts= -rfE tests/test_graphed_step.py tests/test_device_path.py tests/test_data_wait.py tests/test_preemption.py -k gpu > $R/pytest-gpu.txt 2>&1"; tail -30 $R/pytest-gpu.txt; pack bisect
cv cv-graph cuda_graph=true
cv cv-graph-stream-e4 cuda_graph=true data_stream=true epochs=4
cv cv-stream-e4 data_stream=true epochs=4
cv cv-graph-stream-e4b cuda_graph=true data_stream=true epochs=4
