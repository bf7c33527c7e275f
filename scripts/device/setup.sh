# On the GPU machine, after the last payload call: the wheels and DALI into /tmp/site, the shards restored.
# A payload without DALI's parts (the device backend's runs need none) skips DALI.
source scripts/device/lib.sh
stash
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
step 60 wheels python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/pay/whl/*.whl
if compgen -G "/tmp/pay/dali/dali.tar.xz.part*" > /dev/null; then
  step 60 dali bash -c 'cat /tmp/pay/dali/dali.tar.xz.part* | xz -T0 -dc | tar x -C /tmp/site'
  # where the image's nvidia/ is a regular package, /tmp/site/nvidia/dali is not found through it: link it in
  python3 -c 'import nvidia.dali' 2>/dev/null || ln -s /tmp/site/nvidia/dali "$(python3 -c 'import nvidia; print(list(nvidia.__path__)[-1])')/dali"
  python3 -c "import nvidia.dali; print('dali', nvidia.dali.__version__)"
fi
step 60 shards python3 scripts/device/shardpack.py restore /tmp/pay/shards working_directory/shards
python3 -c "import torch, webdataset, soundfile, soxr; print(torch.__version__, torch.cuda.get_device_name())"
