"""The mark of every test that needs a GPU torch can use: skipped without one, and marked `gpu`, so that a GPU machine
runs them all with `pytest -m gpu` (scripts/device/lib.sh, `gpu_tests`). Selecting them by name (`-k gpu`) missed the
tests whose names do not say "gpu" (2026-11-28b: the side-stream and preemption tests)."""
import pytest
import torch

REASON = "needs a GPU that torch can use"
GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=REASON)]  # pytest.param(marks=)


def gpu(test):
    """TEST marked `gpu` and skipped where torch cannot use a GPU."""
    for mark in GPU_MARKS:
        test = mark(test)
    return test
