"""The Ray batch source's read-ahead thread: same items in the same order, errors surface, closing stops it."""

from __future__ import annotations

import threading
import time

import pytest

from rtd.ray_adapters.data import read_ahead


def test_yields_every_item_in_order():
    assert list(read_ahead(lambda: iter(range(100)), depth=3)) == list(range(100))


def test_producer_error_surfaces_after_the_items_before_it():
    def gen():
        yield 1
        yield 2
        raise RuntimeError("rank 0: epoch 3 gave 5 batches, expected 6")

    it = read_ahead(gen, depth=4)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(RuntimeError, match="epoch 3 gave 5 batches"):
        next(it)


def test_stays_at_most_depth_ahead_and_close_stops_the_producer():
    produced, closed = [], threading.Event()

    def gen():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    it = read_ahead(gen, depth=4)
    assert next(it) == 0
    time.sleep(0.3)
    # consumed 1, queue holds <= 4, the producer may hold one more waiting for room
    assert len(produced) <= 1 + 4 + 1
    it.close()
    assert closed.wait(5), "the producer was not closed after the consumer closed"
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n


def test_rejects_zero_depth():
    with pytest.raises(ValueError, match="depth"):
        list(read_ahead(lambda: iter(()), depth=0))
