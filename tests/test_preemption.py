"""Preemption: which steps look at the flag, and StopPoll's answers with one process and with several."""
import types

import torch

from ravdess_dist import preemption
from ravdess_dist.preemption import StopPoll
from tests.gpu import gpu


def test_the_flag_is_looked_at_every_k_steps_and_at_the_last(monkeypatch):
    """check_due: after every STOP_CHECK_EVERY-th step and after the epoch's last step, at no other step."""
    assert preemption.STOP_CHECK_EVERY == 8
    due = preemption.check_due
    assert [s for s in range(20) if due(s, 20)] == [7, 15, 19]
    assert [s for s in range(16) if due(s, 16)] == [7, 15]
    monkeypatch.setattr(preemption, "STOP_CHECK_EVERY", 5)
    assert [s for s in range(8) if due(s, 8)] == [4, 7]


def accelerator(processes: int, reduced: list):
    """What StopPoll uses of an Accelerator, on the CPU: PROCESSES ranks that all hold this process's flag (the sum is
    PROCESSES times it); each reduction is recorded in REDUCED."""
    def reduce(tensor, reduction):
        assert reduction == "sum"
        reduced.append(int(tensor))
        return tensor * processes
    return types.SimpleNamespace(num_processes=processes, device=torch.device("cpu"), reduce=reduce)


def test_one_process_reads_the_flag_at_once_without_device_work(monkeypatch):
    """One process: no collective and no tensor (nothing to sync on a GPU); the answer is the flag at this look."""
    reduced = []
    poll = StopPoll(accelerator(1, reduced))
    assert poll(last=False) is False
    monkeypatch.setitem(preemption.STOP, "signal", 15)
    assert poll(last=False) is True and poll(last=True) is True
    assert reduced == [] and poll.pending is None


def test_several_processes_act_on_the_sum_one_look_later(monkeypatch):
    """Several: each look starts a sum of the ranks' flags and reads the one the previous look started, so a signal
    stops the ranks at the look after the one that summed it; the epoch's last look reads its own sum at once and
    leaves nothing pending for the next epoch."""
    reduced = []
    poll = StopPoll(accelerator(2, reduced))
    assert poll(last=False) is False and poll.pending is not None
    monkeypatch.setitem(preemption.STOP, "signal", 15)
    assert poll(last=False) is False  # read the sum from before the signal; this look's sum holds it
    assert poll(last=False) is True and poll.pending is None
    assert reduced == [0, 15]
    monkeypatch.setitem(preemption.STOP, "signal", 0)
    assert poll(last=True) is False and poll.pending is None
    monkeypatch.setitem(preemption.STOP, "signal", 10)
    assert poll(last=True) is True and poll.pending is None  # the last look: no look later to wait for




@gpu
def test_a_look_with_several_processes_does_not_wait_for_the_queued_steps(monkeypatch):
    """On a GPU a look that is not the epoch's last reads the previous look's sum and starts its own without a host
    sync and without waiting for the steps queued since: the stream is still busy when it returns."""
    acc = types.SimpleNamespace(num_processes=2, device=torch.device("cuda"),
                                reduce=lambda tensor, reduction: tensor * 2)  # one GPU: the collective's shape only
    poll = StopPoll(acc)
    poll(last=False)
    torch.cuda._sleep(200_000_000)  # the steps queued since (~0.1 s of GPU time)
    torch.cuda.set_sync_debug_mode("error")
    try:
        assert poll(last=False) is False
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert not torch.cuda.current_stream().query()  # the queued work is still running: the look did not wait for it
    monkeypatch.setitem(preemption.STOP, "signal", 15)
    poll(last=False)
    assert poll(last=False) is True
