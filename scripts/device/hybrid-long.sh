# On the GPU machine, after setup.sh: issue 9's lead for the hybrid, a longer schedule. On normal fold 0 its validation
# UA reached 0.59-0.69 around epoch 260-290 of a 500-epoch run, against 0.54-0.56 at 30 epochs; this is the 6-fold test
# of that lead at 100 epochs (the best validation epoch of the whole run is kept). Extra arguments go to the CV, e.g.
# `compile=reduce-overhead` (CUDA graphs: 2.2x the eager step rate on an H200) or `--intensity strong`.
# About 6 x 50 s eager on an H200 (0.5 s an epoch); pass `epochs=N patience=N` to change the schedule.
source scripts/device/lib.sh
step 540 cv-hybrid-long python3 -m ravdess_dist.cv --config configs/hybrid.yaml --intensity normal --folds 6 --run-name gpu-cv-hybrid-long --output-dir /tmp/m --logging-dir /tmp/runs epochs=100 patience=100 "$@"
keep gpu-cv-hybrid-long
pack long
