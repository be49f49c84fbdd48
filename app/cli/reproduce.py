"""`freshnets reproduce`: the paper's table and the ablations, resumable, with a progress bar."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from app.cli.output import Column, print_listing
from app.cli.output import console as stdout
from app.cli.output import err_console as console

# The table's model options, picked by the ablations (docs/results.md); `null` gives freshcore's
# own defaults (the same factor for every layer).
DEFAULT_ALLOCATION = '{"shape": "exponential", "decay": 0.5}'
DEFAULT_BUDGET_POLICY = '{"kind": "conv-boost", "conv_factor": 4}'
# freshnets allocations tried on the tuning seed (table v4): exponential decays from gentle to
# nearly low-pass (table v3's four), and two that cut off the bands under a rate
DEFAULT_ALLOCATIONS = json.dumps(
    [{"shape": "exponential", "decay": d} for d in (0.25, 0.5, 1.0, 2.0)]
    + [
        {"shape": "exponential", "decay": 1.0, "min_rate": 0.1},
        {"shape": "exponential", "decay": 2.0, "min_rate": 0.25},
    ]
)
# The second stage (table v6): at 1/64, every method that splits a budget across layers also tries
# its first-stage choice with twice the table's conv boost (table v5: a probe on the background sets
# found the conv filters starved at 1/64); and every method, dense included, tries it with random
# shifts at every factor (they helped freshnets on MNIST in the ablations; docs/results.md)
DEFAULT_REFINE_BOOST = {
    "budget_policy": {"kind": "conv-boost", "conv_factor": 8},
    "factors": ["1/64"],
}
DEFAULT_REFINE_SHIFTS = {"augment": True}


def _split(values: list[str] | None) -> list[str] | None:
    """Accept `--datasets a,b` as well as `--datasets a --datasets b`."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _json_option(text: str | None, name: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=name) from exc
    if value is not None and not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object or null", param_hint=name)
    return value


def _allocations_option(text: str) -> tuple[dict[str, Any], ...]:
    """`--allocations`: a JSON list of allocations, each checked by freshcore's own parser."""
    from freshcore.build import parse_allocation

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--allocations") from exc
    if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
        raise typer.BadParameter("must be a JSON list of objects", param_hint="--allocations")
    parsed = []
    for i, allocation in enumerate(value):
        try:  # the parsed form (decay 1 -> 1.0), so one allocation always has one run key
            parsed.append(parse_allocation(allocation, "freshnets"))
        except ValueError as exc:
            raise typer.BadParameter(f"item {i}: {exc}", param_hint="--allocations") from exc
    return tuple(parsed)


def _refine_option(text: str, hint: str = "--refine") -> dict[str, list[dict[str, Any]]]:
    """`--refine` (or one `--later` stage): {method: [overrides]}, each a build_model keyword
    or a training setting, checked by freshcore's own parsers and `TrainConfig`;
    `"teacher": "dense"` (with a distill_alpha) distils from the data set's dense cell."""
    from dataclasses import fields

    from freshcore.build import (
        parse_allocation,
        parse_balanced,
        parse_budget_policy,
        parse_fc_allocation,
        parse_width,
    )
    from freshcore.data import list_datasets
    from freshcore.reproduce.plan import (
        ALL_METHODS,
        DATASETS_KEY,
        NOT_TRAINING,
        SCOPE_KEY,
        TEACHER_KEY,
        factor_value,
        split_override,
    )
    from freshcore.train import TrainConfig

    known = {*NOT_TRAINING, *(f.name for f in fields(TrainConfig))}
    dataset_names = sorted(info.name for info in list_datasets())
    value = _json_option(text, hint) or {}  # null, like {}: an empty stage
    out: dict[str, list[dict[str, Any]]] = {}
    for method, overrides in value.items():
        if method not in ALL_METHODS:
            raise typer.BadParameter(
                f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}", param_hint=hint
            )
        if not isinstance(overrides, list) or not all(isinstance(o, dict) for o in overrides):
            raise typer.BadParameter(f"{method}: must be a list of objects", param_hint=hint)
        out[method] = []
        for i, override in enumerate(overrides):
            unknown = set(override) - known
            if unknown:
                raise typer.BadParameter(
                    f"{method} item {i}: unknown key(s) {', '.join(sorted(unknown))}; "
                    f"overrides may set {', '.join(NOT_TRAINING)} or a TrainConfig field",
                    param_hint=hint,
                )
            checked = dict(override)
            try:
                if SCOPE_KEY in override:
                    scope = override[SCOPE_KEY]
                    if not (
                        scope and isinstance(scope, list) and all(isinstance(f, str) for f in scope)
                    ):
                        raise ValueError(f'{SCOPE_KEY} must be a non-empty list like ["1/64"]')
                    for factor in scope:
                        factor_value(factor)
                if DATASETS_KEY in override:
                    names = override[DATASETS_KEY]
                    if not (
                        names and isinstance(names, list) and all(n in dataset_names for n in names)
                    ):
                        raise ValueError(
                            f"{DATASETS_KEY} must be a non-empty list of data sets, from "
                            f"{', '.join(dataset_names)}"
                        )
                if "budget_policy" in override:
                    parse_budget_policy(override["budget_policy"])
                if "allocation" in override:  # the parsed form, as --allocations keeps it
                    checked["allocation"] = parse_allocation(override["allocation"], method)
                if "fc_allocation" in override:
                    fc_allocation = parse_fc_allocation(override["fc_allocation"], method)
                    checked["fc_allocation"] = fc_allocation
                if "width" in override:
                    parse_width(override["width"], method)
                parse_balanced(override.get("balanced", False), method)
                if TEACHER_KEY in override:
                    if override[TEACHER_KEY] != "dense" or method == "dense":
                        raise ValueError(
                            f'{TEACHER_KEY} must be "dense" (the data set\'s dense cell), '
                            "for a compressed method"
                        )
                    if not 0 < override.get("distill_alpha", 0) <= 1:
                        raise ValueError(f"{TEACHER_KEY} needs distill_alpha in (0, 1]")
                TrainConfig(**split_override(override)[0])
            except (ValueError, TypeError) as exc:
                raise typer.BadParameter(f"{method} item {i}: {exc}", param_hint=hint) from exc
            out[method].append(checked)
    return out


