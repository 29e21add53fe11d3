"""The micro-batcher on its own, with a fake model: batching, bounds, isolation, draining."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import MicroBatcher, Rejected


class FakeModel:
    """Doubles each pixel sum; records the batch sizes it saw; can be held or made to fail."""

    def __init__(self, fail_on: int | None = None):
        self.batches: list[int] = []
        self.fail_on = fail_on  # an image whose first pixel is this value fails its batch
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, key, images, labels):
        self.gate.wait(5)
        self.batches.append(len(images))
        if self.fail_on is not None and np.any(images[:, 0, 0, 0] == self.fail_on):
            msg = "bad image"
            raise ValueError(msg)
        # One record per image: sliceable by image, as the batcher needs.
        return np.rec.fromarrays(
            [images.reshape(len(images), -1).sum(axis=1) * 2, np.array([key] * len(images))],
            names="total,key",
        )


def images(n: int, value: int = 1) -> np.ndarray:
    return np.full((n, 1, 2, 2), value, np.uint8)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_inference_call():
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch_size=64, max_wait_ms=200, capacity=100)
        futures = [batcher.submit(images(1, v)) for v in range(10)]
        results = [await asyncio.gather(*f) for f in futures]
        await batcher.close()
        return results

    results = run(main())
    assert model.batches == [10]
    assert [r[0]["total"].tolist() for r in results] == [[v * 4 * 2] for v in range(10)]


def test_batches_never_exceed_max_batch_size_and_large_requests_are_split():
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_ms=50, capacity=100)
        big = batcher.submit(images(10))
        small = [batcher.submit(images(1)) for _ in range(3)]
        parts = await asyncio.gather(*big)
        await asyncio.gather(*(f for s in small for f in s))
        await batcher.close()
        return parts

    parts = run(main())
    assert max(model.batches) <= 4
    assert sum(model.batches) == 13
    assert sum(len(p["total"]) for p in parts) == 10


def test_a_full_queue_refuses_at_once():
    model = FakeModel()
    model.gate.clear()  # hold the model so work piles up

    async def main():
        batcher = MicroBatcher(model, max_batch_size=2, max_wait_ms=0, capacity=3)
        first = batcher.submit(images(2))
        await asyncio.sleep(0.05)  # the worker takes these two into a (held) batch
        queued = batcher.submit(images(3))
        with pytest.raises(Rejected) as refused:
            batcher.submit(images(1))
        model.gate.set()
        await asyncio.gather(*first, *queued)
        await batcher.close()
        return refused.value

    refused = run(main())
    assert refused.reason == "queue_full"


def test_one_bad_request_does_not_fail_its_neighbours():
    model = FakeModel(fail_on=99)

    async def main():
        batcher = MicroBatcher(model, max_batch_size=64, max_wait_ms=100, capacity=100)
        good = batcher.submit(images(2, 1))
        bad = batcher.submit(images(1, 99))
        results = await asyncio.gather(*good, *bad, return_exceptions=True)
        await batcher.close()
        return results

    good, bad = run(main())
    assert good["total"].tolist() == [8, 8]
    assert isinstance(bad, ValueError)


def test_requests_with_different_keys_run_in_separate_calls_of_one_batch():
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch_size=64, max_wait_ms=100, capacity=100)
        a = batcher.submit(images(2), key="a")
        b = batcher.submit(images(3), key="b")
        results = await asyncio.gather(*a, *b)
        await batcher.close()
        return results

    a, b = run(main())
    assert sorted(model.batches) == [2, 3]
    assert set(a["key"]) == {"a"}
    assert set(b["key"]) == {"b"}


def test_close_drains_what_is_queued_and_then_refuses():
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch_size=2, max_wait_ms=1000, capacity=100)
        queued = [batcher.submit(images(1)) for _ in range(5)]
        await batcher.close()
        done = [f.done() and not f.cancelled() and f.exception() is None for q in queued for f in q]
        with pytest.raises(Rejected) as refused:
            batcher.submit(images(1))
        return done, refused.value

    done, refused = run(main())
    assert all(done)
    assert refused.reason == "shutting_down"


def test_cancelled_requests_cost_no_inference():
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch_size=64, max_wait_ms=100, capacity=100)
        gone = batcher.submit(images(5))
        kept = batcher.submit(images(1))
        for future in gone:
            future.cancel()
        await asyncio.gather(*kept)
        await batcher.close()
        return batcher.depth

    depth = run(main())
    assert model.batches == [1]
    assert depth == 0


@pytest.mark.parametrize("bad", [{"max_batch_size": 0}, {"capacity": 0}, {"max_wait_ms": -1}])
def test_nonsense_limits_are_refused(bad):
    async def main():
        MicroBatcher(FakeModel(), **{"max_batch_size": 1, "max_wait_ms": 0, "capacity": 1, **bad})

    with pytest.raises(ValueError, match="must be"):
        run(main())


def test_a_batch_waits_for_requests_on_their_way():
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch_size=64, max_wait_ms=5000, capacity=100)
        arrival = batcher.arriving()  # a request still reading its body
        first = batcher.submit(images(1))
        await asyncio.sleep(0.05)
        assert not first[0].done()  # held for the announced request
        second = batcher.submit(images(2), arrival=arrival)
        await asyncio.gather(*first, *second)
        await batcher.close()

    run(main())
    assert model.batches == [3]


def test_a_lone_request_does_not_wait_for_max_wait():
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch_size=64, max_wait_ms=60_000, capacity=100)
        with batcher.arriving() as arrival:  # announced, then read and submitted
            futures = batcher.submit(images(1), arrival=arrival)
        await asyncio.wait_for(asyncio.gather(*futures), 10)  # far less than max_wait
        await batcher.close()

    run(main())
    assert model.batches == [1]


def test_a_request_that_gives_up_releases_the_waiting_batch():
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch_size=64, max_wait_ms=60_000, capacity=100)
        arrival = batcher.arriving()
        futures = batcher.submit(images(1))
        await asyncio.sleep(0.05)
        arrival.settle()  # e.g. its body was not an image: it never submits
        await asyncio.wait_for(asyncio.gather(*futures), 10)
        await batcher.close()

    run(main())
    assert model.batches == [1]
