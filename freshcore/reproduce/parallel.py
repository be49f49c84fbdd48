"""Run a plan in several processes that share one output directory.

Every task is one run. A table cell (a `Group`) first contributes its grid on the tuning seed;
when the last of those runs is back, this process chooses the point (validation only, as
`run_groups` does) and hands out the refinements of that choice of the protocol's next stage
that has any, choosing again as each stage is back; then, if the protocol confirms, the
shortlist's runs on the confirm seeds, choosing once more when they are back; then it hands out
the cell's other seeds.
Single runs (ablations) are tasks of their own. Run files are keyed and written atomically and
`RunStore.put_selection` takes a file lock, so processes never lose each other's results. On one
GPU, several small trainings side by side keep it busier than one, and on a CPU each worker takes
one core.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import multiprocessing
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Container, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from freshcore.reproduce.plan import Group, Protocol, RunSpec
from freshcore.reproduce.runner import (
    DataCache,
    Reporter,
    RunStore,
    TeacherMissing,
    confirm,
    confirm_specs,
    dense_cell,
    dense_choice,
    run_one,
    select,
    stage_points,
)

CONFIRM = -2  # the ``point`` of a queued confirm run (grid points count from 0, seeds are -1)
_DATA: DataCache | None = None  # one per worker process: each data set is parsed once
_PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>


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


def _init_worker(threads: int, parent: int) -> None:
    import torch

    global _DATA
    if sys.platform.startswith("linux"):  # SIGTERM when the command dies: no orphaned training
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)
    torch.set_num_threads(threads)
    _DATA = DataCache()


def _trains(spec: RunSpec, store: RunStore) -> set[str]:
    """The runs a task may train: its own, and its teacher's when that is not done yet."""
    teacher = spec.teacher_spec()
    if teacher is None or store.run_path(teacher).exists():
        return {spec.key()}
    return {spec.key(), teacher.key()}


def _waits(spec: RunSpec, store: RunStore, busy: set[str], queued: Container[str]) -> bool:
    """Whether a run must wait: a worker may be training it or its unfinished teacher
    (``busy``), or that teacher is queued as a run of its own. Two processes would otherwise
    train one teacher side by side, twice the work for one record."""
    trains = _trains(spec, store)
    return bool(trains & busy) or any(key in queued for key in trains - {spec.key()})


def _run_task(spec: dict[str, Any], out: str, device: str, cuda_graph: bool) -> dict[str, Any]:
    """One run in a worker: its record (a skipped run's too)."""
    assert _DATA is not None, "worker not initialised"
    store, reporter = RunStore(out), _LineReporter()
    return run_one(RunSpec.from_dict(spec), store, _DATA, reporter, device, cuda_graph)


