"""`prefetched`: run a batch generator one or more batches ahead in a background thread.

The device backend on a CPU computes each training batch's features (windows, speed perturbation, noise, log-mel) in
the process that trains; in a thread they overlap with the model's step, because torch releases the GIL inside its
operators. That is what the torch backend's DataLoader worker processes give it, without processes or copies. The
batches stay in order and the thread is their only producer, so a generator seeded per epoch yields exactly the
same batches with or without it (the producer must not draw from torch's global generator: the training thread does).
"""
import queue
import threading
from collections.abc import Generator, Iterator

import torch

_DONE = object()


class _Failed:
    """An exception raised in the producer thread, to be raised again in the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def prefetched(batches: Iterator, depth: int) -> Generator:
    """Yield the items of BATCHES, produced up to DEPTH items ahead in a daemon thread (DEPTH 0: in this thread).

    The thread uses as many torch threads as the caller. An exception in the producer is raised here, at the item
    where it happened; closing this generator (or dropping it) stops the producer and closes BATCHES."""
    if depth < 1:
        yield from batches
        return
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    threads = torch.get_num_threads()

    def produce() -> None:
        torch.set_num_threads(threads)  # OpenMP settings are per thread: a new thread would use every core
        try:
            for item in batches:
                items.put(item)  # blocks while the queue is full; a closing consumer empties it once
                if stop.is_set():
                    break
            else:
                items.put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            items.put(_Failed(error))
        finally:
            if hasattr(batches, "close"):
                batches.close()

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        # Once stop is set the producer puts at most one more item (it looks at the flag after every put), so emptying
        # the queue once, after setting the flag, leaves room for it: no put can block, and the join cannot hang.
        stop.set()
        while True:
            try:
                items.get_nowait()
            except queue.Empty:
                break
        worker.join()
