"""Reproduce the paper's table: every data set x method x factor x seed, resumable, plus ablations.

    from freshcore.reproduce import Options, reproduce
    summary = reproduce(Options(datasets=["mnist"], out="runs/table"))

Hyper-parameters (`plan.PROCEDURE`, stated in every report): for each (data set, method, factor)
the protocol's grid is trained on the tuning seed, the point with the lowest validation error is
kept for the other seeds; the test split is never used to choose.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from freshcore.reproduce.ablations import (
    Ablation,
    ablation_spec,
    default_ablations,
    quick_ablations,
)
from freshcore.reproduce.parallel import run_parallel
from freshcore.reproduce.plan import (
    ALL_METHODS,
    BUDGETED_METHODS,
    COMPRESSED_METHODS,
    DEFAULT_FACTORS,
    MODEL_OPTIONS,
    PROCEDURE,
    TABLE_DATASETS,
    Protocol,
    RunSpec,
    dataset_archs,
    default_protocol,
    model_options,
    quick_protocol,
    table_groups,
    unreachable,
)
from freshcore.reproduce.report import (
    ablation_rows,
    collect_cells,
    describe_machine,
    describe_override,
    describe_point,
    describe_seconds,
    headroom,
    markdown_table,
    plot_errors,
    running_time,
    selection_table,
    standings,
)
from freshcore.reproduce.runner import (
    CODE_VERSION,
    CellPlan,
    DataCache,
    Reporter,
    RunStore,
    finished_runs,
    machine_info,
    plan_cells,
    run_groups,
    run_one,
    stage_pending,
)

__all__ = [
    "ALL_METHODS",
    "BUDGETED_METHODS",
    "COMPRESSED_METHODS",
    "DEFAULT_FACTORS",
    "MODEL_OPTIONS",
    "TABLE_DATASETS",
    "Ablation",
    "CellPlan",
    "DataCache",
    "Options",
    "Protocol",
    "Reporter",
    "RunSpec",
    "RunStore",
    "ablation_plan",
    "dataset_archs",
    "default_ablations",
    "default_datasets",
    "default_protocol",
    "plan",
    "quick_options",
    "reproduce",
    "write_report",
]


@dataclass
class Options:
    """What one `freshnets reproduce` invocation runs and where it writes."""

    datasets: list[str] = field(default_factory=lambda: list(TABLE_DATASETS))
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    factors: list[str] = field(default_factory=lambda: list(DEFAULT_FACTORS))
    seeds: int = 3
    out: Path | str = Path("runs/reproduce")
    arch: str | None = None  # a preset for every data set (None: by input shape, `arch_for`)
    protocol: Protocol = field(default_factory=default_protocol)
    # build_model keywords of the table (None: the library's default, not written into keys)
    allocation: dict[str, Any] | None = None
    budget_policy: dict[str, Any] | None = None
    workers: int = 1  # processes training side by side (one torch thread each when > 1)
    table: bool = True
    ablations: bool = False
    ablation_datasets: list[str] | None = None  # default: the first data set
    ablation_factors: list[str] | None = None  # default: the table's factors
    ablation_seeds: int = 1
    ablation_variants: list[Ablation] = field(default_factory=default_ablations)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["ablation_variants"] = [a.name for a in self.ablation_variants]
        return data


def default_datasets() -> list[str]:
    """The seven 28x28 data sets, plus any available colour data set (CIFAR-10 when present)."""
    from freshcore.data import list_datasets

    extra = [
        info.name
        for info in list_datasets()
        if info.available and info.input_shape[0] == 3 and info.name not in TABLE_DATASETS
    ]
    return [*TABLE_DATASETS, *extra]


def quick_options(out: Path | str, device: str = "cpu") -> Options:
    """The CI proof: digits, one epoch on a few hundred samples, dense + freshnets, one seed."""
    return Options(
        datasets=["digits"],
        methods=["dense", "freshnets"],
        factors=["1/16"],
        seeds=1,
        out=out,
        protocol=quick_protocol(device),
        ablations=True,
        ablation_variants=quick_ablations(),
    )


def _cells(options: Options) -> list[Any]:
    """Every cell the options name, those a method cannot store included."""
    return table_groups(
        options.datasets,
        options.methods,
        options.factors,
        dataset_archs(options.datasets, options.arch),
        options.allocation,
        options.budget_policy,
    )


def _table_groups(options: Options) -> list[Any]:
    """The cells to train: all but those a method cannot store (`unreachable`, which the
    report names)."""
    groups = _cells(options)
    skipped = unreachable(groups)
    return [g for g in groups if g.name not in skipped]


def plan(options: Options) -> list[CellPlan]:
    """Where each table cell stands in the store: what `reproduce` would still train, and how
    long a run took there on this machine. Trains nothing."""
    return plan_cells(
        _table_groups(options),
        options.protocol,
        list(range(options.seeds)),
        RunStore(options.out),
        machine_info(options.protocol.device),
    )


def ablation_plan(options: Options, store: RunStore) -> list[tuple[str, str, str, RunSpec]]:
    """(variant, knob, metric, spec) for every ablation run, in the order they are run."""
    datasets = options.ablation_datasets or options.datasets[:1]
    factors = options.ablation_factors or options.factors
    archs = dataset_archs(datasets, options.arch)
    fallback = {**options.protocol.base, **options.protocol.grid[0]}
    plan = []
    for dataset in datasets:
        for factor in factors:
            for seed in range(options.ablation_seeds):
                for ablation in options.ablation_variants:
                    base_model = model_options(
                        ablation.method, options.allocation, options.budget_policy
                    )
                    spec = ablation_spec(
                        ablation, dataset, factor, seed, store, fallback, archs[dataset], base_model
                    )
                    plan.append((ablation.name, ablation.knob, ablation.metric, spec))
    return plan


def reproduce(
    options: Options,
    reporter: Reporter | None = None,
    command: str = "",
    data: DataCache | None = None,
) -> dict[str, Any]:
    """Run what is not done yet, then write the report. Returns the report's summary."""
    started = time.perf_counter()
    store = RunStore(options.out)
    data = data or DataCache()
    reporter = reporter or Reporter()
    failures: list[tuple[RunSpec, BaseException]] = []
    seeds = list(range(options.seeds))
    if options.table:
        groups = _table_groups(options)
        if options.workers > 1:
            protocol = options.protocol
            reporter.begin(
                protocol.runs(groups, seeds), finished_runs(groups, protocol, seeds, store)
            )
            failures += run_parallel(
                protocol,
                store.root,
                options.workers,
                groups,
                seeds,
                advance=reporter.advance,
            )
        else:
            failures += run_groups(groups, options.protocol, seeds, store, data, reporter)
    if options.ablations:
        plan = ablation_plan(options, store)
        unique = list({spec.key(): spec for *_, spec in plan}.values())
        reporter.begin(len(unique), sum(store.run_path(spec).exists() for spec in unique))
        if options.workers > 1:
            failures += run_parallel(
                options.protocol,
                store.root,
                options.workers,
                specs=unique,
                advance=reporter.advance,
            )
        else:
            for spec in unique:
                try:
                    protocol = options.protocol
                    run_one(spec, store, data, reporter, protocol.device, protocol.cuda_graph)
                except Exception as exc:  # one broken variant must not stop the others
                    failures.append((spec, exc))
                    reporter.failed(spec, exc)
    return write_report(options, command, time.perf_counter() - started, failures)


