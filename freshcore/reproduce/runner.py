"""Train and test the runs of a plan, one JSON file per finished run, skipping what is done.

Layout of an output directory:
    runs/<key>.json         one finished run: its spec, test error, history, sizes, machine
    models/<key>.safetensors  the trained network (dense ones teach and initialise ablations)
    checkpoints/<key>.ckpt  the last finished epoch of an interrupted run (resumed, then removed)
    networks/<fp>.json      the key of a finished run, by `network_fingerprint`: a run whose
                            network and training are a finished run's takes its result
    selection.json          the hyper-parameters chosen on the validation split, per table cell
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from freshcore.reproduce.plan import (
    DENSE_FACTOR,
    Group,
    Protocol,
    RunSpec,
    factor_value,
)


class Reporter:
    """Hooks for progress display; the default does nothing."""

    def begin(self, total: int, finished: int = 0) -> None:
        """``total`` runs planned, ``finished`` of them already in the store (`finished_runs`)."""

    def start_run(self, spec: RunSpec, epochs: int) -> None: ...

    def epoch(self, spec: RunSpec, metrics: Any) -> None: ...

    def end_run(self, spec: RunSpec, record: dict[str, Any] | None, skipped: bool) -> None: ...

    def failed(self, spec: RunSpec, error: BaseException) -> None: ...

    def advance(self, runs: int, skipped: bool = False) -> None:
        """``runs`` runs finished in other processes (`run_parallel`); ``skipped``: they had
        finished before this invocation."""


def machine_info(device: str = "auto") -> dict[str, Any]:
    """CPU and GPU names, torch version, threads: what a reader needs to weigh a timing."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    if device != "cpu" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def code_version() -> dict[str, Any]:
    """The git commit of the source tree the runs come from (None outside a checkout)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "freshcore"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "freshcore_modified": None}
    return {"git_commit": commit, "freshcore_modified": bool(dirty)}


def _write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half; the temporary name is the process's
    own, so two processes writing one path (a teacher trained twice) never collide."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


CODE_VERSION = code_version()  # taken at import: the code this process runs


class RunStore:
    """The output directory: finished runs, trained models, checkpoints, the selection."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        for sub in ("runs", "models", "checkpoints", "networks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def run_path(self, spec: RunSpec) -> Path:
        return self._run_file(spec.key())

    def _run_file(self, key: str) -> Path:
        return self.root / "runs" / f"{key}.json"

    def model_path(self, spec: RunSpec) -> Path:
        return self.root / "models" / f"{spec.key()}.safetensors"

    def checkpoint_path(self, spec: RunSpec) -> Path:
        return self.root / "checkpoints" / f"{spec.key()}.ckpt"

    def get(self, spec: RunSpec) -> dict[str, Any] | None:
        return self.get_key(spec.key())

    def get_key(self, key: str) -> dict[str, Any] | None:
        """A finished run by its key (a selection's candidates name their runs by key)."""
        path = self._run_file(key)
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, spec: RunSpec, record: dict[str, Any]) -> None:
        _write_atomic(self.run_path(spec), json.dumps(record, indent=1).encode())

    def twin(self, fingerprint: str) -> dict[str, Any] | None:
        """The finished run that trained the network with this `network_fingerprint`, if any."""
        path = self.root / "networks" / f"{fingerprint}.json"
        return self.get_key(json.loads(path.read_text())["key"]) if path.exists() else None

    def put_twin(self, fingerprint: str, key: str) -> None:
        _write_atomic(
            self.root / "networks" / f"{fingerprint}.json", json.dumps({"key": key}).encode()
        )

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "runs").glob("*.json"))]

    def selection(self) -> dict[str, Any]:
        path = self.root / "selection.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def put_selection(self, name: str, entry: dict[str, Any]) -> None:
        """Read, change and write under a file lock: parallel workers share one selection."""
        import fcntl

        with open(self.root / "selection.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            selection = self.selection()
            selection[name] = entry
            _write_atomic(self.root / "selection.json", json.dumps(selection, indent=1).encode())


class DataCache:
    """Loads each data set once per process (the MNIST files take seconds to parse)."""

    def __init__(self, loader: Callable[[str], Any] | None = None) -> None:
        if loader is None:
            from freshcore.data import load

            loader = load
        self._loader = loader
        self._cache: dict[str, Any] = {}

    def __call__(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = self._loader(name)
        return self._cache[name]


def _build(spec: RunSpec, dataset: Any, teacher: torch.nn.Module | None) -> torch.nn.Module:
    import freshcore

    compression = factor_value(spec.factor)
    if spec.init == "project":
        if teacher is None:
            raise ValueError(f"run {spec.key()}: init 'project' needs a teacher")
        return freshcore.compress_dense(teacher, spec.method, compression, spec.seed, **spec.model)
    if spec.init != "scratch":
        raise ValueError(f"run {spec.key()}: unknown init {spec.init!r}")
    return freshcore.build_model(
        spec.arch,
        method=spec.method,
        compression=compression,
        seed=spec.seed,
        input_shape=tuple(dataset.info.input_shape),
        num_classes=dataset.info.num_classes,
        **spec.model,
    )


def network_fingerprint(spec: RunSpec, model: torch.nn.Module) -> str:
    """What decides a run's result once its network is built: every field of its spec but the
    model options, the network's printed structure and every initial tensor (hash indices
    included). Options that differ in name only, a first-layer rate capped at 1 either way say,
    give one fingerprint, so the second such run need not train."""
    digest = hashlib.sha256()
    rest = {k: v for k, v in spec.to_dict().items() if k != "model"}
    digest.update(json.dumps(rest, sort_keys=True, default=str).encode())
    digest.update(str(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _copy_twin(spec: RunSpec, twin: dict[str, Any], store: RunStore) -> dict[str, Any]:
    """A run's record as its twin's result (`network_fingerprint`), saying so; the twin's
    model file is copied too, since a distilling run may need it."""
    record = {**twin, "key": spec.key(), "spec": spec.to_dict(), "same_network_as": twin["key"]}
    model = store.root / "models" / f"{twin['key']}.safetensors"
    if model.exists():
        _write_atomic(store.model_path(spec), model.read_bytes())
    store.put(spec, record)
    return record


def run_one(
    spec: RunSpec,
    store: RunStore,
    data: DataCache,
    reporter: Reporter | None = None,
    device: str = "auto",
    cuda_graph: bool = False,
) -> dict[str, Any]:
    """Train and test one network, or return its record if it already finished, or take the
    result of a finished run that trained the very same network (`network_fingerprint`).
    ``cuda_graph`` replays its steps as a CUDA graph where it trains on a GPU (the record's
    machine says)."""
    import freshcore
    from freshcore.train import resolve_device

    reporter = reporter or Reporter()
    done = store.get(spec)
    if done is not None:
        reporter.end_run(spec, done, skipped=True)
        return done
    teacher = None
    teacher_spec = spec.teacher_spec()
    if teacher_spec is not None:
        run_one(teacher_spec, store, data, Reporter(), device, cuda_graph)  # not a plan run
        path = store.model_path(teacher_spec)
        if not path.exists():  # its record was copied here without the model
            raise FileNotFoundError(
                f"run {spec.key()} needs its teacher's trained model {path}, which is missing "
                f"though {store.run_path(teacher_spec)} is there: copy the model from the "
                "machine that trained it, or delete that record to train the teacher again"
            )
        teacher = freshcore.load(path)
    dataset = data(spec.dataset)
    config = freshcore.TrainConfig.from_dict({**spec.train, "seed": spec.seed, "device": device})
    device = str(resolve_device(device))
    config = replace(config, cuda_graph=cuda_graph and device == "cuda")
    machine = {**machine_info(device), "cuda_graph": config.cuda_graph}
    model = _build(spec, dataset, teacher)
    fingerprint = network_fingerprint(spec, model)
    twin = store.twin(fingerprint)
    if twin is not None and twin["key"] != spec.key():
        record = _copy_twin(spec, twin, store)
        reporter.end_run(spec, record, skipped=True)
        return record
    model.meta.update({"dataset": spec.dataset, "run_key": spec.key()})

    ckpt_path = store.checkpoint_path(spec)
    resume = ckpt_path.read_bytes() if ckpt_path.exists() else None

    def on_epoch(metrics: Any, checkpoint: Callable[[], bytes]) -> None:
        _write_atomic(ckpt_path, checkpoint())
        reporter.epoch(spec, metrics)

    reporter.start_run(spec, config.epochs)
    started = time.perf_counter()
    # TrainConfig's distill_alpha has a default: distil only when the spec asks for it
    use_teacher = teacher if spec.train.get("distill_alpha", 0) > 0 else None
    try:
        result = freshcore.train(
            model, dataset, config, on_epoch, teacher=use_teacher, resume=resume
        )
    except freshcore.TrainingError as exc:  # a diverged grid point is a result, not a crash
        record = {
            "key": spec.key(),
            "spec": spec.to_dict(),
            "result": {
                "diverged": True,
                "error": str(exc),
                "test_error": None,
                "test_error_fp16": None,
                "val_error": None,
                "seconds": time.perf_counter() - started,
            },
            "machine": machine,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        store.put(spec, record)
        store.put_twin(fingerprint, spec.key())
        ckpt_path.unlink(missing_ok=True)
        reporter.end_run(spec, record, skipped=False)
        return record
    seconds = time.perf_counter() - started

    half = freshcore.from_bytes(freshcore.to_bytes(model, half=True))
    history = [_metrics_dict(m) for m in result.history]
    best = max(history, key=lambda m: m["val_accuracy"]) if history else None
    record = {
        "key": spec.key(),
        "spec": spec.to_dict(),
        "result": {
            "diverged": False,
            "test_error": 1.0 - result.test_accuracy,
            "test_error_fp16": 1.0 - _accuracy(half, dataset, device),
            "val_error": 1.0 - best["val_accuracy"] if best else None,
            "best_epoch": result.best_epoch,
            "epochs_run": len(history),
            "stopped": result.stopped,
            "seconds": seconds,
            "train_seconds": result.seconds,
            "bytes_fp32": len(freshcore.to_bytes(model)),
            "bytes_fp16": len(freshcore.to_bytes(model, half=True)),
        },
        "size": freshcore.size_report(model).to_dict(),
        "history": history,
        "machine": machine,
        "code": CODE_VERSION,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write_atomic(store.model_path(spec), freshcore.to_bytes(model))  # a student may be reading
    store.put(spec, record)
    store.put_twin(fingerprint, spec.key())
    ckpt_path.unlink(missing_ok=True)
    reporter.end_run(spec, record, skipped=False)
    return record


def _accuracy(model: torch.nn.Module, dataset: Any, device: str) -> float:
    """Test accuracy of a model outside `train` (the float16 round trip), on the run's device."""
    from freshcore.train import evaluate

    model.to(device)
    return evaluate(model, dataset.x_test, dataset.y_test)[1]


def _metrics_dict(metrics: Any) -> dict[str, Any]:
    if hasattr(metrics, "to_dict"):
        return metrics.to_dict()
    from dataclasses import asdict

    return asdict(metrics)


def ranked(candidates: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[int]:
    """The candidates' indices from the lowest validation error on the tuning seed up (ties:
    the earlier first; diverged runs left out)."""
    return sorted(
        (i for i, (_, r) in enumerate(candidates) if r["result"]["val_error"] is not None),
        key=lambda i: (candidates[i][1]["result"]["val_error"], i),
    )


def choose(candidates: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The grid point with the lowest validation error (ties: the earlier; every run diverged:
    the first); never the test."""
    order = ranked(candidates)
    return candidates[order[0] if order else 0][0]


def select(
    group: Group,
    protocol: Protocol,
    candidates: list[tuple[dict[str, Any], dict[str, Any]]],
    store: RunStore,
) -> dict[str, Any]:
    """Choose a group's point from its tuning-seed runs (validation only) and record the choice
    with every candidate's validation error in the store's selection."""
    chosen = choose(candidates)
    _record(group, protocol, candidates, store, chosen)
    return chosen


def _record(
    group: Group,
    protocol: Protocol,
    candidates: list[tuple[dict[str, Any], dict[str, Any]]],
    store: RunStore,
    chosen: dict[str, Any],
    confirmed: dict[str, Any] | None = None,
) -> None:
    """Write a group's selection entry: its choice, every candidate's validation error and,
    where the protocol confirms, the shortlist's errors on every confirm seed."""
    entry = {
        "dataset": group.dataset,
        "method": group.method,
        "factor": group.factor,
        "arch": group.arch,
        "model": group.model,
        "base": protocol.base,
        "tune_seed": protocol.tune_seed,
        "chosen": chosen,
        "candidates": [
            {"overrides": o, "key": r["key"], "val_error": r["result"]["val_error"]}
            for o, r in candidates
        ],
    }
    store.put_selection(group.name, {**entry, **(confirmed or {})})


def stage_points(
    group: Group,
    protocol: Protocol,
    candidates: list[tuple[dict[str, Any], dict[str, Any]]],
    teacher: dict[str, Any] | None = None,
    stage: int = 0,
) -> list[dict[str, Any]]:
    """The points a stage (0: the second) tries after ``candidates``: its overrides on the
    choice so far and, for a later stage, on the next best up to `Protocol.later_top`
    (`Protocol.refinements`), less any whose run is one of those bases' or another's."""
    bases = [candidates[i][0] for i in ranked(candidates)[: protocol.stage_top(stage)]]
    bases = bases or [choose(candidates)]  # every run diverged: the choice is the first

    def key(point: dict[str, Any]) -> str:
        return group.point_spec(protocol.tune_seed, protocol.base, point).key()

    seen = {key(base) for base in bases}
    out: list[dict[str, Any]] = []
    for base in bases:
        for point in protocol.refinements(group, base, teacher, stage):
            if (point_key := key(point)) not in seen:
                seen.add(point_key)
                out.append(point)
    return out


def shortlist(
    protocol: Protocol, candidates: list[tuple[dict[str, Any], dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The points a confirming protocol trains on more seeds: the `Protocol.confirm` with the
    lowest validation error on the tuning seed (ties: the earlier), diverged runs left out,
    the best of each `Protocol.kind` first, then each kind's second best, and so on."""
    order = ranked(candidates)
    seen: Counter[str] = Counter()
    depth = {}  # how many better candidates of the same kind each one has
    for i in order:
        kind = protocol.kind(candidates[i][0])
        depth[i] = seen[kind]
        seen[kind] += 1
    order.sort(key=depth.__getitem__)  # stable: validation order within a depth
    return [candidates[i][0] for i in order[: protocol.confirm]]


def confirm_specs(
    group: Group, protocol: Protocol, candidates: list[tuple[dict[str, Any], dict[str, Any]]]
) -> list[RunSpec]:
    """The runs of the confirm check: each shortlisted point on each confirm seed."""
    return [
        group.point_spec(seed, protocol.base, point)
        for point in shortlist(protocol, candidates)
        for seed in protocol.confirm_extra
    ]


def confirm(
    group: Group,
    protocol: Protocol,
    candidates: list[tuple[dict[str, Any], dict[str, Any]]],
    store: RunStore,
) -> dict[str, Any] | None:
    """Choose among the shortlist by the mean validation error over the tuning seed and the
    confirm seeds (ties: the better on the tuning seed; a point with a diverged run is out)
    and record it; None while one of its runs is missing (failed: retried next time)."""
    rows = []
    for point in shortlist(protocol, candidates):
        records = [next(r for p, r in candidates if p == point)]
        for seed in protocol.confirm_extra:
            record = store.get(group.point_spec(seed, protocol.base, point))
            if record is None:
                return None
            records.append(record)
        vals = [r["result"]["val_error"] for r in records]
        mean = None if None in vals else sum(vals) / len(vals)
        rows.append(
            {
                "overrides": point,
                "keys": [r["key"] for r in records],
                "val_errors": vals,
                "mean_val_error": mean,
            }
        )
    confirmed = {"confirm_seeds": [protocol.tune_seed, *protocol.confirm_extra], "confirmed": rows}
    if rows:  # min keeps the earlier of equals
        mean = [math.inf if r["mean_val_error"] is None else r["mean_val_error"] for r in rows]
        best = rows[mean.index(min(mean))]
        chosen = best["overrides"]
    else:  # every candidate diverged: nothing to confirm, the tuning seed's choice stands
        chosen = choose(candidates)
    _record(group, protocol, candidates, store, chosen, confirmed)
    return chosen


def finished_runs(
    groups: Iterable[Group], protocol: Protocol, seeds: list[int], store: RunStore
) -> int:
    """How many of `Protocol.runs` are in the store already: a resumed table skips them, so a
    time estimate must leave them out. Exact for the tuning-seed grid; the stages after it are
    counted from the group's recorded candidates. The confirm check's runs and the other seeds
    follow the recorded choice, so they count only where no stage or check waits
    (`stage_pending`): a protocol that tries more (a larger ``later_top``, say) may shortlist
    and choose anew, and those records would then stand in for runs still to train, the
    estimate reaching nothing left while runs remain."""
    selection = store.selection()
    extra_seeds = [s for s in seeds if s != protocol.tune_seed]
    finished = 0
    for group in groups:
        entry = selection.get(group.name, {})
        grid = protocol.points(group.method)
        second = [c["overrides"] for c in entry.get("candidates", [])]
        second = [p for p in second if p not in grid][: protocol.refinement_count(group)]
        runs = [group.point_spec(protocol.tune_seed, protocol.base, p) for p in grid + second]
        if entry and not stage_pending(store, protocol, entry):
            if protocol.confirms:
                runs += [
                    group.point_spec(s, protocol.base, c["overrides"])
                    for c in entry.get("confirmed", [])
                    for s in protocol.confirm_extra
                ]
            runs += [group.point_spec(s, protocol.base, entry["chosen"]) for s in extra_seeds]
        keys = {spec.key(): spec for spec in runs}  # a confirm run may be a table seed's too
        finished += sum(store.run_path(spec).exists() for spec in keys.values())
    return finished


@dataclass
class CellPlan:
    """Where one table cell stands in a store: what `reproduce` would still train for it."""

    name: str
    state: str  # "waiting" (nothing trained), "tuning" (a stage or the check waits), "chosen"
    # (seeds left), "done"
    finished: int  # of the cell's planned runs, those in the store (`finished_runs`)
    left: int  # runs still to train, at most: a later stage may pick runs the store holds
    run_seconds: float | None  # a run of this cell on this machine: its records' median


def plan_cells(
    groups: Iterable[Group],
    protocol: Protocol,
    seeds: list[int],
    store: RunStore,
    machine: dict[str, Any],
) -> list[CellPlan]:
    """Each group's `CellPlan`. A run's time comes from the store's records made on a machine
    like ``machine`` (same CPU and GPU): the cell's own, else its data set's on the same
    network, else none (a store that has seen neither cannot tell)."""
    here = (machine.get("cpu"), machine.get("gpu"))
    cell_seconds: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for record in store.records():
        if (record["machine"].get("cpu"), record["machine"].get("gpu")) != here:
            continue
        spec, seconds = record["spec"], record["result"].get("seconds")
        if seconds:  # a record that took a twin's result trained nothing
            cell_seconds[(spec["dataset"], spec["arch"], spec["method"], spec["factor"])].append(
                seconds
            )
            cell_seconds[(spec["dataset"], spec["arch"])].append(seconds)
    selection = store.selection()
    out = []
    for group in groups:
        finished = finished_runs([group], protocol, seeds, store)
        left = max(protocol.runs([group], seeds) - finished, 0)
        entry = selection.get(group.name)
        if entry is None:
            state = "tuning" if finished else "waiting"
        elif stage_pending(store, protocol, entry):
            state = "tuning"
        elif all(
            store.run_path(group.point_spec(s, protocol.base, entry["chosen"])).exists()
            for s in seeds
        ):
            state, left = "done", 0
        else:
            state = "chosen"
        times = cell_seconds.get(
            (group.dataset, group.arch, group.method, group.factor)
        ) or cell_seconds.get((group.dataset, group.arch))
        seconds = statistics.median(times) if times else None
        out.append(CellPlan(group.name, state, finished, left, seconds))
    return out


def run_groups(
    groups: Iterable[Group],
    protocol: Protocol,
    seeds: list[int],
    store: RunStore,
    data: DataCache,
    reporter: Reporter | None = None,
) -> list[tuple[RunSpec, BaseException]]:
    """Tune each group on the tuning seed (its grid, then each stage's refinements of the
    choice so far, then the confirm check on more seeds if the protocol has one), then run the
    other seeds with the chosen setting.

    Data set by data set: first every group's grid on the tuning seed (a one-seed table appears
    early), then the remaining seeds. A failed run is reported and skipped, not fatal: it is
    retried the next time the command runs. Returns the failures.
    """
    reporter = reporter or Reporter()
    groups = list(groups)
    extra_seeds = protocol.seeds_after(seeds)
    reporter.begin(protocol.runs(groups, seeds), finished_runs(groups, protocol, seeds, store))
    failures: list[tuple[RunSpec, BaseException]] = []

    def attempt(spec: RunSpec) -> dict[str, Any] | None:
        try:
            return run_one(spec, store, data, reporter, protocol.device, protocol.cuda_graph)
        except Exception as exc:  # one broken method must not stop the table
            failures.append((spec, exc))
            reporter.failed(spec, exc)
            return None

    for dataset in dict.fromkeys(g.dataset for g in groups):
        chosen: dict[str, dict[str, Any]] = {}
        # dense first: a second stage that distils needs the dense cell's final choice
        in_dataset = sorted(
            (g for g in groups if g.dataset == dataset), key=lambda g: g.method != "dense"
        )
        has_dense = any(g.method == "dense" for g in in_dataset)
        for group in in_dataset:
            candidates = []
            points = protocol.points(group.method)
            for point in points:
                record = attempt(group.point_spec(protocol.tune_seed, protocol.base, point))
                if record is not None:
                    candidates.append((point, record))
            if len(candidates) < len(points):
                continue  # not chosen until its whole grid has run
            first = select(group, protocol, candidates, store)
            teacher = None
            if protocol.needs_teacher(group):
                dense = dense_cell(dataset)
                teacher = chosen.get(dense) if has_dense else dense_choice(store, dataset)
                if teacher is None:
                    spec = group.point_spec(protocol.tune_seed, protocol.base, first)
                    failures.append((spec, TeacherMissing(group.name, dense)))
                    reporter.failed(spec, failures[-1][1])
                    continue
            final: dict[str, Any] | None = first
            for stage in range(len(protocol.stages)):
                refinements = stage_points(group, protocol, candidates, teacher, stage)
                tried = len(candidates)
                for point in refinements:
                    record = attempt(group.point_spec(protocol.tune_seed, protocol.base, point))
                    if record is not None:
                        candidates.append((point, record))
                if len(candidates) < tried + len(refinements):
                    final = None  # the choice so far stays recorded until this stage is done
                    break
                if refinements:
                    final = select(group, protocol, candidates, store)
            if final is not None and protocol.confirms:
                for spec in confirm_specs(group, protocol, candidates):
                    attempt(spec)
                final = confirm(group, protocol, candidates, store)
            if final is not None:
                chosen[group.name] = final
        for group in (g for g in groups if g.dataset == dataset):
            if group.name not in chosen:
                continue
            for seed in extra_seeds:
                attempt(group.point_spec(seed, protocol.base, chosen[group.name]))
    return failures


def final_specs(store: RunStore, seeds: list[int]) -> dict[str, list[RunSpec]]:
    """For each chosen table cell, the specs of its seeds with the chosen hyper-parameters."""
    out: dict[str, list[RunSpec]] = {}
    for name, entry in store.selection().items():
        group = Group(entry["dataset"], entry["method"], entry["factor"], entry["arch"])
        group.model = entry.get("model", {})
        out[name] = [group.point_spec(seed, entry["base"], entry["chosen"]) for seed in seeds]
    return out


def dense_cell(dataset: str) -> str:
    """The selection's name of a data set's dense cell."""
    return f"{dataset}/dense/{DENSE_FACTOR}"


def dense_choice(store: RunStore, dataset: str) -> dict[str, Any] | None:
    """The dense cell's chosen point as the store records it, if tuned (the teacher of a second
    stage that distils, when this invocation does not tune dense itself)."""
    entry = store.selection().get(dense_cell(dataset))
    return entry["chosen"] if entry else None


class TeacherMissing(RuntimeError):
    """A second stage that distils found no chosen dense cell for its data set."""

    def __init__(self, group: str, dense: str) -> None:
        super().__init__(
            f"{group}: its second stage distils from {dense}, which is not chosen yet "
            "(tune dense first: add it to --methods, or let its runs finish)"
        )


def stage_pending(store: RunStore, protocol: Protocol, entry: dict[str, Any]) -> bool:
    """Whether a chosen cell (its selection ``entry``) still waits for runs of one of
    ``protocol``'s stages after the grid, or for its confirm check. Until they are back its
    recorded choice is an earlier stage's, which a report must not present as final; a
    protocol without such stages never leaves a cell waiting. Each stage's points are
    recomputed with `stage_points` from the recorded validation errors, as the runner makes
    them."""
    group = Group(
        entry["dataset"], entry["method"], entry["factor"], entry["arch"], entry.get("model", {})
    )
    if not protocol.refinement_count(group) and not protocol.confirms:
        return False
    tried = {
        c["key"]: (c["overrides"], {"result": {"val_error": c["val_error"]}})
        for c in entry["candidates"]
    }
    grid = protocol.points(group.method)
    keys = [group.point_spec(protocol.tune_seed, protocol.base, p).key() for p in grid]
    if any(key not in tried for key in keys):
        return True
    teacher = None
    if protocol.needs_teacher(group):
        teacher = dense_choice(store, group.dataset)
        if teacher is None:
            return True
    for stage in range(len(protocol.stages)):
        for point in stage_points(group, protocol, [tried[key] for key in keys], teacher, stage):
            key = group.point_spec(protocol.tune_seed, protocol.base, point).key()
            if key not in tried:
                return True
            keys.append(key)
    if not protocol.confirms:
        return False
    candidates = [tried[key] for key in keys]
    seeds = [protocol.tune_seed, *protocol.confirm_extra]
    confirmed = [c["overrides"] for c in entry.get("confirmed", [])]
    return entry.get("confirm_seeds") != seeds or confirmed != shortlist(protocol, candidates)


def dense_teacher(store: RunStore, dataset: str, seed: int) -> RunSpec | None:
    """The table's dense run for a data set and seed (chosen hyper-parameters), if tuned."""
    entry = store.selection().get(dense_cell(dataset))
    if entry is None:
        return None
    group = Group(dataset, "dense", DENSE_FACTOR, entry["arch"], entry.get("model", {}))
    return group.point_spec(seed, entry["base"], entry["chosen"])