def run_parallel(
    protocol: Protocol,
    out: Path | str,
    workers: int,
    groups: Iterable[Group] = (),
    seeds: list[int] | None = None,
    specs: Iterable[RunSpec] = (),
    threads: int = 1,
    advance: Callable[[int, bool], None] | None = None,
) -> list[tuple[RunSpec, BaseException]]:
    """Run ``groups`` (each tuned, then its other ``seeds``) and single ``specs`` on ``workers``
    processes of ``threads`` torch threads each, in the order given: a free worker takes the
    waiting run of the earliest group (its grid, second stage or seeds), then the ``specs``, so
    the data set named first is finished first, as `run_groups` does. ``advance(1, skipped)`` is
    called as each run finishes (``skipped``: it had finished before). Returns the failures (a
    group with a failed grid run is not chosen, so its other seeds wait for the next
    invocation, as with `run_groups`)."""
    store, groups = RunStore(out), list(groups)  # the directories exist before workers race
    extra = protocol.seeds_after(seeds or [protocol.tune_seed])
    failures: list[tuple[RunSpec, BaseException]] = []
    # per group: its grid points and the records of those back so far (None: failed)
    grids: dict[str, tuple[list[dict[str, Any]], dict[int, dict[str, Any] | None]]] = {}
    stage_of: dict[str, int] = {}  # group name -> its next stage after the grid to hand out
    # group name -> its candidates and how many of its confirm runs are still out
    confirming: dict[str, tuple[list[tuple[dict[str, Any], dict[str, Any]]], int]] = {}
    finals: dict[str, dict[str, Any]] = {}  # group name -> its final choice, as they come
    # data set -> (group, first choice) whose later stages distil and wait for the dense cell
    waiting: dict[str, list[tuple[Group, dict[str, Any]]]] = {}
    tunes_dense = {g.dataset for g in groups if g.method == "dense"}
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    # the pool gets a run only when a worker is free, so a later group's runs never queue in
    # front of an earlier group's second stage or seeds: (rank, order, spec, group, point)
    rank = {group.name: i for i, group in enumerate(groups)}
    queue: list[tuple[int, int, RunSpec, Group | None, int]] = []
    queued: Counter[str] = Counter()  # the keys in ``queue``, kept as runs come and go
    order = itertools.count()
    with ProcessPoolExecutor(workers, context, _init_worker, (threads, os.getpid())) as pool:
        # future -> (spec, group, point, whether the run had finished before this invocation)
        pending: dict[Future[dict[str, Any]], tuple[RunSpec, Group | None, int, bool]] = {}

        def submit(
            spec: RunSpec, group: Group | None = None, point: int = -1, of: str = ""
        ) -> None:
            """Queue a run: a grid point of ``group``, a confirm run of it (``point`` is
            CONFIRM), or (``point`` < 0 otherwise) a seed of cell ``of`` or a single spec."""
            place = rank.get(group.name if group else of, len(groups))
            heapq.heappush(queue, (place, next(order), spec, group, point))
            queued[spec.key()] += 1

        def feed() -> None:
            busy = set().union(*(_trains(spec, store) for spec, *_ in pending.values()))
            held: list[tuple[int, int, RunSpec, Group | None, int]] = []  # waiting for a teacher
            while queue and len(pending) < workers:
                entry = heapq.heappop(queue)
                _, _, spec, group, point = entry
                if _waits(spec, store, busy, queued):
                    held.append(entry)
                    continue
                busy |= _trains(spec, store)
                queued[spec.key()] -= 1
                if not queued[spec.key()]:
                    del queued[spec.key()]
                try:
                    future = pool.submit(
                        _run_task,
                        spec.to_dict(),
                        str(store.root),
                        protocol.device,
                        protocol.cuda_graph,
                    )
                except BrokenProcessPool as exc:  # a worker died: the rest waits for next time
                    failures.append((spec, exc))
                    continue
                pending[future] = (spec, group, point, store.run_path(spec).exists())
            for entry in held:
                heapq.heappush(queue, entry)

        def teacher(group: Group) -> dict[str, Any] | None:
            if group.dataset in tunes_dense:
                return finals.get(dense_cell(group.dataset))
            return dense_choice(store, group.dataset)

        def next_stage(group: Group) -> bool:
            """Hand out the points of a group's next stage that has any, on its candidates
            so far (`stage_points`); False when no stage is left (its choice is final)."""
            points = grids[group.name][0]
            dense = teacher(group) if protocol.needs_teacher(group) else None
            while stage_of[group.name] < len(protocol.stages):
                stage = stage_of[group.name]
                stage_of[group.name] += 1
                more = stage_points(group, protocol, candidates_of(group), dense, stage)
                for refinement in more:
                    points.append(refinement)
                    spec = group.point_spec(protocol.tune_seed, protocol.base, refinement)
                    submit(spec, group, len(points) - 1)
                if more:
                    return True
            return False

        def candidates_of(group: Group) -> list[tuple[dict[str, Any], dict[str, Any]]]:
            """A group's tuning-seed candidates, every stage's, as they came back."""
            points, back = grids[group.name]
            return [(points[i], back[i]) for i in range(len(points))]  # type: ignore[misc]

        def check(group: Group, candidates: list[tuple[dict[str, Any], dict[str, Any]]]) -> bool:
            """Hand out the confirm runs of a group whose stages are done; False when the
            protocol does not confirm."""
            if not protocol.confirms:
                return False
            specs = confirm_specs(group, protocol, candidates)
            if not specs:  # every candidate diverged: recorded as such, the choice stands
                confirm(group, protocol, candidates, store)
                return False
            confirming[group.name] = (candidates, len(specs))
            for spec in specs:
                submit(spec, group, CONFIRM)
            return True

        def finish(group: Group, chosen: dict[str, Any]) -> None:
            """A group's choice is final: its other seeds, and the later stages that waited
            for it as their teacher."""
            finals[group.name] = chosen
            for seed in extra:
                submit(group.point_spec(seed, protocol.base, chosen), of=group.name)
            if group.method == "dense":
                for other, first in waiting.pop(group.dataset, []):
                    if not next_stage(other) and not check(other, candidates_of(other)):
                        finish(other, first)

        for group in groups:
            points = protocol.points(group.method)
            grids[group.name] = (points, {})
            for i, point in enumerate(points):
                submit(group.point_spec(protocol.tune_seed, protocol.base, point), group, i)
        for spec in specs:
            submit(spec)
        feed()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                spec, group, point, skipped = pending.pop(future)
                try:
                    record: dict[str, Any] | None = future.result()
                except BrokenProcessPool as exc:  # a worker died (killed, out of memory)
                    failures.append((spec, exc))
                    record = None
                except Exception as exc:  # reported, not fatal: retried the next time
                    failures.append((spec, TaskFailed(repr(exc))))
                    print(f"{spec.key()}: FAILED {exc!r}", flush=True)
                    record = None
                if advance is not None:
                    advance(1, skipped)
                if group is not None and point == CONFIRM:
                    candidates, out = confirming[group.name]
                    confirming[group.name] = (candidates, out - 1)
                    if out == 1:  # the last is back: choose, unless a failed run is missing
                        final = confirm(group, protocol, candidates, store)
                        if final is not None:
                            finish(group, final)
                    continue
                if group is None or point < 0:
                    continue
                points, back = grids[group.name]
                back[point] = record
                if len(back) < len(points) or any(r is None for r in back.values()):
                    continue
                candidates = candidates_of(group)
                chosen = select(group, protocol, candidates, store)
                if group.name not in stage_of:  # the grid is back: the stages after it, if any
                    stage_of[group.name] = 0
                    if protocol.needs_teacher(group) and teacher(group) is None:
                        if group.dataset in tunes_dense:  # dense is still tuning: wait for it
                            waiting.setdefault(group.dataset, []).append((group, chosen))
                        else:
                            error = TeacherMissing(group.name, dense_cell(group.dataset))
                            failures.append((spec, error))
                        continue
                if next_stage(group) or check(group, candidates):
                    continue
                finish(group, chosen)
            feed()
    for pending_groups in waiting.values():  # their dense cell failed: retried the next time
        for group, first in pending_groups:
            spec = group.point_spec(protocol.tune_seed, protocol.base, first)
            failures.append((spec, TeacherMissing(group.name, dense_cell(group.dataset))))
    return failures