def _running_line(running: dict[str, Any], runs: int, run_seconds: float) -> str:
    """The store's runs on the clock: what the table cost, however many invocations built it."""
    if not runs:
        return "No finished runs yet."
    line = f"The {runs} finished runs"
    if running["first_started"]:
        line += (
            f" ran between {running['first_started']} and {running['last_finished']}, busy "
            f"{describe_seconds(running['busy_s'])} of wall time (the union of their run "
            "intervals: parallel runs count once, pauses between invocations not at all)"
        )
    line += f"; their run times add up to {describe_seconds(run_seconds)}. Ran on: " + "; ".join(
        f"{m['machine']} ({m['runs']} runs)" for m in running["machines"]
    )
    if running["runs_without_time"]:
        line += f"; {running['runs_without_time']} runs have no finish time (older records)"
    return line + "."


def _copied_line(copied: int) -> str:
    """The runs that took a twin's result (`runner.network_fingerprint`) instead of training."""
    return (
        f"{copied} more runs built the very network, with the same training, of a finished run "
        "(their options differ in name only) and took its result instead of training again."
    )


def write_report(
    options: Options,
    command: str,
    wall_s: float,
    failures: list[tuple[RunSpec, BaseException]] | None = None,
) -> dict[str, Any]:
    """results.json, results.md and errors.png in the output directory, from what is on disk."""
    store = RunStore(options.out)
    out = Path(options.out)
    cells = collect_cells(store, list(range(options.seeds)))
    for name, entry in store.selection().items():
        if name in cells and stage_pending(store, options.protocol, entry):
            cells[name]["stage_pending"] = True
    records = store.records()
    trained = [r for r in records if "same_network_as" not in r]  # a twin's copy ran no time
    machine = machine_info(options.protocol.device)
    running = running_time(trained)
    summary: dict[str, Any] = {
        "command": command,
        "machine": machine,
        "code": CODE_VERSION,
        "wall_s": wall_s,
        "run_seconds_total": sum(r["result"]["seconds"] for r in trained),
        "runs_finished": len(records),
        "runs_copied": len(records) - len(trained),
        "running": running,
        "options": options.to_dict(),
        "procedure": PROCEDURE,
        "cells": cells,
        "failures": [
            {"key": s.key(), "spec": s.to_dict(), "error": repr(e)} for s, e in failures or []
        ],
    }
    md = [
        "# FreshNets reproduction",
        "",
        f"Command: `{command}`",
        "",
        f"This invocation: {describe_machine(machine)}; wall time {describe_seconds(wall_s)}.",
        "",
        _running_line(running, len(trained), summary["run_seconds_total"]),
        "",
        *([_copied_line(summary["runs_copied"]), ""] if summary["runs_copied"] else []),
        "Network: "
        + (
            f"`{options.arch}` for every data set (--arch)."
            if options.arch
            else "by input shape, "
            + ", ".join(f"`{a}` for {d}" for d, a in dataset_archs(options.datasets).items())
            + "."
        ),
        "",
        "Protocol: "
        + ", ".join(f"{k}={v}" for k, v in options.protocol.base.items())
        + "; grid: "
        + "; ".join(describe_point(g) for g in options.protocol.grid)
        + "".join(
            f"; {method} also tries: " + "; ".join(describe_point({"model": m}) for m in models)
            for method, models in options.protocol.model_grid.items()
        )
        + "".join(
            f"; stage {number}: {method} also tries "
            + (
                f"each of its {top} best candidates so far"
                if (top := options.protocol.stage_top(number - 2)) > 1
                else "its choice"
            )
            + " with "
            + "; ".join(map(describe_override, overrides))
            for number, stage in enumerate(options.protocol.stages, start=2)
            for method, overrides in stage.items()
        )
        + (
            f"; then each cell's {options.protocol.confirm} best candidates on the tuning seed "
            + (
                "(the best of each " + "/".join(options.protocol.confirm_distinct) + " first) "
                if options.protocol.confirm_distinct
                else ""
            )
            + "are trained on seeds "
            + ", ".join(map(str, options.protocol.confirm_extra))
            + " too, and the lowest mean validation error is kept"
            if options.protocol.confirms
            else ""
        )
        + f"; tuning seed {options.protocol.tune_seed}; seeds 0..{options.seeds - 1}.",
        "",
        "Hyper-parameters are chosen on the validation split only: " + summary["procedure"],
        "",
    ]
    if options.table:
        skipped = unreachable(_cells(options))
        summary["unreachable"] = skipped
        pending = [
            name
            for name, cell in cells.items()
            if cell.get("stage_pending")
            and cell["dataset"] in options.datasets
            and cell["method"] in options.methods
        ]
        summary["standings"], standings_md = standings(
            cells, options.datasets, options.methods, options.factors, options.seeds, skipped
        )
        summary["headroom"], headroom_md = headroom(
            store, options.datasets, options.methods, options.factors, skipped
        )
        md += [
            "## Test error (%), mean ± std over seeds (bold: best compressed method of the row)",
            "",
            markdown_table(
                cells, options.datasets, options.methods, options.factors, options.seeds, skipped
            ),
            "",
            *(f"- {name}: not run, {reason}." for name, reason in skipped.items()),
            *(
                f"- {name}: a stage after its grid is not finished; an earlier stage's choice "
                'is shown (marked "not final") and left out of the standings.'
                for name in pending
            ),
            *([""] if skipped or pending else []),
            "## Standings of the compressed methods",
            "",
            standings_md,
            "",
            "## Could a better choice change the winner?",
            "",
            headroom_md,
            "",
            "## Chosen hyper-parameters",
            "",
            selection_table(store),
            "",
        ]
        png = plot_errors(cells, options.datasets, options.methods, out / "errors.png")
        summary["plot"] = str(png) if png else None
        if png:
            md += ["![test error against compression factor](errors.png)", ""]
    if options.ablations:
        plan = ablation_plan(options, store)
        abl_summary, abl_md = ablation_rows(store, plan, options.ablation_seeds)
        summary["ablations"] = abl_summary
        md += [
            "## Ablations: freshnets test error (%), one knob changed at a time",
            "",
            abl_md,
            "",
        ]
    if failures:
        md += ["## Failed runs (retried on the next invocation)", ""]
        md += [f"- `{s.key()}`: {e!r}" for s, e in failures]
        md.append("")
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "results.md").write_text("\n".join(md))
    return summary
