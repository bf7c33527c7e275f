# On the GPU machine, after setup.sh: the checks that the GPU paths work, and the throughput figures (about 4 min).
source scripts/device/lib.sh
step 150 doctor python3 -m ravdess_dist.doctor --json $R/doctor.json
step 90 pytest-gpu bash -c gpu_tests
step 100 bench-features python3 -m ravdess_dist.bench features --no-notebook --intensity all --batch-size 256 --num-workers 12 --repeats 3 --train --device cuda --json $R/features-cuda-b256.json
step 150 bench-train python3 -m ravdess_dist.bench train --device cuda --intensity normal --epochs 2 --json $R/train-cuda.json
pack checks
