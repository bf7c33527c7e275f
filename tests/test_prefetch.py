"""prefetched: the same items in the same order from a background thread; errors and early stops reach both sides."""
import threading

import pytest
import torch

from ravdess_dist.data.prefetch import prefetched


def numbers(n: int, log: list, fail_at: int | None = None):
    """0..N-1 as tensors, each made with a seeded generator; logs the producing thread, raises at FAIL_AT."""
    generator = torch.Generator().manual_seed(0)
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"bad item {i}")
            log.append(threading.current_thread().name)
            yield i, torch.rand(3, generator=generator)
    finally:
        log.append("closed")


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_items_and_order_equal_the_plain_generator(depth):
    """Every depth gives exactly the generator's items; depth >= 1 computes them in the 'prefetch' thread."""
    plain_log, log = [], []
    plain = list(numbers(10, plain_log))
    got = list(prefetched(numbers(10, log), depth))
    assert [i for i, _ in got] == list(range(10))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(plain, got))
    assert log[-1] == "closed"
    assert set(log[:-1]) == ({"prefetch"} if depth else {threading.current_thread().name})


def test_a_producer_error_is_raised_in_the_consumer_after_the_good_items():
    """The items before the failure arrive, then the producer's own exception with its message."""
    log, got = [], []
    with pytest.raises(ValueError, match="bad item 4"):
        for i, _ in prefetched(numbers(10, log, fail_at=4), 2):
            got.append(i)
    assert got == [0, 1, 2, 3]


def test_closing_early_stops_the_producer_and_closes_its_source():
    """An endless source, read 3 items and closed (what the loader does at the end of an epoch): the thread ends and
    the source's finally block ran; at most the queue's depth plus one item were made ahead."""
    log = []
    stream = prefetched(numbers(10**9, log), 2)
    assert [next(stream)[0] for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert not any(t.name == "prefetch" for t in threading.enumerate())
    assert log[-1] == "closed" and len(log) - 1 <= 3 + 2 + 1


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_closing_at_any_point_ends_the_producer(depth):
    """Closed after 1..7 items, with the producer blocked on a full queue or computing its next item: the close
    returns (it empties the queue once, leaving room for the producer's last item), the thread ends, the source closes."""
    for taken in range(1, 8):
        log = []
        stream = prefetched(numbers(10**9, log), depth)
        assert [next(stream)[0] for _ in range(taken)] == list(range(taken))
        stream.close()
        assert not any(t.name == "prefetch" for t in threading.enumerate()) and log[-1] == "closed"


def test_the_producer_uses_the_callers_torch_threads():
    """OpenMP thread counts are per thread: the producer takes the caller's, not every core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def counts():
            yield torch.get_num_threads()
        assert list(prefetched(counts(), 1)) == [1]
    finally:
        torch.set_num_threads(before)
