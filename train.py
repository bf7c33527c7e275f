"""Entry point: `accelerate launch train.py --intensity normal [--model hybrid] [...]`; see `python train.py --help`."""
import sys

from ravdess_dist.config import load_config
from ravdess_dist.device import DeviceUnusable
from ravdess_dist.trainer import Run

if __name__ == "__main__":
    try:  # option, config, shard and split problems are reported before any work starts
        run = Run(load_config())
    except (ValueError, FileNotFoundError, DeviceUnusable) as err:
        sys.exit(f"error: {err}")
    run.fit()
    run.test()
    run.close()
