"""A least-recently-used cache of ready (materialised) models, bounded by their tensors' bytes.

A model is loaded on its first use; concurrent first requests for one model share one load (one
task per key), and a load never blocks the event loop (it runs in a worker thread).
"""

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import torch
from torch import nn

from app.serving import metrics
from app.serving.batcher import MicroBatcher

log = logging.getLogger(__name__)


def _tensors_in(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)


def model_nbytes(model: nn.Module) -> int:
    """Bytes a ready model holds: parameters, buffers and tensors cached on its modules (the
    materialised filters), each storage counted once."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        found = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        found.extend(_tensors_in(list(vars(module).values())))
        for tensor in found:
            storage = tensor.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


@dataclass(eq=False)
class CacheEntry:
    """A ready model (the rebuilt plain network) and the micro-batcher that feeds it."""

    model_id: str
    owner_id: str
    model: nn.Module
    info: dict[str, Any]  # export.describe(): shapes, class names, method, spec
    input_shape: tuple[int, int, int]
    num_classes: int
    class_names: list[str] | None
    nbytes: int
    load_seconds: float
    batcher: MicroBatcher = field(repr=False)


class ModelCache:
    """`get(model_id, owner_id)` returns a ready entry, loading it with `loader(model_id,
    owner_id)` (called in a thread; it raises for another owner's model) on a miss; the least
    recently used entries are evicted while the total is over `budget_bytes`. A model larger than
    the whole budget is served to the requests that loaded it but not kept."""

    def __init__(self, budget_bytes: int, loader: Callable[[str, str | None], CacheEntry]) -> None:
        self.budget_bytes = budget_bytes
        self._loader = loader
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        # One load per (model, owner): a stranger's failing attempt never fails the owner's.
        self._loading: dict[tuple[str, str | None], asyncio.Task[CacheEntry]] = {}
        self._dropped_while_loading: set[str] = set()
        self._lock = threading.Lock()  # drop() may come from a sync route's thread
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._entries

    def is_warm(self, model_id: str) -> bool:
        return model_id in self._entries

    def peek(self, model_id: str) -> CacheEntry | None:
        """The cached entry, marked as just used (a hit), or None."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is not None:
                self._entries.move_to_end(model_id)
        if entry is not None:
            metrics.CACHE_HITS.inc()
        return entry

    async def get(self, model_id: str, owner_id: str | None = None) -> CacheEntry:
        """The entry (the caller checks its owner on a hit; the loader does on a miss)."""
        entry = self.peek(model_id)
        if entry is not None:
            return entry
        key = (model_id, owner_id)
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(model_id, owner_id))
            self._loading[key] = task
        # shield: a cancelled request (client gone) must not cancel a load others wait for.
        return await asyncio.shield(task)

    async def _load(self, model_id: str, owner_id: str | None) -> CacheEntry:
        metrics.CACHE_MISSES.inc()
        try:
            start = time.perf_counter()
            entry = await anyio.to_thread.run_sync(self._loader, model_id, owner_id)
            metrics.REBUILD_SECONDS.observe(time.perf_counter() - start)
            if model_id in self._dropped_while_loading:
                return entry  # deleted meanwhile: answer the waiters, keep nothing
            self._insert(entry)
            return entry
        finally:
            self._loading.pop((model_id, owner_id), None)
            if not any(mid == model_id for mid, _ in self._loading):
                self._dropped_while_loading.discard(model_id)

    def _insert(self, entry: CacheEntry) -> None:
        if entry.nbytes > self.budget_bytes:
            log.warning(
                "model %s needs %d bytes, more than the whole cache (FRESHNETS_CACHE_BYTES=%d):"
                " served without caching",
                entry.model_id,
                entry.nbytes,
                self.budget_bytes,
            )
            return
        with self._lock:
            old = self._entries.pop(entry.model_id, None)
            if old is not None:
                self.total_bytes -= old.nbytes
            self._entries[entry.model_id] = entry
            self.total_bytes += entry.nbytes
            while self.total_bytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.total_bytes -= evicted.nbytes
                metrics.CACHE_EVICTIONS.inc()
                log.info("evicted model %s (%d bytes)", evicted.model_id, evicted.nbytes)
        self._update_gauges()

    def drop(self, model_id: str) -> bool:
        """Forget a model (deleted, or replaced); True if it was cached or loading."""
        with self._lock:
            entry = self._entries.pop(model_id, None)
            if entry is not None:
                self.total_bytes -= entry.nbytes
            loading = any(mid == model_id for mid, _ in self._loading)
            if loading:
                self._dropped_while_loading.add(model_id)
        self._update_gauges()
        return entry is not None or loading

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.total_bytes = 0
        self._update_gauges()

    def _update_gauges(self) -> None:
        metrics.CACHE_BYTES.set(self.total_bytes)
        metrics.CACHE_MODELS.set(len(self._entries))
