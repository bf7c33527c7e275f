"""The environment scripts/setup.sh builds: bytecode compiled ahead, so processes start fast without writing it."""
import importlib.util
from pathlib import Path

import pytest

# what a training process imports (torch._dynamo comes in with the optimiser), and the project's own modules
MODULES = ["torch", "torch._dynamo.symbolic_convert", "sympy.core.expr", "accelerate.accelerator", "webdataset",
           "ravdess_dist.trainer", "ravdess_dist.data.device_path", "preprocess.pack", "shards.manifest"]


@pytest.mark.parametrize("name", MODULES)
def test_module_has_bytecode(name):
    """A .pyc beside the source: with PYTHONDONTWRITEBYTECODE=1 Python would otherwise compile it in every process."""
    source = Path(importlib.util.find_spec(name).origin)
    assert Path(importlib.util.cache_from_source(str(source))).is_file(), f"no bytecode for {source}: run scripts/setup.sh"
