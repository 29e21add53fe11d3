"""A micro-batcher: concurrent requests for one model share ONNX Runtime calls.

Requests queue their images (split into chunks of at most `max_batch_size`); one worker task takes
what is queued and runs it in a thread, so the event loop keeps accepting requests. While a batch
runs the next one gathers, so batches grow with load. Before running a batch that is not full the
worker waits for requests known to be on their way (announced with `arriving()` while their bodies
are read and decoded), at most `max_wait_ms` after the oldest image arrived; with nothing on its
way it runs at once, so a lone request pays no batching delay. The queue is bounded in images: a
full queue refuses new work at once (the caller answers 429) instead of growing memory. `close()`
drains the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Sliceable(Protocol):
    def __getitem__(self, images: slice): ...


# execute(key, images, labels) -> a result whose first axis is the image: `result[start:stop]` is
# the part of one request. `key` groups the jobs that may run together; `labels` are the images'
# class labels (conditional models) or None.
ExecuteFn = Callable[[Hashable, np.ndarray, np.ndarray | None], Sliceable]


REJECTION_REASONS = ("queue_full", "shutting_down")


class Rejected(Exception):
    """The batcher refused work: `reason` is one of REJECTION_REASONS."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class _Job:
    images: np.ndarray  # (n, C, H, W)
    key: Hashable
    future: asyncio.Future
    labels: np.ndarray | None = None  # (n,) class labels for a conditional model
    queued_at: float = field(default_factory=time.monotonic)


class Arrival:
    """A request on its way to the batcher; `settle()` when it submits or gives up."""

    def __init__(self, batcher: MicroBatcher):
        self._batcher = batcher
        self._open = True
        batcher._expected += 1

    def settle(self) -> None:
        if self._open:
            self._open = False
            self._batcher._expected -= 1
            self._batcher._wakeup.set()  # a waiting batch may now run

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc) -> None:
        self.settle()


@dataclass
class BatchStats:
    """What one inference call did; handed to `on_inference` (for metrics)."""

    images: int
    seconds: float


class MicroBatcher:
    def __init__(
        self,
        execute: ExecuteFn,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        capacity: int,
        name: str = "model",
        on_inference: Callable[[BatchStats], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or capacity < 1 or max_wait_ms < 0:
            msg = "max_batch_size and capacity must be >= 1, max_wait_ms >= 0"
            raise ValueError(msg)
        self.execute = execute
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.capacity = capacity
        self.name = name
        self._on_inference = on_inference or (lambda stats: None)
        self._on_depth = on_depth or (lambda depth: None)
        self._queue: deque[_Job] = deque()
        self._depth = 0  # images waiting: queued, or in the batch that is forming
        self._wakeup = asyncio.Event()
        self._closing = False
        self._in_flight: list[_Job] = []  # taken from the queue: forming or running
        self._expected = 0  # requests announced by arriving() and not yet submitted
        # One thread: one batch in flight per model, the next one gathers meanwhile.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{name}")

    @property
    def depth(self) -> int:
        return self._depth

    def arriving(self) -> Arrival:
        """Announce a request whose images are still being read; use as a context manager."""
        return Arrival(self)

    def submit(
        self,
        images: np.ndarray,
        key: Hashable = None,
        arrival: Arrival | None = None,
        labels: np.ndarray | None = None,
    ) -> list[asyncio.Future]:
        """Queue images (n, C, H, W) (with their labels (n,), if any); one future per chunk,
        resolving to its slice of outputs."""
        if arrival is not None:
            arrival.settle()
        if self._closing:
            msg = f"model {self.name!r} is shutting down"
            raise Rejected(msg, reason="shutting_down")
        count = len(images)
        if self._depth + count > self.capacity:
            msg = (
                f"model {self.name!r} has {self._depth} images queued (capacity {self.capacity}); "
                "retry later"
            )
            raise Rejected(msg, reason="queue_full")
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, count, self.max_batch_size):
            stop = start + self.max_batch_size
            part = None if labels is None else labels[start:stop]
            job = _Job(images[start:stop], key, loop.create_future(), part)
            self._queue.append(job)
            futures.append(job.future)
        self._depth += count
        self._on_depth(self._depth)
        self._wakeup.set()
        return futures

    async def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, finish what is queued (within `timeout_s`), then stop."""
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            log.warning(
                "%s: %d images still queued after %.1f s; cancelling them",
                self.name,
                self._depth,
                timeout_s,
            )
            self._task.cancel()
            for job in [*self._in_flight, *self._queue]:
                if not job.future.done():
                    msg = "shut down before scoring"
                    job.future.set_exception(Rejected(msg, reason="shutting_down"))
            self._queue.clear()
            self._depth = 0
        self._executor.shutdown(wait=False)

    # --- the worker ------------------------------------------------------------------------
    def _take(self, batch: list[_Job], size: int) -> int:
        """Move queued jobs into the forming batch while they fit; they still count as waiting."""
        while self._queue and size + len(self._queue[0].images) <= self.max_batch_size:
            job = self._queue.popleft()
            if job.future.done():  # a cancelled request (client went away) costs nothing
                self._depth -= len(job.images)
                continue
            batch.append(job)
            size += len(job.images)
        return size

    async def _gather(self, batch: list[_Job]) -> None:
        size = self._take(batch, 0)
        if not batch:
            return
        deadline = batch[0].queued_at + self.max_wait_s
        while size < self.max_batch_size and not self._closing and self._expected > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
            size = self._take(batch, size)
            if self._queue:  # the next job does not fit: this batch is as full as it gets
                break

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._on_depth(self._depth)
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._in_flight = []
            await self._gather(batch)
            self._depth -= sum(len(job.images) for job in batch)
            self._on_depth(self._depth)
            if not batch:
                continue
            try:
                outcomes = await loop.run_in_executor(self._executor, self._infer_batch, batch)
            except Exception as error:  # the executor itself failed; keep serving
                log.exception("%s: batch failed", self.name)
                outcomes = [error] * len(batch)
            finally:
                self._in_flight = []
            for job, outcome in zip(batch, outcomes, strict=True):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _infer_batch(self, batch: list[_Job]) -> list:
        """In the worker thread: one inference call per key, sliced back to the jobs."""
        groups: dict[Hashable, list[int]] = {}
        for i, job in enumerate(batch):
            groups.setdefault(job.key, []).append(i)
        outcomes: list = [None] * len(batch)
        for key, indices in groups.items():
            jobs = [batch[i] for i in indices]
            try:
                sliced = self._call(key, jobs)
            except Exception as error:
                if len(jobs) == 1:
                    sliced = [error]
                else:
                    # One bad request must not fail its neighbours: retry them one by one.
                    sliced = [self._call_alone(key, job) for job in jobs]
            for i, outcome in zip(indices, sliced, strict=True):
                outcomes[i] = outcome
        return outcomes

    def _call_alone(self, key: Hashable, job: _Job):
        try:
            return self._call(key, [job])[0]
        except Exception as error:
            return error

    def _call(self, key: Hashable, jobs: list[_Job]) -> list:
        images = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
        labels = None if jobs[0].labels is None else np.concatenate([j.labels for j in jobs])
        started = time.perf_counter()
        result = self.execute(key, images, labels)
        self._on_inference(BatchStats(len(images), time.perf_counter() - started))
        if len(jobs) == 1:
            return [result]
        sliced, start = [], 0
        for job in jobs:
            stop = start + len(job.images)
            sliced.append(result[start:stop])
            start = stop
        return sliced
