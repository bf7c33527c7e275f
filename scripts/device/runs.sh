# On the GPU machine, after setup.sh: issue 11's full-size runs (about 7 min): the 6-fold CV of hybrid x normal at its
# config as 6 concurrent fold processes on the one GPU (`cv --jobs 6`: a fold alone leaves the GPU mostly idle between
# kernel launches; the in-process CV of 2026-11-26 took 197 s at 60 epochs), and the hybrid for 500 epochs on normal
# fold 0 (metrics.json's timing tells where the time went).
source scripts/device/lib.sh
step 360 cv-hybrid-normal-jobs6 python3 -m ravdess_dist.cv --jobs 6 --config configs/hybrid.yaml --intensity normal --folds 6 --run-name gpu-cv-hybrid-normal-jobs6 --output-dir /tmp/m --logging-dir /tmp/runs "$@"
keep gpu-cv-hybrid-normal-jobs6
cp /tmp/m/gpu-cv-hybrid-normal-jobs6/fold*.log $R/gpu-cv-hybrid-normal-jobs6/ 2>/dev/null
step 200 hybrid-500 accelerate launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no train.py --model hybrid --intensity normal --epochs 500 --patience 1000 --train-intensities same --folds 6 --fold 0 --run-name gpu-hybrid-500 --output-dir /tmp/m --logging-dir /tmp/runs "$@"
keep gpu-hybrid-500
pack runs
