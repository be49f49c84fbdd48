"""Run a plan in several processes that share one output directory.

A table cell (a `Group`: its grid on the tuning seed, then its other seeds) or a single run
(an ablation) is one task; worker processes take tasks from a pool. Run files are keyed and
written atomically and `RunStore.put_selection` takes a file lock, so workers never lose each
other's results. On one GPU, several small trainings side by side keep it busier than one, and
on a CPU each worker takes one core.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from freshcore.reproduce.plan import Group, Protocol, RunSpec
from freshcore.reproduce.runner import DataCache, Reporter, RunStore, run_groups, run_one

_DATA: DataCache | None = None  # one per worker process: each data set is parsed once


class TaskFailed(RuntimeError):
    """A run that raised in a worker, carried back as text (exceptions may not pickle)."""


class _LineReporter(Reporter):
    """One line per finished run, printed by the worker (whole lines interleave cleanly)."""

    def end_run(self, spec: RunSpec, record: dict[str, Any] | None, skipped: bool) -> None:
        if skipped or record is None:
            return
        r = record["result"]
        what = "diverged" if r.get("diverged") else f"test error {100 * r['test_error']:.2f}%"
        print(f"{spec.key()}: {what} ({r['seconds']:.0f} s)", flush=True)

    def failed(self, spec: RunSpec, error: BaseException) -> None:
        print(f"{spec.key()}: FAILED {error!r}", flush=True)


def _init_worker(threads: int) -> None:
    import torch

    global _DATA
    torch.set_num_threads(threads)
    _DATA = DataCache()


def _run_task(
    kind: str, item: dict[str, Any], protocol: dict[str, Any], seeds: list[int], out: str
) -> tuple[int, list[tuple[dict[str, Any], str]]]:
    """One group or one spec in a worker: (runs it accounts for, failures as (spec, error))."""
    assert _DATA is not None, "worker not initialised"
    store, reporter = RunStore(out), _LineReporter()
    if kind == "group":
        group, proto = Group(**item), Protocol(**protocol)
        failures = run_groups([group], proto, seeds, store, _DATA, reporter)
        runs = len(proto.points(group.method)) + len([s for s in seeds if s != proto.tune_seed])
        return runs, [(s.to_dict(), repr(e)) for s, e in failures]
    spec = RunSpec.from_dict(item)
    try:
        run_one(spec, store, _DATA, reporter, protocol["device"])
    except Exception as exc:  # reported, not fatal: retried the next time the command runs
        reporter.failed(spec, exc)
        return 1, [(spec.to_dict(), repr(exc))]
    return 1, []


def run_parallel(
    protocol: Protocol,
    out: Path | str,
    workers: int,
    groups: Iterable[Group] = (),
    seeds: list[int] | None = None,
    specs: Iterable[RunSpec] = (),
    threads: int = 1,
    advance: Callable[[int], None] | None = None,
) -> list[tuple[RunSpec, BaseException]]:
    """Run ``groups`` (each tuned, then its other ``seeds``) and single ``specs`` on ``workers``
    processes of ``threads`` torch threads each, in the order given. ``advance(n)`` is called as
    tasks finish with the number of runs each accounts for. Returns the failures."""
    from dataclasses import asdict

    tasks: list[tuple[str, dict[str, Any]]] = [("group", asdict(g)) for g in groups]
    tasks += [("spec", s.to_dict()) for s in specs]
    failures: list[tuple[RunSpec, BaseException]] = []
    if not tasks:
        return failures
    RunStore(out)  # make the directories once, before the workers race to
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    with ProcessPoolExecutor(workers, context, _init_worker, (threads,)) as pool:
        futures = {
            pool.submit(_run_task, kind, item, protocol.to_dict(), seeds or [0], str(out)): item
            for kind, item in tasks
        }
        for future in as_completed(futures):
            try:
                runs, failed = future.result()
            except BrokenProcessPool as exc:  # a worker died (killed, out of memory)
                failures.append((_spec_of(futures[future]), exc))
                continue
            failures += [(RunSpec.from_dict(s), TaskFailed(e)) for s, e in failed]
            if advance is not None:
                advance(runs)
    return failures


def _spec_of(item: dict[str, Any]) -> RunSpec:
    """The spec a task stands for in a failure report (a group: its tuning-seed run)."""
    if "seed" in item:
        return RunSpec.from_dict(item)
    return Group(**item).spec(0, {})
