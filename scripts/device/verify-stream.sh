# On the GPU machine, after setup.sh (DALI not needed): data_stream's fix (DeviceLoader.plan_ffts: cuFFT plans made on
# the training stream first) and the graph tests with deterministic cuDNN. The GPU tests; the side-stream test with the
# fix switched off (it should fail there); the 6-concurrent-fold CV with cuda_graph and data_stream twice (before the
# fix 3 of 6 and 2 of 6 folds failed in epoch 0); 500 hybrid epochs with cuda_graph alone.
source scripts/device/lib.sh
step 90 pytest-gpu bash -c "python3 -m pytest -q -p no:cacheprovider -o addopts= -rfE tests/test_graphed_step.py tests/test_device_path.py tests/test_data_wait.py tests/test_preemption.py -k gpu > $R/pytest-gpu.txt 2>&1"; tail -5 $R/pytest-gpu.txt; pack verify
step 60 pytest-nofix bash -c "python3 -c 'import sys, pytest; from ravdess_dist.data.device_path import DeviceLoader; DeviceLoader.plan_ffts = lambda self: None; sys.exit(pytest.main([\"-q\", \"-p\", \"no:cacheprovider\", \"-o\", \"addopts=\", \"-rfE\", \"tests/test_device_path.py\", \"-k\", \"side_stream\"]))' > $R/pytest-nofix.txt 2>&1"; tail -5 $R/pytest-nofix.txt; pack verify
cv() { local name=$1; shift
  step 150 $name python3 -m ravdess_dist.cv --jobs 6 --config configs/hybrid.yaml --intensity normal --folds 6 --run-name $name --output-dir /tmp/m --logging-dir /tmp/runs "$@"
  keep $name; cp /tmp/m/$name/fold*.log $R/$name/ 2>/dev/null; pack verify; }
cv cv-graph-stream-fix-e4 cuda_graph=true data_stream=true epochs=4
cv cv-graph-stream-fix-e4b cuda_graph=true data_stream=true epochs=4
step 120 hybrid-500-graph-only python3 train.py --model hybrid --intensity normal --epochs 500 --patience 1000 --train-intensities same --folds 6 --fold 0 --run-name gpu-hybrid-500-graph-only --output-dir /tmp/m --logging-dir /tmp/runs cuda_graph=true
keep gpu-hybrid-500-graph-only; pack verify
