# On the GPU machine, after setup.sh (DALI not needed): where the compiled hybrid's step time goes, and the 6-fold CV
# of hybrid x normal again once the compilation cache is warm (about 4-5 min; each step packs what it has).
# scripts/device/profile_step.py: a real Run, warm-up epochs, one profiled epoch, timed epochs (loader vs step).
source scripts/device/lib.sh
step 120 prof-ro python3 scripts/device/profile_step.py --name ro compile=reduce-overhead; pack prof
step 150 cv-hybrid-normal-jobs6-warm python3 -m ravdess_dist.cv --jobs 6 --config configs/hybrid.yaml --intensity normal --folds 6 --run-name gpu-cv-warm --output-dir /tmp/m --logging-dir /tmp/runs compile=reduce-overhead
keep gpu-cv-warm; cp /tmp/m/gpu-cv-warm/fold*.log $R/gpu-cv-warm/ 2>/dev/null; pack prof
step 50 prof-ro-fused python3 scripts/device/profile_step.py --name ro-fused --fused compile=reduce-overhead; pack prof
step 45 prof-eager python3 scripts/device/profile_step.py --name eager --warm 1 --timed 3; pack prof
