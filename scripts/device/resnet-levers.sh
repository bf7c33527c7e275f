# On the GPU machine, after setup.sh: issue 9's capacity levers for the strong target, which this 2-core CPU cannot
# afford (each doubles or quadruples the resnet's compute). 6-fold CVs of resnet x strong with the recipe as it is
# (configs/resnet.yaml: 60 epochs, no validation actors, last epoch), one lever each, the folds back to back in one
# process (the corpus decoded once): twice the channels, then 128 mel bands (on the CPU, 128 bands lost 3.5-5.4 points
# on the two folds run: results/resnet-strong-mels128, so the untried lever goes first). Compare with
# results/resnet-strong-e60-noval (0.729 on the CPU, fp32; rerun the plain recipe here first with `LEVERS=plain` for a
# same-card baseline). Extra arguments go to every CV, e.g. `compile=reduce-overhead`.
source scripts/device/lib.sh
for lever in ${LEVERS:-wide mels128}; do
  case $lever in
    plain) args=() ;;
    mels128) args=(features.n_mels=128 augment.freq_mask_width=16) ;;
    wide) args=("model_args.channels=[32,64,128,256]" model_args.embed=256) ;;
    *) echo "unknown lever $lever (plain, mels128, wide)"; continue ;;
  esac
  step 280 cv-resnet-strong-$lever python3 -m ravdess_dist.cv --config configs/resnet.yaml --intensity strong --folds 6 --run-name gpu-cv-resnet-strong-$lever --output-dir /tmp/m --logging-dir /tmp/runs "${args[@]}" "$@"
  keep gpu-cv-resnet-strong-$lever
done
pack levers
