"""The decorator of every test that needs a GPU torch can use: it is skipped without one and carries the `gpu` mark,
so that a GPU machine runs them all with `pytest -m gpu` (scripts/device/*.sh). Selecting them by name (`-k gpu`)
missed the tests whose names do not say "gpu" (2026-11-28b: the side-stream and preemption tests)."""
import pytest
import torch

REASON = "needs a GPU that torch can use"


def gpu(test):
    """TEST marked `gpu` and skipped where torch cannot use a GPU."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason=REASON)(test))
