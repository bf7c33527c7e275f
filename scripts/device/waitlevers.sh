# On the GPU machine, after setup.sh (DALI not needed): issue 11's last target, the data wait (< 5 % of GPU time; 7-17 %
# for the hybrid, 10-40 % for the smaller models on 2026-11-28). The two levers of 2026-11-28b against the order before
# them, on one warm machine (profile_step.py, hybrid x normal, defaults: cuda_graph and data_stream on):
#   levers      both (the defaults now): the next pass queued with QUEUE_LEFT=4 batches of a pass left, speed groups
#               padded to multiples of 32 (SPEED_GROUP)
#   before      --queue-left 16 --speed-group 1: the order and exact groups of 2026-11-28
#   order-only / group-only: one lever each
#   pass64      both, 64 batches a pass (an epoch in one pass: fewer host launches a batch, for host-bound models)
# then the cnn (the most host-bound, 40 %) with and without them and at 64 a pass, and every model's recipe through
# `bench train` (its "GPU wait" column). Read `gpu_wait_share` in each JSON (timed epochs) and the loader's host time
# (`next_ms`). About 4 minutes; each step packs what it has.
source scripts/device/lib.sh
step 120 pytest-gpu bash -c gpu_tests; pack waitlevers
for variant in "levers" "before --queue-left 16 --speed-group 1" "order-only --speed-group 1" "group-only --queue-left 16" "pass64 --pass 64"; do
  set -- $variant
  step 60 prof-$1 python3 scripts/device/profile_step.py --name $@; pack waitlevers
done
for variant in "cnn-levers" "cnn-before --queue-left 16 --speed-group 1" "cnn-pass64 --pass 64"; do
  set -- $variant
  step 60 prof-$1 python3 scripts/device/profile_step.py --config configs/cnn.yaml --name $@ backend=device; pack waitlevers
done
step 120 bench-train-levers python3 -m ravdess_dist.bench train --device cuda --backends device --recipe --intensity normal --epochs 3 --json $R/train-levers.json; pack waitlevers
