"""The micro-batcher groups concurrent requests into one forward, answers each with its own rows,
bounds its queue, and survives a failing forward."""

import asyncio
import threading
import time

import pytest
import torch
from torch import nn

from app.serving.batcher import MicroBatcher, QueueFull

pytestmark = pytest.mark.anyio


class Counting(nn.Module):
    """A real linear layer that records each forward's batch size; `gate` can hold a forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.gate.wait(10)
        self.sizes.append(x.shape[0])
        return self.linear(x)


async def test_concurrent_requests_share_one_forward_and_get_their_own_rows() -> None:
    net = Counting()
    batcher = MicroBatcher(net, max_size=64, max_wait_s=0.2, queue_limit=100)
    xs = [torch.randn(n, 4) for n in (1, 2, 1, 3, 1)]
    outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
    assert net.sizes == [8]
    with torch.no_grad():
        for x, out in zip(xs, outs, strict=True):
            assert torch.allclose(out, net.linear(x), atol=1e-6)


async def test_batches_close_at_max_size() -> None:
    net = Counting()
    batcher = MicroBatcher(net, max_size=4, max_wait_s=0.2, queue_limit=100)
    await asyncio.gather(*(batcher.submit(torch.randn(1, 4)) for _ in range(10)))
    assert net.sizes == [4, 4, 2]


async def test_requests_queue_while_a_forward_runs() -> None:
    """No wait at all: the first forward runs alone, the others gather behind it."""
    net = Counting()
    net.gate.clear()
    batcher = MicroBatcher(net, max_size=64, max_wait_s=0.0, queue_limit=100)
    first = asyncio.ensure_future(batcher.submit(torch.randn(1, 4)))
    await asyncio.sleep(0.05)
    rest = [asyncio.ensure_future(batcher.submit(torch.randn(1, 4))) for _ in range(5)]
    await asyncio.sleep(0.05)
    net.gate.set()
    await asyncio.gather(first, *rest)
    assert net.sizes == [1, 5]


async def test_queue_limit_refuses_at_once_with_retry_after() -> None:
    net = Counting()
    net.gate.clear()
    batcher = MicroBatcher(net, max_size=2, max_wait_s=0.0, queue_limit=3)
    held = asyncio.ensure_future(batcher.submit(torch.randn(2, 4)))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(batcher.submit(torch.randn(1, 4)))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as caught:
        await batcher.submit(torch.randn(1, 4))
    assert caught.value.retry_after_s >= 1 and "limit 3" in str(caught.value)
    net.gate.set()
    await asyncio.gather(held, queued)
    assert batcher.pending == 0
    await batcher.submit(torch.randn(3, 4))  # room again


async def test_a_failing_forward_fails_its_requests_only() -> None:
    calls = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        if len(calls) == 1:
            raise RuntimeError("boom")
        return x * 2

    batcher = MicroBatcher(forward, max_size=8, max_wait_s=0.05, queue_limit=100)
    results = await asyncio.gather(
        *(batcher.submit(torch.ones(1, 4)) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert torch.equal(await batcher.submit(torch.ones(1, 4)), torch.full((1, 4), 2.0))


async def test_a_cancelled_request_is_skipped() -> None:
    net = Counting()
    net.gate.clear()
    batcher = MicroBatcher(net, max_size=64, max_wait_s=0.0, queue_limit=100)
    first = asyncio.ensure_future(batcher.submit(torch.randn(1, 4)))
    await asyncio.sleep(0.05)
    gone = asyncio.ensure_future(batcher.submit(torch.randn(1, 4)))
    kept = asyncio.ensure_future(batcher.submit(torch.randn(2, 4)))
    await asyncio.sleep(0.01)
    gone.cancel()
    net.gate.set()
    await asyncio.gather(first, kept)
    assert net.sizes == [1, 2] and batcher.pending == 0


async def test_the_next_forward_starts_without_the_event_loop() -> None:
    """The forward thread takes the queued batch as soon as a forward ends: a busy event loop
    (here blocked outright) delays only the answers, not the forwards."""
    net = Counting()
    net.gate.clear()
    batcher = MicroBatcher(net, max_size=64, max_wait_s=0.0, queue_limit=100)
    first = asyncio.ensure_future(batcher.submit(torch.randn(1, 4)))
    await asyncio.sleep(0.05)
    rest = [asyncio.ensure_future(batcher.submit(torch.randn(1, 4))) for _ in range(3)]
    await asyncio.sleep(0.01)
    net.gate.set()
    deadline = time.monotonic() + 5
    while net.sizes != [1, 3] and time.monotonic() < deadline:
        time.sleep(0.001)  # holds the event loop: nothing of it runs meanwhile
    assert net.sizes == [1, 3]
    await asyncio.gather(first, *rest)


def started_since(before: set[threading.Thread]) -> list[threading.Thread]:
    """Batcher threads started after `before` was taken (other tests' may still be idling)."""
    return [t for t in threading.enumerate() if t.name == "freshnets-batcher" and t not in before]


async def test_the_forward_thread_ends_when_idle_and_comes_back() -> None:
    before = set(threading.enumerate())
    batcher = MicroBatcher(Counting(), max_size=8, max_wait_s=0.0, queue_limit=100, idle_s=0.05)
    await batcher.submit(torch.randn(1, 4))
    [thread] = started_since(before)
    thread.join(5)
    assert not thread.is_alive()
    out = await batcher.submit(torch.randn(2, 4))
    assert out.shape == (2, 3) and batcher.forwards == 2
    assert len(started_since(before | {thread})) == 1  # a new one


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_forward_thread_killed_by_an_error_is_replaced() -> None:
    """Only a bug could end the thread (a forward's Exception fails its requests); even then
    the next request gets a new thread instead of waiting forever."""

    class Fatal(BaseException):
        pass

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 2:
            raise Fatal
        return x * 2

    before = set(threading.enumerate())
    batcher = MicroBatcher(forward, max_size=8, max_wait_s=0.0, queue_limit=100)
    lost = asyncio.ensure_future(batcher.submit(torch.ones(2, 4)))
    deadline = time.monotonic() + 5
    while (batcher.forwards < 1 or started_since(before)) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # until its forward ran and the thread it killed is gone
    assert batcher.forwards == 1 and not started_since(before)
    out = await asyncio.wait_for(batcher.submit(torch.ones(1, 4)), 5)
    assert torch.equal(out, torch.full((1, 4), 2.0))
    lost.cancel()
