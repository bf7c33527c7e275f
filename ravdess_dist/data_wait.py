"""How much of a training epoch waits for data: on the host's clock, and on a GPU on the GPU's own clock.

On a CPU every operation has finished when the call returns, so the host's time inside `next(batches)` is the time
the step waited for its batch. On a GPU the host only queues work, and its time in the loader means something else
depending on who is ahead:
- host-bound (the GPU finishes each step before the host has queued the next): the GPU idles while the host is in the
  loader, so the host's share is the wait;
- GPU-bound (the host is ahead, as with CUDA graphs: a step costs the host one replay): the host blocks wherever the
  launch queue is full, mostly in the loader (its pass makes ~100 launches, a replay one), so its share counts GPU time
  spent on the steps as "data wait".
The GPU's clock settles it: a CUDA event on the current stream before and after each fetch; the GPU time between the
two is the loader's own device work plus any time the GPU sat idle until the host had queued it, i.e. what the step
waited for. The share is over the GPU time from the epoch's first event to the one after its last step. Events cost a
few microseconds each, make no host sync, and are read once, after the epoch's one sync (`device_share`).
"""
import contextlib
import time
from collections.abc import Callable

import torch


class DataWaitClock:
    """Time inside `fetching()` blocks over an epoch: `host` seconds always, and on a CUDA DEVICE the GPU's share."""

    def __init__(self, device: torch.device, now: Callable[[], float] = time.perf_counter):
        """NOW: the host clock (a parameter so that tests can drive it)."""
        self.now, self.host = now, 0.0
        self.events: list[torch.cuda.Event] | None = [] if device.type == "cuda" else None

    def _mark(self) -> None:
        """An event on the current stream, if this clock reads the GPU."""
        if self.events is not None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.events.append(event)

    @contextlib.contextmanager
    def fetching(self):
        """Wrap the fetch of one batch."""
        start = self.now()
        self._mark()
        try:
            yield
        finally:
            self._mark()
            self.host += self.now() - start

    def stop(self) -> None:
        """Mark the end of the epoch's work on the GPU: after its last step, before the sync that reads the loss."""
        self._mark()

    def device_share(self) -> float | None:
        """The GPU's share of the epoch spent in fetches (None on a CPU, or before any fetch); call it after the
        epoch's host sync (each event read here has then completed)."""
        if self.events is None or len(self.events) < 3:
            return None
        events = self.events
        events[-1].synchronize()  # the last one; every earlier event precedes it on the stream
        waited = sum(start.elapsed_time(end) for start, end in zip(events[0:-1:2], events[1:-1:2]))
        total = events[0].elapsed_time(events[-1])
        return waited / total if total > 0 else 0.0