def _pick_ablations(rp: Any, names: list[str] | None) -> list[Any]:
    known = {a.name: a for a in rp.default_ablations()}
    if not names:
        return list(known.values())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise typer.BadParameter(
            f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}",
            param_hint="--ablation-variants",
        )
    return [known[n] for n in names]


def _print_plan(cells: list[Any], workers: int) -> None:
    """`--plan`: a row per cell (`freshcore.reproduce.CellPlan`), then the totals."""
    from freshcore.reproduce.report import describe_seconds

    def duration(seconds: float | None) -> str:
        return "?" if seconds is None else describe_seconds(seconds)

    rows = [
        (
            c.name,
            c.state,
            str(c.finished),
            str(c.left),
            duration(c.run_seconds),
            duration(None if c.run_seconds is None else c.left * c.run_seconds),
        )
        for c in cells
    ]
    print_listing(
        "what this command would train",
        [
            Column("cell"),
            Column("state"),
            Column("runs done", right=True, drop=2),
            Column("left, at most", right=True),
            Column("a run here", right=True, drop=1),
            Column("time left", right=True, drop=3),
        ],
        rows,
    )
    stdout.print(_plan_summary(cells, workers), soft_wrap=True)


def _plan_summary(cells: list[Any], workers: int) -> str:
    """What is left of a table at most, and for how long at the store's recorded pace: under
    `--plan`'s table, and first thing when a table starts."""
    from freshcore.reproduce.report import describe_seconds

    busy = [c for c in cells if c.left]
    timed = [c for c in busy if c.run_seconds is not None]
    seconds = sum(c.left * c.run_seconds for c in timed) / workers
    done = sum(c.state == "done" for c in cells)
    lines = [
        f"{sum(c.left for c in busy)} runs left at most, in {len(busy)} of {len(cells)} cells "
        f"({done} done); about {describe_seconds(seconds)} with {workers} "
        f"worker{'s' if workers > 1 else ''} at this machine's recorded pace."
    ]
    if len(timed) < len(busy):
        lines.append(
            f"{len(busy) - len(timed)} cells with runs left have no run from this machine in "
            "the store: their time is not counted."
        )
    lines.append(
        "At most: a later stage or the check may choose runs the store holds already; a cell "
        "still tuning may also change its choice, and its seeds with it."
    )
    return "\n".join(lines)


