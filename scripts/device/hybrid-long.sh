# On the GPU machine, after setup.sh: issue 9's lead for the hybrid, a longer schedule. On normal fold 0 its validation
# UA reached 0.59-0.69 around epoch 260-290 of a 500-epoch run; on the CPU 60 -> 90 epochs gave normal 0.464 -> 0.507
# (results/hybrid-normal-e90; 90 is now configs/hybrid.yaml's default). This is the 6-fold test of twice that, 180
# epochs, with the config's protocol (no validation actors, the last epoch). Extra arguments go to the CV, e.g.
# `compile=reduce-overhead` (CUDA graphs: 2.2x the eager step rate on an H200; needed to fit one call) or
# `--intensity strong`. About 6 x 90 s eager on an H200 (0.5 s an epoch); pass `epochs=N patience=N` to change it.
source scripts/device/lib.sh
step 570 cv-hybrid-long python3 -m ravdess_dist.cv --config configs/hybrid.yaml --intensity normal --folds 6 --run-name gpu-cv-hybrid-long --output-dir /tmp/m --logging-dir /tmp/runs epochs=180 patience=180 "$@"
keep gpu-cv-hybrid-long
pack long
