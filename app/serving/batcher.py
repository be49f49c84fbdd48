"""Dynamic micro-batching: concurrent requests for one model share one forward pass.

The first queued request opens a window of `max_wait_s` (counted from its arrival, as Triton's
dynamic batcher does); the batch closes when the window ends or `max_size` samples are waiting.
Each batcher has its own forward thread, which takes the next batch as soon as a forward ends,
without waiting for the event loop: the loop only queues requests and hands back results (one
callback per batch), so under load the forwards run back to back while the loop serves HTTP.
The thread ends after `idle_s` without work, and the next request starts another. The queue is
bounded in samples: past `queue_limit`, `submit` raises `QueueFull` at once (the API answers 503
with Retry-After).
"""

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.serving import metrics


class QueueFull(Exception):
    """The batcher already holds `queue_limit` samples."""

    def __init__(self, pending: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"prediction queue full ({pending} samples waiting, limit {limit})")
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Item:
    x: torch.Tensor
    future: asyncio.Future[torch.Tensor]
    arrived: float

    @property
    def n(self) -> int:
        return self.x.shape[0]


class MicroBatcher:
    """`await submit(x)` with `x` a (n, ...) float batch returns `forward(x)`'s rows for it,
    computed together with whatever other requests arrived in the same window."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        max_size: int,
        max_wait_s: float,
        queue_limit: int,
        idle_s: float = 1.0,
    ) -> None:
        self._forward = forward
        self.max_size = max(1, max_size)
        self.max_wait_s = max(0.0, max_wait_s)
        self.queue_limit = queue_limit
        self.idle_s = idle_s
        self.pending = 0  # samples queued or inside a forward (the event loop's count)
        self.forwards = 0
        self._last_forward_s = 0.0
        # Shared with the forward thread: everything below is guarded by `_cond`.
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._queued_samples = 0
        self._thread: threading.Thread | None = None

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.pending + n > self.queue_limit:
            metrics.REJECTED.inc()
            # Time to drain what is ahead, rounded up to whole seconds as Retry-After wants.
            batches = math.ceil(self.pending / self.max_size)
            raise QueueFull(
                self.pending, self.queue_limit, max(1, math.ceil(batches * self._last_forward_s))
            )
        item = _Item(x, asyncio.get_running_loop().create_future(), time.perf_counter())
        self.pending += n
        metrics.QUEUE_SAMPLES.inc(n)
        with self._cond:
            self._queue.append(item)
            self._queued_samples += n
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="freshnets-batcher", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()
        try:
            return await item.future
        finally:
            self.pending -= n
            metrics.QUEUE_SAMPLES.dec(n)

    def _serve(self) -> None:
        """The forward thread: batches until the queue has stayed empty for `idle_s`."""
        try:
            while True:
                with self._cond:
                    if not self._cond.wait_for(lambda: self._queue, self.idle_s):
                        self._thread = None  # a later submit starts another (under this lock)
                        return
                    deadline = self._queue[0].arrived + self.max_wait_s
                    while self._queued_samples < self.max_size:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    batch = self._take()
                if batch:
                    self._compute(batch)
        finally:  # ended by an error: the next submit starts another thread for the queue
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        while self._queue and (not batch or size + self._queue[0].n <= self.max_size):
            item = self._queue.popleft()
            self._queued_samples -= item.n
            if item.future.cancelled():  # its request went away while waiting
                continue
            batch.append(item)
            size += item.n
        return batch

    def _compute(self, batch: list[_Item]) -> None:
        """One forward for the batch, its rows handed back on each request's event loop."""
        self.forwards += 1
        metrics.BATCH_SIZE.observe(sum(item.n for item in batch))
        start = time.perf_counter()
        try:
            x = batch[0].x if len(batch) == 1 else torch.cat([item.x for item in batch])
            with torch.inference_mode():
                outs: list[torch.Tensor] | Exception = list(
                    self._forward(x).split([item.n for item in batch])
                )
        except Exception as exc:  # a failed forward fails its own requests, not the batcher
            outs = exc
        self._last_forward_s = time.perf_counter() - start
        # One callback per event loop (a server has one; tests may have several).
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Item, torch.Tensor | Exception]]]
        by_loop = {}
        for i, item in enumerate(batch):
            answer = outs if isinstance(outs, Exception) else outs[i]
            by_loop.setdefault(item.future.get_loop(), []).append((item, answer))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_deliver, answers)


def _deliver(answers: list[tuple[_Item, torch.Tensor | Exception]]) -> None:
    """On the requests' event loop: each future gets its rows, or the forward's exception."""
    for item, answer in answers:
        if item.future.done():  # cancelled meanwhile
            continue
        if isinstance(answer, Exception):
            item.future.set_exception(answer)
        else:
            item.future.set_result(answer)
