# On the GPU machine, after setup.sh (DALI not needed): where the hybrid's step time goes, with cuda_graph=true (the
# whole update as one CUDA graph, no compilation) against compile=reduce-overhead with fused AdamW (12.2 ms a step on
# an H100, 2026-11-27), then the issue 11 runs with the faster one. About 8-9 min; each step packs what it has.
# The trainer reports the data wait on the GPU's clock too (data_wait_device; bench's "GPU wait"): the 5 % target
# is read there, the host's share beside it. data_stream=true computes the loader's passes on a side stream, one pass
# ahead (prof-graph vs prof-graph-stream measure it); the 500-epoch run, the CV and bench-train-graph (every model's
# recipe, mixup included) use both. If a GPU test fails, fix it and rerun the tests alone before the runs.
# scripts/device/profile_step.py: a real Run, warm-up epochs, one profiled epoch, timed epochs (loader vs step).
source scripts/device/lib.sh
step 90 pytest-gpu bash -c gpu_tests; pack prof
step 60 prof-graph python3 scripts/device/profile_step.py --name graph cuda_graph=true; pack prof
step 60 prof-graph-stream python3 scripts/device/profile_step.py --name graph-stream cuda_graph=true data_stream=true; pack prof
step 120 hybrid-500-graph python3 train.py --model hybrid --intensity normal --epochs 500 --patience 1000 --train-intensities same --folds 6 --fold 0 --run-name gpu-hybrid-500-graph --output-dir /tmp/m --logging-dir /tmp/runs cuda_graph=true data_stream=true
keep gpu-hybrid-500-graph; pack prof
step 150 cv-hybrid-normal-graph python3 -m ravdess_dist.cv --jobs 6 --config configs/hybrid.yaml --intensity normal --folds 6 --run-name gpu-cv-graph --output-dir /tmp/m --logging-dir /tmp/runs cuda_graph=true data_stream=true
keep gpu-cv-graph; cp /tmp/m/gpu-cv-graph/fold*.log $R/gpu-cv-graph/ 2>/dev/null; pack prof
step 90 bench-train-graph python3 -m ravdess_dist.bench train --device cuda --backends device --recipe --intensity normal --epochs 3 --config cuda_graph=true data_stream=true --json $R/train-cuda-graph.json; pack prof
[ "${QUICK:-0}" = 1 ] && exit 0  # QUICK=1: the issue 11 runs only, within one 10-minute call
step 45 prof-graph-pass64 python3 scripts/device/profile_step.py --name graph-stream-pass64 --pass 64 cuda_graph=true data_stream=true; pack prof
step 120 prof-ro python3 scripts/device/profile_step.py --name ro compile=reduce-overhead; pack prof
