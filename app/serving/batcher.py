"""Dynamic micro-batching: concurrent requests for one model share one forward pass.

The first queued request opens a window of `max_wait_s` (counted from its arrival, as Triton's
dynamic batcher does); the batch closes when the window ends or `max_size` samples are waiting.
Forwards run one at a time in a worker thread, so the event loop keeps accepting requests and
the queue fills while the model computes. The queue is bounded in samples: past `queue_limit`,
`submit` raises `QueueFull` at once (the API answers 503 with Retry-After).
"""

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread
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
    ) -> None:
        self._forward = forward
        self.max_size = max(1, max_size)
        self.max_wait_s = max(0.0, max_wait_s)
        self.queue_limit = queue_limit
        self._queue: deque[_Item] = deque()
        self._queued_samples = 0
        self.pending = 0  # samples queued or inside a forward
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrival = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.forwards = 0
        self._last_forward_s = 0.0

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.pending + n > self.queue_limit:
            metrics.REJECTED.inc()
            # Time to drain what is ahead, rounded up to whole seconds as Retry-After wants.
            batches = math.ceil(self.pending / self.max_size)
            raise QueueFull(
                self.pending, self.queue_limit, max(1, math.ceil(batches * self._last_forward_s))
            )
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests' clients): nothing carries over
            self._loop, self._arrival, self._runner = loop, asyncio.Event(), None
        item = _Item(x, loop.create_future(), time.perf_counter())
        self._queue.append(item)
        self._queued_samples += n
        self.pending += n
        metrics.QUEUE_SAMPLES.inc(n)
        self._arrival.set()
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        try:
            return await item.future
        finally:
            self.pending -= n
            metrics.QUEUE_SAMPLES.dec(n)

    async def _run(self) -> None:
        """Serve batches until the queue is empty, then end (the next submit starts another)."""
        while self._queue:
            deadline = self._queue[0].arrived + self.max_wait_s
            while self._queued_samples < self.max_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._compute(batch)

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        while self._queue and (not batch or size + self._queue[0].n <= self.max_size):
            item = self._queue.popleft()
            self._queued_samples -= item.n
            if item.future.done():  # its request was cancelled while waiting
                continue
            batch.append(item)
            size += item.n
        return batch

    async def _compute(self, batch: list[_Item]) -> None:
        xs = [item.x for item in batch]
        try:
            start = time.perf_counter()
            # One forward at a time: this loop awaits each before it takes the next batch.
            outs = await anyio.to_thread.run_sync(self._forward_split, xs)
            self._last_forward_s = time.perf_counter() - start
        except Exception as exc:  # a failed forward fails its own requests, not the batcher
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, out in zip(batch, outs, strict=True):
            if not item.future.done():
                item.future.set_result(out)

    def _forward_split(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        self.forwards += 1
        metrics.BATCH_SIZE.observe(x.shape[0])
        with torch.inference_mode():
            out = self._forward(x)
        return list(out.split([t.shape[0] for t in xs]))
