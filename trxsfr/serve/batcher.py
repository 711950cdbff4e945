"""Batching of concurrent requests into shared forward passes (TF Serving's batching, in asyncio).

Requests, REST and gRPC alike, hand their images to `Batcher.predict` on the event
loop; the batcher queues them, forms batches of one model version and one kind of input, runs
each batch on a TensorFlow worker thread (`LoadedVersion.predict_batch`) and
answers every request with its own rows, or its own error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import numpy as np

from trxsfr.serve.versions import LoadedVersion

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Item:
    lv: LoadedVersion
    images: Any  # float32 [k, H, W, 3] in [0, 1], or a list of k `Encoded`
    future: asyncio.Future
    enqueued: float

    def joins(self, other: "_Item") -> bool:
        """Same model version and same kind of input: one forward pass can take both."""
        return self.lv is other.lv and isinstance(self.images, list) == isinstance(other.images, list)


class Batcher:
    """Joins the images of concurrent requests into one decode and forward pass, on up to
    `num_batch_threads` TF worker threads at once.

    While every worker is busy, requests queue. When one is free, the batch starts
    with the oldest request and takes every queued request of the same model
    version, up to `max_batch_size` images. Before that it waits -- at most
    `batch_timeout` after the oldest request arrived or a worker became free,
    whichever is later -- while fewer images are queued than the previous batch
    had, or while requests already received are still being parsed (they are
    sure to join within a parse time). So a lone client never waits (its
    previous batch had one image and nothing else is arriving), and under load
    batches fill up, as TF Serving's batching does. Two workers keep 2 cores
    busier than one: one batch decodes or starts while the other's forward pass
    leaves a core idle between and inside its ops.
    """

    def __init__(self, max_batch_size: int, batch_timeout: float, num_batch_threads: int = 2,
                 on_batch: Optional[Callable[[int], None]] = None):
        """`on_batch(images)` is called on the event loop after each forward pass."""
        self.max_batch_size = max_batch_size
        self.on_batch = on_batch
        self.batch_timeout = batch_timeout
        self.num_batch_threads = num_batch_threads
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup: Optional[asyncio.Event] = None
        self._free: Optional[asyncio.Semaphore] = None  # workers not running a batch
        self._task: Optional[asyncio.Task] = None
        self._running: set[asyncio.Task] = set()
        self._worker = ThreadPoolExecutor(num_batch_threads, thread_name_prefix="trxsfr-tf")
        self._last_batch = 1
        self._free_since = 0.0
        self.arriving = 0  # requests received and being decoded; see `arrival`
        self.batches = 0
        self.images = 0

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._free = asyncio.Semaphore(self.num_batch_threads)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._worker.shutdown(wait=True)

    async def predict(self, lv: LoadedVersion, images) -> np.ndarray:
        """k images (float32 [k, H, W, 3] in [0, 1], or k `Encoded`) -> float32 [k, classes].

        Raises:
            BadRequest: an encoded image that TF cannot decode.
        """
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(lv, images, future, time.monotonic()))
        self._wakeup.set()
        return await future

    @contextlib.contextmanager
    def arrival(self):
        """Wrap the decoding of a request that will call `predict`, so batches wait for it."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self._wakeup.set()

    def _queued_images(self, first: _Item) -> int:
        return sum(len(item.images) for item in self._queue if item.joins(first))

    async def _run(self) -> None:
        while True:
            await self._free.acquire()
            batch = await self._next_batch()
            if batch:
                task = asyncio.get_running_loop().create_task(self._forward(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            else:
                self._free.release()

    async def _next_batch(self) -> list[_Item]:
        """The next batch to run, once one is due (empty if its requests were cancelled)."""
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._queue[0]
        want = min(self.max_batch_size, self._last_batch)
        deadline = max(first.enqueued, self._free_since) + self.batch_timeout
        while True:
            queued = self._queued_images(first)
            if queued >= self.max_batch_size or (queued >= want and not self.arriving):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except asyncio.TimeoutError:
                break
        batch, count, rest = [], 0, collections.deque()
        while self._queue:
            item = self._queue.popleft()
            fits = not batch or count + len(item.images) <= self.max_batch_size
            if item.joins(first) and fits:
                batch.append(item)
                count += len(item.images)
            else:
                rest.append(item)
        self._queue.extendleft(reversed(rest))
        return [item for item in batch if not item.future.cancelled()]

    async def _forward(self, batch: list[_Item]) -> None:
        """Run one batch on a worker and answer its requests; frees the worker."""
        count = sum(len(item.images) for item in batch)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._worker, batch[0].lv.predict_batch, [item.images for item in batch])
        except Exception as e:
            log.exception("prediction failed for a batch of %d images", count)
            results = [e] * len(batch)
        else:
            self._last_batch = count
            self.batches += 1
            self.images += count
            if self.on_batch is not None:
                self.on_batch(count)
        finally:
            self._free_since = time.monotonic()
            self._free.release()
        for item, result in zip(batch, results):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
