"""Preemption: a cluster's warning signal (SIGTERM, SIGUSR1) becomes a checkpoint and a clean exit at a step that
every rank agrees on, and asking whether one came never stops the GPU's queue.

The signal handler only sets a flag. The training loop looks at it after every STOP_CHECK_EVERY-th step and after the
epoch's last step (`check_due`), through a `StopPoll`:
- one process: the flag itself, read on the host (no device work, no sync);
- several: the ranks' flags are summed by an all-reduce on the device, copied to pinned host memory without blocking,
  and read at the *next* look, after an event recorded behind the copy: by then the GPU has long passed it, so the read
  waits for nothing the GPU still has to do, where reading the sum at once would wait for every step queued before it.
  Every rank reads the same sum at the same step, so all stop together, one look after the signal. At the epoch's last
  step the sum is read at once (the epoch ends with a host sync anyway), so no poll is left open between epochs.
"""
import signal

import torch

STOP = {"signal": 0}
STOP_CHECK_EVERY = 8  # steps between looks at the flag; the epoch's last step always looks


class Preempted(SystemExit):
    """Raised after a checkpoint was saved because the job got SIGTERM/SIGUSR1; exit code 128 + signal."""


def on_signal(signum, _frame):
    """Remember a preemption warning; the loop saves and stops at a step that looks at it."""
    STOP["signal"] = signum


def listen() -> None:
    """Route SIGTERM and SIGUSR1 (SLURM's warnings: `--signal`) to on_signal."""
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)


def check_due(step: int, steps: int) -> bool:
    """Whether step STEP (0-based) of an epoch of STEPS looks at the flag: after every STOP_CHECK_EVERY-th step and after
    the last one (the same steps on every rank, so the collective lines up)."""
    return (step + 1) % STOP_CHECK_EVERY == 0 or step + 1 == steps


class StopPoll:
    """Whether any rank got a signal, asked at the steps check_due names (see the module docstring)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.pending: tuple[torch.Tensor, torch.cuda.Event | None] | None = None  # the sum started at the last look

    def __call__(self, last: bool) -> bool:
        """The answer at this look; LAST: the epoch's last step (the answer is current, nothing stays pending)."""
        if self.accelerator.num_processes == 1:
            return bool(STOP["signal"])
        if self.pending is not None and self._read():
            return True
        self._start()
        return self._read() if last else False

    def _start(self) -> None:
        """Sum the ranks' flags on the device; the result travels to host memory behind the steps already queued."""
        acc = self.accelerator
        flag = torch.tensor([STOP["signal"]], dtype=torch.int32)
        if acc.device.type != "cuda":
            self.pending = (acc.reduce(flag.to(acc.device), reduction="sum"), None)
            return
        total = acc.reduce(flag.pin_memory().to(acc.device, non_blocking=True), reduction="sum")
        host = torch.empty(1, dtype=torch.int32, pin_memory=True)
        host.copy_(total, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.pending = (host, done)

    def _read(self) -> bool:
        """The pending sum, waiting only for its own copy."""
        host, done = self.pending
        self.pending = None
        if done is not None:
            done.synchronize()
        return bool(host.item())
