"""DataWaitClock: the host's time inside fetches, and on a GPU the GPU's share of an epoch spent in them."""
import time

import pytest
import torch

from ravdess_dist.data_wait import DataWaitClock
from tests.gpu import gpu


class Ticks:
    """A host clock that returns the given readings in turn."""

    def __init__(self, *readings: float):
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def test_host_time_is_the_sum_of_the_fetches_alone():
    """Two fetches of 2 s and 1 s with 3 s of work between them: 3 s of host wait; on a CPU no GPU share."""
    clock = DataWaitClock(torch.device("cpu"), now=Ticks(0.0, 2.0, 5.0, 6.0))
    for _ in range(2):
        with clock.fetching():
            pass
    clock.stop()
    assert clock.host == 3.0 and clock.events is None and clock.device_share() is None


def test_a_fetch_that_raises_still_counts():
    """The loader's error propagates, and the time it took is counted (the epoch's figures stay whole)."""
    clock = DataWaitClock(torch.device("cpu"), now=Ticks(1.0, 4.0))
    with pytest.raises(StopIteration):
        with clock.fetching():
            raise StopIteration
    assert clock.host == 3.0


CYCLES = 50_000_000  # torch.cuda._sleep: a kernel that spins this many GPU clock cycles (~25 ms at ~2 GHz)


@gpu
def test_gpu_work_inside_fetches_is_the_gpu_share():
    """Fetches that queue 1 unit of GPU work and steps that queue 3: a GPU share near 1/4, whatever the host did."""
    clock = DataWaitClock(torch.device("cuda"))
    for _ in range(4):
        with clock.fetching():
            torch.cuda._sleep(CYCLES)
        torch.cuda._sleep(3 * CYCLES)
    clock.stop()
    torch.cuda.synchronize()
    assert clock.device_share() == pytest.approx(0.25, abs=0.05)


@gpu
def test_a_host_blocked_in_fetches_while_the_gpu_is_busy_is_no_gpu_wait():
    """The host spends most of the epoch in fetches (CPU work) while the GPU runs the steps queued before: the host's
    share is high, the GPU's near zero (the case the host clock gets wrong on a GPU running ahead of nothing)."""
    clock = DataWaitClock(torch.device("cuda"))
    torch.cuda._sleep(20 * CYCLES)  # a long queue of "steps", already submitted
    start = time.perf_counter()
    for _ in range(4):
        with clock.fetching():
            a = torch.randn(600, 600)
            for _ in range(20):
                a = (a @ a).tanh_()  # host work while the GPU is still busy
        torch.cuda._sleep(CYCLES)
    clock.stop()
    host_seconds = time.perf_counter() - start
    torch.cuda.synchronize()
    assert clock.host / host_seconds > 0.5 and clock.device_share() < 0.05
