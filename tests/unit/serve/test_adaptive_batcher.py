"""serve.core.AdaptiveBatcher: timer-free request batching used by the Serve ingress."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve.core import AdaptiveBatcher, split_shard_batch


class _Recorder:
    def __init__(self, delay: float = 0.01, fail_on: object = None) -> None:
        self.batches: list[list] = []
        self.delay, self.fail_on = delay, fail_on
        self.running = 0
        self.max_running = 0

    async def __call__(self, items):
        self.batches.append(list(items))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.delay)
            if self.fail_on in items:
                raise ValueError(f"bad item {self.fail_on}")
            return [x * 10 for x in items]
        finally:
            self.running -= 1


def test_lone_request_runs_at_once_and_gets_its_result():
    rec = _Recorder(delay=0)

    async def main():
        loop = asyncio.get_running_loop()
        t = loop.time()
        out = await AdaptiveBatcher(rec, max_batch_size=8)(3)
        return out, loop.time() - t

    out, elapsed = asyncio.run(main())
    assert out == 30 and rec.batches == [[3]]
    assert elapsed < 0.05  # no batching window is waited for


def test_requests_arriving_during_a_batch_form_the_next_batch_in_order():
    rec = _Recorder(delay=0.02)

    async def main():
        b = AdaptiveBatcher(rec, max_batch_size=4)
        return await asyncio.gather(*[b(i) for i in range(11)])

    out = asyncio.run(main())
    assert out == [i * 10 for i in range(11)]  # every caller gets its own result
    # the first caller is dispatched alone at once; the rest queued meanwhile: FIFO, capped at max_batch_size
    assert rec.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert rec.max_running == 1


def test_max_in_flight_overlaps_batches():
    rec = _Recorder(delay=0.02)

    async def main():
        b = AdaptiveBatcher(rec, max_batch_size=2, max_in_flight=2)
        return await asyncio.gather(*[b(i) for i in range(8)])

    assert asyncio.run(main()) == [i * 10 for i in range(8)]
    assert rec.max_running == 2


def test_an_error_reaches_every_caller_of_that_batch_only():
    rec = _Recorder(delay=0.01, fail_on=5)

    async def main():
        b = AdaptiveBatcher(rec, max_batch_size=4)
        return await asyncio.gather(*[b(i) for i in range(8)], return_exceptions=True)

    out = asyncio.run(main())  # batches [0], [1..4], [5..7]
    assert out[:5] == [0, 10, 20, 30, 40]
    assert all(isinstance(e, ValueError) and "bad item 5" in str(e) for e in out[5:])


def test_wrong_result_count_is_an_error_not_a_hang():
    async def short(items):
        return items[:-1]

    async def main():
        b = AdaptiveBatcher(short, max_batch_size=4)
        return await asyncio.gather(b(1), b(2), return_exceptions=True)

    out = asyncio.run(main())
    assert out[0] == 1 or isinstance(out[0], RuntimeError)
    assert any(isinstance(e, RuntimeError) and "results for" in str(e) for e in out)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_batch_size"):
        AdaptiveBatcher(_Recorder(), max_batch_size=0)


def test_split_shard_batch_rows_and_metadata():
    class Shard:
        def get_items(self, ids):
            return [{"id": i} for i in ids]

    D = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.5]], np.float32)
    I = np.array([[4, 2, -1], [2, 9, 8]], np.int64)
    rows = split_shard_batch(Shard(), D, I, ks=[2, 3])
    assert rows[0][1].tolist() == [[4, 2]] and rows[1][1].tolist() == [[2, 9, 8]]
    assert rows[0][2] == {4: {"id": 4}, 2: {"id": 2}}
    assert set(rows[1][2]) == {2, 9, 8}