class _RichReporter:
    """Two bars: runs of the plan, and epochs of the run in progress. The runs bar says how long
    the rest should take, from the runs this invocation trained and those left to train (the
    finished ones it skips cost nothing). Where no bar can show (output to a log file), each
    trained run adds a line with that count instead."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.runs: TaskID = progress.add_task("runs", total=0)
        self.epochs: TaskID = progress.add_task("", total=1, visible=False)
        self.started = time.perf_counter()
        self.total = self.finished = self.trained = self.skipped = 0

    def begin(self, total: int, finished: int = 0) -> None:
        self.progress.reset(self.runs, total=total, description="runs")
        self.started = time.perf_counter()
        self.total, self.finished, self.trained, self.skipped = total, finished, 0, 0

    def _count(self, runs: int, skipped: bool) -> None:
        from freshcore.reproduce.report import describe_seconds  # torch loads with the command

        self.progress.advance(self.runs, runs)
        if skipped:
            self.skipped += runs
        else:
            self.trained += runs
        if not self.trained:
            return
        # the plan is an upper bound and `finished` a count made before stages chose: more
        # skipped runs than counted mean fewer left to train
        waiting = max(self.total - self.trained - max(self.finished, self.skipped), 0)
        elapsed = time.perf_counter() - self.started
        eta = (
            f"about {describe_seconds(elapsed / self.trained * waiting)} left"
            if waiting
            else "done"
        )
        self.progress.update(self.runs, description=f"runs, {eta}")
        if not skipped and not self.progress.console.is_terminal:
            self.progress.console.print(
                f"{self.trained}/{self.trained + waiting} runs trained ({self.finished} of the "
                f"{self.total} planned were done before), {describe_seconds(elapsed)} so far, "
                f"{eta}",
                soft_wrap=True,  # one line a run, whatever the width
            )

    def start_run(self, spec: Any, epochs: int) -> None:
        self.progress.reset(
            self.epochs,
            total=epochs,
            description=f"{spec.dataset} {spec.method} {spec.factor} seed {spec.seed}",
            visible=True,
        )

    def epoch(self, spec: Any, metrics: Any) -> None:
        self.progress.update(
            self.epochs,
            completed=metrics.epoch,
            description=f"{spec.dataset} {spec.method} {spec.factor} seed {spec.seed} "
            f"val {100 * (1 - metrics.val_accuracy):.2f}%",
        )

    def end_run(self, spec: Any, record: dict[str, Any] | None, skipped: bool) -> None:
        if record is not None and not skipped and record["result"].get("diverged"):
            self.progress.console.print(
                f"{spec.dataset} {spec.method} {spec.factor} seed {spec.seed} "
                f"lr {spec.train.get('lr')}: diverged ({record['result']['error']})"
            )
        elif record is not None and not skipped:
            r = record["result"]
            self.progress.console.print(
                f"{spec.dataset} {spec.method} {spec.factor} seed {spec.seed} "
                f"lr {spec.train.get('lr')}: test error {100 * r['test_error']:.2f}% "
                f"(val {100 * r['val_error']:.2f}%, {r['seconds']:.0f} s)"
            )
        self._count(1, skipped)

    def advance(self, runs: int, skipped: bool = False) -> None:
        self._count(runs, skipped)

    def failed(self, spec: Any, error: BaseException) -> None:
        self.progress.console.print(
            f"[red]FAILED[/red] {spec.dataset} {spec.method} {spec.factor} seed {spec.seed}: "
            f"{error!r}"
        )
        self._count(1, False)


def register(cli: typer.Typer) -> None:
    """Add `freshnets reproduce` to the entry point."""

    @cli.command("reproduce")
    def reproduce_cmd(
        quick: Annotated[
            bool, typer.Option("--quick", help="Tiny CI run: digits, 1 epoch, 2 methods.")
        ] = False,
        datasets: Annotated[
            list[str] | None, typer.Option(help="Data sets (repeat or comma-separate).")
        ] = None,
        methods: Annotated[list[str] | None, typer.Option(help="Methods.")] = None,
        factors: Annotated[list[str] | None, typer.Option(help="Factors like 1/16.")] = None,
        seeds: Annotated[int, typer.Option(min=1, help="Seeds per cell.")] = 3,
        out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/reproduce"),
        arch: Annotated[
            str | None,
            typer.Option(
                help="Preset for every data set (default: by input shape, mnist-cnn for 28x28 "
                "grey, cifar-cnn for colour). Cells a method cannot store at its factor (lrd on "
                "mnist-allconv at 1/64) are left out and named in the report."
            ),
        ] = None,
        epochs: Annotated[int, typer.Option(min=1, help="Epochs per run.")] = 8,
        lrs: Annotated[
            str, typer.Option(help="Learning rates tried on the tuning seed (comma-separated).")
        ] = "0.02",
        dropouts: Annotated[
            str,
            typer.Option(
                help="Dropout rates tried with every learning rate (comma-separated; "
                "empty: the architecture's own rate)."
            ),
        ] = "0.5,0",
        batch_size: Annotated[int, typer.Option(min=1)] = 64,
        max_train_samples: Annotated[
            int | None, typer.Option(help="Train on a subset (None: all).")
        ] = None,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        cuda_graph: Annotated[
            bool,
            typer.Option(
                "--cuda-graph",
                help="On a GPU, replay each training step as a CUDA graph (TrainConfig."
                "cuda_graph: several times faster for these small networks). Like --device, not "
                "part of a run's key; each record's machine says whether it was used.",
            ),
        ] = False,
        threads: Annotated[int, typer.Option(help="torch threads (0: torch's default).")] = 0,
        workers: Annotated[
            int,
            typer.Option(
                min=1,
                help="Processes training side by side, sharing --out (one torch thread each "
                "when over 1). On a GPU several keep it busier than one.",
            ),
        ] = 1,
        table: Annotated[bool, typer.Option("--table/--no-table", help="Run the table.")] = True,
        ablations: Annotated[
            bool, typer.Option("--ablations/--no-ablations", help="Run the ablations.")
        ] = False,
        ablation_datasets: Annotated[list[str] | None, typer.Option()] = None,
        ablation_factors: Annotated[list[str] | None, typer.Option()] = None,
        ablation_seeds: Annotated[int, typer.Option(min=1)] = 1,
        ablation_variants: Annotated[
            list[str] | None, typer.Option(help="Ablation variants by name, in run order.")
        ] = None,
        allocation: Annotated[
            str | None,
            typer.Option(
                help='freshnets allocation as JSON, e.g. \'{"shape": "beta", "a": 1, "b": 3}\'.'
            ),
        ] = DEFAULT_ALLOCATION,
        budget_policy: Annotated[
            str | None,
            typer.Option(
                help='Budget split as JSON, e.g. \'{"kind": "conv-boost", "conv_factor": 16}\'.'
            ),
        ] = DEFAULT_BUDGET_POLICY,
        allocations: Annotated[
            str,
            typer.Option(
                help="freshnets allocations tried on the tuning seed, as a JSON list "
                "('[]': only --allocation)."
            ),
        ] = DEFAULT_ALLOCATIONS,
        refine: Annotated[
            str | None,
            typer.Option(
                help="Second stage: per method, overrides (model options or training settings) "
                "tried on the tuning seed on top of its first choice, as JSON "
                '{"method": [{"budget_policy": ..., "factors": ["1/64"]}, {"lr": 0.05}]}; '
                '"factors" limits an override to those factors; "teacher": "dense" with a '
                "distill_alpha distils from the data set's dense choice (default, table v6: "
                "conv-boost x8 at 1/64 for every method that splits a budget, random shifts for "
                "every method; '{}': none).",
            ),
        ] = None,
        later: Annotated[
            list[str] | None,
            typer.Option(
                help="A stage after --refine, in the same JSON form, tried on the tuning seed on "
                "top of the choice the stages before it made (repeat for more stages), e.g. "
                '\'{"freshnets": [{"budget_policy": {"kind": "conv-boost", "conv_factor": 1, '
                "\"stem_factor\": 4.0}}]}'. Numbers are part of a run's key: 4.0 and 4 name "
                "different runs.",
            ),
        ] = None,
        later_top: Annotated[
            int,
            typer.Option(
                min=1,
                help="Try each --later stage on this many of a cell's best candidates so far "
                "(validation on the tuning seed), not only on its choice: a runner-up may gain "
                "more from the stage's change. Costs that many runs per override.",
            ),
        ] = 1,
        confirm: Annotated[
            int,
            typer.Option(
                min=0,
                help="After the last stage, train this many of each cell's best candidates on "
                "the tuning seed on --confirm-seeds too, and keep the one with the lowest mean "
                "validation error (0 or 1: keep the tuning seed's best).",
            ),
        ] = 0,
        confirm_seeds: Annotated[
            str,
            typer.Option(
                help="The seeds --confirm trains its shortlist on besides the tuning seed "
                "(comma-separated); table seeds among them are shared with the table.",
            ),
        ] = "1,2",
        confirm_distinct: Annotated[
            str,
            typer.Option(
                help="Model options (comma-separated, e.g. allocation) whose values --confirm "
                "spreads its shortlist over: the best candidate of each value first, then each "
                "value's second best, so near-twins of one candidate do not fill it.",
            ),
        ] = "",
        report_only: Annotated[
            bool, typer.Option("--report-only", help="Only rewrite the report from disk.")
        ] = False,
        plan: Annotated[
            bool,
            typer.Option(
                "--plan",
                help="Train nothing: say, cell by cell, what this command would still train "
                "and about how long it takes at the pace of the runs --out holds from this "
                "machine.",
            ),
        ] = False,
    ) -> None:
        """Train every data set x method x factor x seed not yet done; write results.md/json/png."""
        import torch

        from freshcore import reproduce as rp
        from freshcore.data import DatasetNotFound
        from freshcore.train import TrainConfig, TrainConfigError

        if threads:
            torch.set_num_threads(threads)
        command = "freshnets " + shlex.join(sys.argv[1:])
        if quick:
            options = rp.quick_options(out, device="cpu" if device == "auto" else device)
            options.protocol.cuda_graph = cuda_graph
            options.workers = workers
        else:
            try:
                lr_values = tuple(float(x) for x in lrs.split(",") if x.strip())
            except ValueError as exc:
                raise typer.BadParameter(f"--lrs {lrs!r}: {exc}") from exc
            try:
                dropout_values = tuple(float(x) for x in dropouts.split(",") if x.strip())
            except ValueError as exc:
                raise typer.BadParameter(f"--dropouts {dropouts!r}: {exc}") from exc
            try:
                confirm_values = tuple(int(x) for x in confirm_seeds.split(",") if x.strip())
            except ValueError as exc:
                raise typer.BadParameter(
                    f"{confirm_seeds!r}: seeds are whole numbers", param_hint="--confirm-seeds"
                ) from exc
            distinct = tuple(_split([confirm_distinct]))
            for name in distinct:
                if name not in rp.MODEL_OPTIONS:
                    raise typer.BadParameter(
                        f"{name!r} is not a model option (one of {', '.join(rp.MODEL_OPTIONS)})",
                        param_hint="--confirm-distinct",
                    )
            for rate in dropout_values:  # TrainConfig holds the rule for a valid rate
                try:
                    TrainConfig(dropout=rate)
                except TrainConfigError as exc:
                    raise typer.BadParameter(f"--dropouts {dropouts!r}: {exc}") from exc
            try:  # the protocol holds the rule for valid confirm seeds
                protocol = rp.default_protocol(
                    epochs=epochs,
                    lrs=lr_values,
                    max_train_samples=max_train_samples,
                    device=device,
                    cuda_graph=cuda_graph,
                    batch_size=batch_size,
                    dropouts=dropout_values,
                    allocations=_allocations_option(allocations),
                    refine=(
                        _refine_option(refine)
                        if refine is not None
                        else {
                            m: ([DEFAULT_REFINE_BOOST] if m in rp.BUDGETED_METHODS else [])
                            + [DEFAULT_REFINE_SHIFTS]
                            for m in rp.ALL_METHODS
                        }
                    ),
                    later=[_refine_option(stage, "--later") for stage in later or []],
                    later_top=later_top,
                    confirm=confirm,
                    confirm_seeds=confirm_values,
                    confirm_distinct=distinct,
                )
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--confirm-seeds") from exc
            options = rp.Options(
                datasets=_split(datasets) or rp.default_datasets(),
                methods=_split(methods) or list(rp.ALL_METHODS),
                factors=_split(factors) or list(rp.DEFAULT_FACTORS),
                seeds=seeds,
                out=out,
                arch=arch,
                protocol=protocol,
                workers=workers,
                table=table,
                ablations=ablations,
                ablation_datasets=_split(ablation_datasets),
                ablation_factors=_split(ablation_factors),
                ablation_seeds=ablation_seeds,
                ablation_variants=_pick_ablations(rp, _split(ablation_variants)),
                allocation=_json_option(allocation, "--allocation"),
                budget_policy=_json_option(budget_policy, "--budget-policy"),
            )
        if quick and arch is not None:
            options.arch = arch
        try:  # the preset must fit every data set, on --quick's digits too
            rp.dataset_archs(options.datasets, options.arch)
        except DatasetNotFound as exc:
            raise typer.BadParameter(str(exc), param_hint="--datasets") from exc
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--arch") from exc
        for method in options.methods:
            if method not in rp.ALL_METHODS:
                raise typer.BadParameter(
                    f"unknown method {method!r}; choose from {', '.join(rp.ALL_METHODS)}",
                    param_hint="--methods",
                )
        if plan:
            _print_plan(rp.plan(options), options.workers)
            return
        started = time.perf_counter()
        if report_only:
            summary = rp.write_report(options, command, 0.0)
        else:
            if options.table:  # the upper bound up front; the bar's estimate follows the runs
                console.print(_plan_summary(rp.plan(options), options.workers), soft_wrap=True)
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                summary = rp.reproduce(options, _RichReporter(progress), command)
        console.print(
            f"{summary['runs_finished']} runs finished in {out}; report: {out / 'results.md'} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        if summary["failures"]:
            console.print(f"[red]{len(summary['failures'])} runs failed[/red]")
            raise typer.Exit(1)
