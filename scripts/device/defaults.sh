# On the GPU machine, after setup.sh (DALI not needed): the defaults as a user gets them since 2026-11-28 (cuda_graph and
# data_stream unset: both on for one process on a GPU with the device backend). The GPU tests (the default run's among
# them), the 6-concurrent-fold CV of hybrid x normal and 500 hybrid epochs with no options, then the loader's profile
# with the defaults (issue 11's data wait: the pass's kernels and host time). About 5 minutes.
source scripts/device/lib.sh
step 120 pytest-gpu bash -c gpu_tests; pack defaults
step 150 cv-defaults python3 -m ravdess_dist.cv --jobs 6 --config configs/hybrid.yaml --intensity normal --folds 6 --run-name cv-defaults --output-dir /tmp/m --logging-dir /tmp/runs
keep cv-defaults; cp /tmp/m/cv-defaults/fold*.log $R/cv-defaults/ 2>/dev/null; pack defaults
step 120 hybrid-500-defaults python3 train.py --model hybrid --intensity normal --epochs 500 --patience 1000 --train-intensities same --folds 6 --fold 0 --run-name gpu-hybrid-500-defaults --output-dir /tmp/m --logging-dir /tmp/runs
keep gpu-hybrid-500-defaults; pack defaults
step 60 prof-defaults python3 scripts/device/profile_step.py --name defaults; pack defaults
