"""The harness end to end on real data (scikit-learn's digits): train, skip, resume, report."""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from app.cli import cli
from freshcore.reproduce import (
    Options,
    Reporter,
    RunSpec,
    RunStore,
    ablation_plan,
    default_ablations,
    default_protocol,
    plan,
    quick_options,
    reproduce,
    write_report,
)
from freshcore.reproduce.parallel import _waits, run_parallel
from freshcore.reproduce.plan import table_groups
from freshcore.reproduce.runner import DataCache, final_specs, run_one


class Counting(Reporter):
    def __init__(self) -> None:
        self.trained: list[str] = []
        self.skipped: list[str] = []
        self.epochs: list[int] = []

    def epoch(self, spec: RunSpec, metrics: Any) -> None:
        self.epochs.append(metrics.epoch)

    def end_run(self, spec: RunSpec, record: dict[str, Any] | None, skipped: bool) -> None:
        (self.skipped if skipped else self.trained).append(spec.key())

    def failed(self, spec: RunSpec, error: BaseException) -> None:
        raise error


def test_quick_cli_writes_results_and_second_run_skips(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    result = CliRunner().invoke(cli, ["reproduce", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # no terminal: a count line per trained run; the table's dense run is the ablations' default
    assert "2/2 runs trained (0 of the 2 planned were done before), " in result.output
    assert "3/3 runs trained (1 of the 4 planned were done before), " in result.output
    assert ", done\n" in result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["failures"] == []
    assert summary["command"].startswith("freshnets ")
    assert summary["machine"]["torch"]
    dense, fresh = summary["cells"]["digits/dense/1"], summary["cells"]["digits/freshnets/1/16"]
    for cell in (dense, fresh):
        assert cell["test_error"]["n"] == 1
        assert 0.0 <= cell["test_error"]["mean"] < 0.9  # one epoch, 600 digits: beats chance
    assert fresh["stored_parameters"] < dense["stored_parameters"] / 8
    md = (out / "results.md").read_text()
    assert "| digits | 1/16 |" in md and "Ablations" in md and "project dense" in md
    assert "Network: by input shape, `mnist-cnn` for digits." in md
    assert "The 5 finished runs ran between " in md
    assert summary["running"]["machines"][0]["runs"] == 5 and summary["running"]["busy_s"] > 0
    assert summary["standings"]["rows"] == ["digits 1/16"]  # freshnets is the one compressed
    assert summary["standings"]["methods"]["freshnets"]["rows_won"] == 1
    assert "## Standings of the compressed methods" in md
    assert (out / "errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = sorted((out / "runs").glob("*.json"))
    # dense + freshnets, and the ablations (default = the table's freshnets run; float16 is a
    # metric of that run): uniform, distillation, projection
    assert len(runs) == 5
    assert not list((out / "checkpoints").iterdir())
    before = {p.name: p.stat().st_mtime_ns for p in runs}

    counting = Counting()
    again = reproduce(quick_options(out), counting, command="again")
    assert counting.trained == [] and len(counting.skipped) >= 5
    result = CliRunner().invoke(cli, ["reproduce", "--quick", "--out", str(out)])
    assert result.exit_code == 0 and "so far" not in result.output  # nothing trained, no count
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == before
    assert again["cells"]["digits/freshnets/1/16"] == fresh

    (out / "results.md").unlink()
    result = CliRunner().invoke(cli, ["reproduce", "--quick", "--report-only", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| digits | 1/16 |" in (out / "results.md").read_text()


class Planning(Counting):
    def __init__(self) -> None:
        super().__init__()
        self.plans: list[tuple[int, int]] = []

    def begin(self, total: int, finished: int = 0) -> None:
        self.plans.append((total, finished))


def test_a_resumed_table_tells_the_progress_what_it_will_skip(tmp_path: Path) -> None:
    """The time estimate leaves out the runs a resumed table skips: the tuning grid, and the
    other seeds of a cell's recorded choice; in one process or several."""
    options = replace(quick_options(tmp_path), ablations=False)
    first = Planning()
    reproduce(options, first)
    ((grid, finished),) = first.plans
    assert finished == 0 and len(first.trained) == grid == 2  # dense and freshnets, seed 0
    second = Planning()
    reproduce(replace(options, seeds=2), second)
    assert second.plans == [(grid + 2, grid)] and len(second.trained) == 2  # seed 1 of each
    third = Planning()
    reproduce(replace(options, seeds=2, workers=2), third)
    assert third.plans == [(grid + 2, grid + 2)]


def test_plan_says_what_is_left_and_trains_nothing(tmp_path: Path) -> None:
    """`--plan` before a table, after it and with one more seed: each cell's state, the runs
    left, and a time taken from the store's runs of this machine only."""
    out = tmp_path / "quick"
    args = ["reproduce", "--quick", "--no-ablations", "--out", str(out), "--plan"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert not list((out / "runs").glob("*.json"))  # nothing trained
    for cell in ("digits/dense/1", "digits/freshnets/1/16"):
        assert re.search(rf"{re.escape(cell)} +waiting +0 +1 +\? +\?", result.output)
    assert "2 runs left at most, in 2 of 2 cells (0 done)" in result.output
    assert "2 cells with runs left have no run from this machine" in result.output

    # The table itself says the same bound up front (in a store of its own: --quick also runs
    # the ablations, which would be in this one's way below).
    result = CliRunner().invoke(cli, ["reproduce", "--quick", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "2 runs left at most, in 2 of 2 cells (0 done)" in result.output
    assert "2/2 runs trained" in result.output

    options = replace(quick_options(out), ablations=False)
    reproduce(options, Counting())
    result = CliRunner().invoke(cli, args)
    assert re.search(r"digits/freshnets/1/16 +done +1 +0 ", result.output), result.output
    assert "0 runs left at most, in 0 of 2 cells (2 done); about 0 s" in result.output

    store = RunStore(out)
    dense, fresh = sorted(store.records(), key=lambda r: r["spec"]["method"] != "dense")
    cells = {c.name: c for c in plan(replace(options, seeds=2))}
    assert {c.state for c in cells.values()} == {"chosen"}
    assert cells["digits/freshnets/1/16"].left == 1
    assert cells["digits/freshnets/1/16"].run_seconds == fresh["result"]["seconds"]
    for record, pace in ((fresh, dense["result"]["seconds"]), (dense, None)):
        # a run of another machine says nothing of this one's pace: the cell's own runs, then
        # its data set's are asked
        record["machine"]["cpu"] = "another machine"
        store.put(RunSpec.from_dict(record["spec"]), record)
        cells = {c.name: c for c in plan(replace(options, seeds=2))}
        assert cells["digits/freshnets/1/16"].run_seconds == pace
    assert [r["spec"]["seed"] for r in store.records()] == [0, 0]  # still nothing trained


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    store, data = RunStore(tmp_path), DataCache()
    spec = RunSpec(
        "digits",
        "freshnets",
        "1/16",
        0,
        "mnist-cnn",
        train={**quick_options(tmp_path).protocol.base, "epochs": 2, "lr": 0.05},
    )

    class Interrupt(Counting):
        def epoch(self, spec: RunSpec, metrics: Any) -> None:
            super().epoch(spec, metrics)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_one(spec, store, data, Interrupt(), device="cpu")
    assert store.get(spec) is None and store.checkpoint_path(spec).exists()

    counting = Counting()
    record = run_one(spec, store, data, counting, device="cpu")
    assert counting.epochs == [2]  # epoch 1 came from the checkpoint
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert not store.checkpoint_path(spec).exists()
    assert store.get(spec) == record


def test_unknown_method_is_refused_by_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["reproduce", "--datasets", "digits", "--methods", "pruning", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "pruning" in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--datasets", "digits", "--arch", "resnet"], "unknown architecture 'resnet'"),
        (["--datasets", "digits", "--arch", "mnist-allconv"], "does not fit data set digits"),
        (["--quick", "--arch", "mnist-allconv"], "does not fit data set digits"),
        (["--datasets", "digits,mnist-noise"], "unknown data set 'mnist-noise'"),
    ],
)
def test_an_architecture_or_data_set_that_does_not_fit_is_refused_by_name(
    tmp_path: Path, args: list[str], says: str
) -> None:
    result = CliRunner().invoke(cli, ["reproduce", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert ("--arch" if "--arch" in args else "--datasets") in result.output
    assert says in result.output
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_a_cell_the_method_cannot_store_is_left_out_and_named(tmp_path: Path) -> None:
    """lrd cannot store 1/64 of mnist-cnn on digits: it is not run, not a failure, and the
    report says why while freshnets' row is still complete."""
    options = replace(
        quick_options(tmp_path),
        methods=["lrd", "freshnets"],
        factors=["1/64"],
        arch="mnist-cnn",
        ablations=False,
    )
    counting = Counting()
    summary = reproduce(options, counting)
    assert summary["failures"] == []
    assert [k.split("_")[1] for k in counting.trained] == ["freshnets"]
    assert list(summary["unreachable"]) == ["digits/lrd/1/64"]
    assert summary["standings"]["rows"] == ["digits 1/64"]
    md = (tmp_path / "results.md").read_text()
    assert "| digits | 1/64 | cannot reach | **" in md
    assert "- digits/lrd/1/64: not run, lrd cannot reach compression 0.015625" in md
    assert "Network: `mnist-cnn` for every data set (--arch)." in md
    assert summary["options"]["arch"] == "mnist-cnn"


def test_defaults_are_the_tables_protocol(tmp_path: Path) -> None:
    """Without options the harness runs table v6's protocol (docs/results.md); null restores
    freshcore's own model defaults."""
    args = ["reproduce", "--datasets", "digits", "--out", str(tmp_path), "--report-only"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    options = json.loads((tmp_path / "results.json").read_text())["options"]
    assert options["protocol"]["base"]["epochs"] == 8
    assert options["protocol"]["grid"] == [
        {"lr": 0.02, "dropout": 0.5},
        {"lr": 0.02, "dropout": 0.0},
    ]
    assert options["allocation"] == {"shape": "exponential", "decay": 0.5}
    assert options["budget_policy"] == {"kind": "conv-boost", "conv_factor": 4}
    tried = options["protocol"]["model_grid"]["freshnets"]
    assert [(m["allocation"]["decay"], m["allocation"].get("min_rate")) for m in tried] == [
        (0.25, None), (0.5, None), (1.0, None), (2.0, None), (1.0, 0.1), (2.0, 0.25)
    ]  # fmt: skip
    boost8 = {"budget_policy": {"kind": "conv-boost", "conv_factor": 8}, "factors": ["1/64"]}
    shifts = {"augment": True}
    budgeted = ("lrd", "hashednets", "lowfreq", "freshnets-uniform", "freshnets")
    refine = {m: [boost8, shifts] for m in budgeted}
    assert options["protocol"]["refine"] == {"dense": [shifts], "equivalent": [shifts], **refine}
    nulls = [*args, "--allocation", "null", "--budget-policy", "null"]
    assert CliRunner().invoke(cli, nulls).exit_code == 0
    options = json.loads((tmp_path / "results.json").read_text())["options"]
    assert options["allocation"] is None and options["budget_policy"] is None


@pytest.mark.parametrize("bad", ["1.0", "half"])
def test_bad_dropout_rate_is_refused_by_name(tmp_path: Path, bad: str) -> None:
    args = ["reproduce", "--datasets", "digits", "--dropouts", f"0.5,{bad}", "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "--dropouts" in result.output
    assert not (tmp_path / "runs").exists()  # refused before anything trained


def test_diverged_run_is_recorded_and_never_chosen(tmp_path: Path) -> None:
    store, data = RunStore(tmp_path), DataCache()
    base = {**quick_options(tmp_path).protocol.base, "epochs": 1}
    spec = RunSpec("digits", "hashednets", "1/16", 0, "mnist-cnn", train={**base, "lr": 1e6})
    record = run_one(spec, store, data, Counting(), device="cpu")
    assert record["result"]["diverged"] is True
    assert record["result"]["test_error"] is None and "NaN" in record["result"]["error"]
    assert not store.checkpoint_path(spec).exists()
    counting = Counting()
    assert run_one(spec, store, data, counting, device="cpu") == record
    assert counting.skipped == [spec.key()]  # a diverged grid point is not retried


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ('{"shape": "uniform"}', "list"),
        ("[1]", "list of objects"),
        ('[{"shape": "exponential", "decay": -1}]', "item 0"),
        ("[{", "not JSON"),
    ],
)
def test_bad_allocations_are_refused_by_name(tmp_path: Path, bad: str, says: str) -> None:
    args = ["reproduce", "--datasets", "digits", "--allocations", bad, "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "--allocations" in result.output and says in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("option", "bad", "says"),
    [
        ("--refine", "[]", "JSON object"),
        ("--refine", '{"pruning": []}', "pruning"),
        ("--refine", '{"lrd": [{"conv_factor": 8}]}', "conv_factor"),
        ("--refine", '{"lrd": [{"budget_policy": {"kind": "tiny"}}]}', "lrd item 0"),
        ("--refine", '{"lrd": [{"lr": -1}]}', "TrainConfig.lr"),
        ("--refine", '{"lrd": [{"balanced": "yes"}]}', "balanced must be"),
        ("--refine", '{"lowfreq": [{"balanced": true}]}', "balanced applies to"),
        ("--refine", '{"lrd": [{"lr": 0.05, "factors": ["1/16", "2"]}]}', "'2'"),
        ("--refine", '{"lrd": [{"lr": 0.05, "factors": "1/64"}]}', "non-empty list"),
        ("--refine", '{"dense": [{"teacher": "dense", "distill_alpha": 0.5}]}', "compressed"),
        ("--refine", '{"lrd": [{"teacher": "lowfreq", "distill_alpha": 0.5}]}', "lrd item 0"),
        ("--refine", '{"lrd": [{"teacher": "dense"}]}', "distill_alpha"),
        ("--refine", '{"lrd": [{"lr": 0.05, "datasets": ["mnist", "cifar-100"]}]}', "datasets"),
        ("--refine", '{"lrd": [{"lr": 0.05, "datasets": [{}]}]}', "lrd item 0: datasets"),
        ("--later", '{"lrd": [{"lr": 0.05, "factors": "1/64"}]}', "non-empty list"),
        ("--later", '{"lrd": [{"widht": 0.5}]}', "unknown key(s) widht"),
        ("--later", "[1]", "JSON object"),
    ],
)
def test_bad_second_stage_is_refused_by_name(
    tmp_path: Path, option: str, bad: str, says: str
) -> None:
    args = ["reproduce", "--datasets", "digits", option, bad, "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert option in result.output and says in result.output
    assert not (tmp_path / "runs").exists()


def _one_cell(tmp_path: Path, method: str, workers: int, **protocol: Any) -> Options:
    """One method on digits at 1/16 with 2 seeds: the quick protocol plus ``protocol``'s grid."""
    options = quick_options(tmp_path)
    options.methods, options.seeds, options.ablations = [method], 2, False
    options.workers = workers
    options.protocol = default_protocol(
        epochs=1, lrs=(0.05,), max_train_samples=600, device="cpu", batch_size=16, **protocol
    )
    return options


@pytest.mark.parametrize("workers", [1, 2])
def test_allocation_grid_is_tuned_on_validation_and_reused(tmp_path: Path, workers: int) -> None:
    """freshnets tries each allocation on the tuning seed; the other seed, the report and the
    ablations use the one validation chose. With 2 workers the grid points of the one cell run
    side by side and the choice is made when the last is back."""
    steep, gentle = {"shape": "exponential", "decay": 2.0}, {"shape": "exponential", "decay": 0.25}
    options = _one_cell(tmp_path, "freshnets", workers, allocations=(steep, gentle))
    counting = Counting()
    summary = reproduce(options, counting)
    assert len(RunStore(tmp_path).records()) == 3  # two allocations on seed 0, the chosen on 1
    assert workers > 1 or len(counting.trained) == 3
    entry = RunStore(tmp_path).selection()["digits/freshnets/1/16"]
    vals = [c["val_error"] for c in entry["candidates"]]
    chosen = steep if vals[0] <= vals[1] else gentle
    assert entry["chosen"]["model"] == {"allocation": chosen}
    records = [r for r in RunStore(tmp_path).records() if r["spec"]["seed"] == 1]
    assert [r["spec"]["model"]["allocation"] for r in records] == [chosen]
    assert summary["cells"]["digits/freshnets/1/16"]["test_error"]["n"] == 2
    md = (tmp_path / "results.md").read_text()
    assert f"allocation=exponential decay={chosen['decay']}" in md
    plan = ablation_plan(
        replace(options, ablation_variants=default_ablations()[:1]), RunStore(tmp_path)
    )
    assert plan[0][3].model["allocation"] == chosen  # the ablations start from the choice


@pytest.mark.parametrize("workers", [1, 2])
def test_second_stage_refines_the_choice_on_validation(tmp_path: Path, workers: int) -> None:
    """hashednets tries its first choice again with another budget split on the tuning seed;
    the other seed runs whichever of the two validation preferred, and a rerun trains nothing."""
    boost = {"kind": "conv-boost", "conv_factor": 8}
    options = _one_cell(
        tmp_path, "hashednets", workers, refine={"hashednets": [{"budget_policy": boost}]}
    )
    summary = reproduce(options, Counting())
    records = RunStore(tmp_path).records()
    assert len(records) == 3  # the grid's one point and its refinement on seed 0, then seed 1
    entry = RunStore(tmp_path).selection()["digits/hashednets/1/16"]
    first, refined = entry["candidates"]
    assert refined["overrides"]["model"] == {"budget_policy": boost}
    chosen = refined if refined["val_error"] < first["val_error"] else first
    assert entry["chosen"] == chosen["overrides"]
    (seed1,) = [r for r in records if r["spec"]["seed"] == 1]
    assert seed1["spec"]["model"].get("budget_policy") == chosen["overrides"].get("model", {}).get(
        "budget_policy"
    )
    assert summary["cells"]["digits/hashednets/1/16"]["test_error"]["n"] == 2
    md = (tmp_path / "results.md").read_text()
    assert "stage 2: hashednets also tries its choice with budget_policy=conv-boost" in md
    tests = {
        c["key"]: 100 * RunStore(tmp_path).get_key(c["key"])["result"]["test_error"]
        for c in entry["candidates"]
    }
    assert summary["headroom"]["rows"]["digits 1/16"]["hashednets"] == {
        "chosen": tests[chosen["key"]],
        "best": min(tests.values()),
    }
    assert "## Could a better choice change the winner?" in md
    again = Counting()
    reproduce(replace(options, workers=1), again)
    assert again.trained == [] and len(again.skipped) == 3


def test_a_cell_whose_second_stage_is_unfinished_is_marked_and_not_ranked(tmp_path: Path) -> None:
    """A report written while a cell's second stage is still out (stopped, or trained by another
    invocation) shows the first stage's choice as such and ranks no row with it; once the stage
    is back the cell is final."""
    first = _one_cell(tmp_path, "hashednets", 1)  # no second stage: never pending
    summary = reproduce(first, Counting())
    assert "stage_pending" not in summary["cells"]["digits/hashednets/1/16"]
    assert summary["standings"]["rows"] == ["digits 1/16"]

    staged = _one_cell(tmp_path, "hashednets", 1, refine={"hashednets": [{"epochs": 2}]})
    summary = write_report(staged, "report only", 0.0)
    assert summary["cells"]["digits/hashednets/1/16"]["stage_pending"] is True
    assert summary["standings"]["rows"] == []
    md = (tmp_path / "results.md").read_text()
    assert "(not final)" in md and "**" not in md.split("## Standings")[0].split("| digits |")[1]
    assert "- digits/hashednets/1/16: a stage after its grid is not finished" in md

    summary = reproduce(staged, Counting())  # trains the refinement, then the other seed
    assert "stage_pending" not in summary["cells"]["digits/hashednets/1/16"]
    assert summary["standings"]["rows"] == ["digits 1/16"]
    assert "(not final)" not in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_later_stage_refines_the_second_stages_choice(tmp_path: Path, workers: int) -> None:
    """A third stage tries its override on top of whatever the second stage chose, and the
    cell keeps the best of all its candidates on validation. A report written before that
    stage has run marks the cell not final; once it is back the other seed runs the final
    choice, and a rerun trains nothing."""
    refine = {"hashednets": [{"budget_policy": {"kind": "conv-boost", "conv_factor": 8}}]}
    reproduce(_one_cell(tmp_path, "hashednets", workers, refine=refine), Counting())
    later = [{"hashednets": [{"epochs": 2}]}]
    third = _one_cell(tmp_path, "hashednets", workers, refine=refine, later=later)
    pending = write_report(third, "report only", 0.0)
    assert pending["cells"]["digits/hashednets/1/16"]["stage_pending"] is True
    summary = reproduce(third, Counting())
    assert "stage_pending" not in summary["cells"]["digits/hashednets/1/16"]
    store = RunStore(tmp_path)
    entry = store.selection()["digits/hashednets/1/16"]
    first, refined, longer = entry["candidates"]
    second = refined if refined["val_error"] < first["val_error"] else first
    assert longer["overrides"] == {**second["overrides"], "epochs": 2}  # on the 2nd's choice
    best = min((first, refined, longer), key=lambda c: c["val_error"])  # ties: the earlier
    assert entry["chosen"] == best["overrides"]
    (seed1,) = final_specs(store, [1])["digits/hashednets/1/16"]
    assert store.get(seed1) is not None and seed1.train["epochs"] == (2 if best is longer else 1)
    assert summary["cells"]["digits/hashednets/1/16"]["test_error"]["n"] == 2
    md = (tmp_path / "results.md").read_text()
    assert "stage 3: hashednets also tries its choice with epochs=2" in md
    again = Counting()
    reproduce(replace(third, workers=1), again)
    assert again.trained == [] and len(again.skipped) == 4  # three candidates and seed 1
    empty = replace(third.protocol, later=[*later, {}])  # a stage with nothing to try
    assert reproduce(replace(third, protocol=empty), again)["failures"] == []
    assert again.trained == []


@pytest.mark.parametrize("workers", [1, 2])
def test_later_top_tries_a_later_stage_on_the_runners_up_too(tmp_path: Path, workers: int) -> None:
    """With --later-top 2 the third stage's override goes on both of the second stage's
    candidates, the better first; the cell keeps the best of all four on validation, its
    other seed runs that one, the report says so, and a rerun trains nothing."""
    refine = {"hashednets": [{"budget_policy": {"kind": "conv-boost", "conv_factor": 8}}]}
    later = [{"hashednets": [{"epochs": 2}]}]
    options = _one_cell(tmp_path, "hashednets", workers, refine=refine, later=later, later_top=2)
    summary = reproduce(options, Counting())
    assert "stage_pending" not in summary["cells"]["digits/hashednets/1/16"]
    store = RunStore(tmp_path)
    entry = store.selection()["digits/hashednets/1/16"]
    first, refined, *third = entry["candidates"]
    better, worse = sorted((first, refined), key=lambda c: c["val_error"])  # stable: ties
    assert [c["overrides"] for c in third] == [
        {**better["overrides"], "epochs": 2},
        {**worse["overrides"], "epochs": 2},
    ]
    best = min(entry["candidates"], key=lambda c: c["val_error"])  # ties: the earlier
    assert entry["chosen"] == best["overrides"]
    (seed1,) = final_specs(store, [1])["digits/hashednets/1/16"]
    assert store.get(seed1) is not None
    md = (tmp_path / "results.md").read_text()
    assert "stage 3: hashednets also tries each of its 2 best candidates so far with epochs=2" in md
    again = Counting()
    reproduce(replace(options, workers=1), again)
    assert again.trained == [] and len(again.skipped) == 5  # four candidates and seed 1


@pytest.mark.parametrize("workers", [1, 2])
def test_confirm_trains_the_shortlist_on_more_seeds_and_keeps_the_lowest_mean(
    tmp_path: Path, workers: int
) -> None:
    """Three allocations on the tuning seed; the two best are trained on seed 1 too and the
    lower mean validation error is the choice, whose seed-1 run is the table's. A report
    written before the check marks the cell not final; a rerun trains nothing."""
    allocations = tuple({"shape": "exponential", "decay": d} for d in (0.25, 1.0, 4.0))
    reproduce(_one_cell(tmp_path, "freshnets", workers, allocations=allocations), Counting())
    checked = _one_cell(
        tmp_path, "freshnets", workers, allocations=allocations, confirm=2, confirm_seeds=(1,)
    )
    assert write_report(checked, "report only", 0.0)["cells"]["digits/freshnets/1/16"][
        "stage_pending"
    ]
    summary = reproduce(checked, Counting())
    store = RunStore(tmp_path)
    entry = store.selection()["digits/freshnets/1/16"]
    by_val = sorted(entry["candidates"], key=lambda c: c["val_error"])[:2]
    rows = entry["confirmed"]
    assert [row["overrides"] for row in rows] == [c["overrides"] for c in by_val]
    for row in rows:
        (seed1,) = [r for r in store.records() if r["key"] == row["keys"][1]]
        assert seed1["spec"]["seed"] == 1
        assert row["mean_val_error"] == pytest.approx(
            (row["val_errors"][0] + seed1["result"]["val_error"]) / 2
        )
    best = min(rows, key=lambda row: row["mean_val_error"])
    assert entry["chosen"] == best["overrides"]
    (table_seed1,) = final_specs(store, [1])["digits/freshnets/1/16"]
    assert table_seed1.key() == best["keys"][1]
    # the 3 candidates, the shortlist on seed 1 (one of them the first invocation's seed 1)
    seeds1 = {r["key"] for r in store.records() if r["spec"]["seed"] == 1}
    assert {row["keys"][1] for row in rows} <= seeds1 and len(store.records()) <= 3 + 3
    cell = summary["cells"]["digits/freshnets/1/16"]
    assert "stage_pending" not in cell and cell["test_error"]["n"] == 2
    md = (tmp_path / "results.md").read_text()
    assert "best candidates on the tuning seed are trained on seeds 1 too" in md
    assert "| seeds 0, 1: lr=0.05, allocation=exponential decay=" in md
    again = Counting()
    reproduce(replace(checked, workers=1), again)
    # each run once, as the plan counts them: the choice's seed 1 is its confirm run
    assert again.trained == [] and len(again.skipped) == 3 + 2 == checked.protocol.runs(
        table_groups(["digits"], ["freshnets"], ["1/16"], {"digits": "mnist-cnn"}), [0, 1]
    )


def test_bad_confirm_seeds_are_refused_by_name(tmp_path: Path) -> None:
    args = ["reproduce", "--datasets", "digits", "--out", str(tmp_path), "--report-only"]
    for seeds, says in [("1,x", "seeds are whole numbers"), ("0", "besides the tuning seed")]:
        result = CliRunner().invoke(cli, [*args, "--confirm", "3", "--confirm-seeds", seeds])
        assert result.exit_code == 2 and "--confirm-seeds" in result.output, result.output
        assert says in result.output
    result = CliRunner().invoke(cli, [*args, "--confirm", "3", "--confirm-seeds", "2,3"])
    assert result.exit_code == 0, result.output
    protocol = json.loads((tmp_path / "results.json").read_text())["options"]["protocol"]
    assert protocol["confirm"] == 3 and protocol["confirm_seeds"] == [2, 3]
    result = CliRunner().invoke(cli, [*args, "--confirm", "3", "--confirm-distinct", "alloc"])
    assert result.exit_code == 2 and "--confirm-distinct" in result.output, result.output
    assert "'alloc' is not a model option" in result.output
    more = ["--confirm", "3", "--confirm-distinct", "allocation,width"]
    result = CliRunner().invoke(cli, [*args, *more])
    assert result.exit_code == 0, result.output
    protocol = json.loads((tmp_path / "results.json").read_text())["options"]["protocol"]
    assert protocol["confirm_distinct"] == ["allocation", "width"]
    assert "(the best of each allocation/width first)" in (tmp_path / "results.md").read_text()


def test_progress_counts_runs_found_done_beyond_the_plans_guess() -> None:
    """A store whose records were copied in without a selection: the plan counted 2 of its 10
    runs done, but 6 turn out done as the stages choose; the estimate shrinks to match, and
    the bar says done once nothing is left."""
    from io import StringIO

    from rich.console import Console
    from rich.progress import Progress

    from app.cli.reproduce import _RichReporter

    (group,) = table_groups(["digits"], ["dense"], ["1"], {"digits": "mnist-cnn"})
    spec = group.point_spec(0, default_protocol().base, {"lr": 0.02})
    record = {"result": {"test_error": 0.1, "val_error": 0.1, "seconds": 1.0}}
    out = StringIO()
    progress = Progress(console=Console(file=out, force_terminal=False, width=200))
    reporter = _RichReporter(progress)
    reporter.begin(10, finished=2)
    for _ in range(6):
        reporter.end_run(spec, record, skipped=True)
    reporter.end_run(spec, record, skipped=False)
    assert "1/4 runs trained (2 of the 10 planned were done before)" in out.getvalue()
    for _ in range(3):
        reporter.end_run(spec, record, skipped=False)
    assert out.getvalue().rstrip().endswith(", done")
    assert progress.tasks[0].description == "runs, done"


def test_later_stages_from_cli_reach_the_protocol_in_order(tmp_path: Path) -> None:
    """Each --later is one stage, in the order given, checked like --refine."""
    stem = {"budget_policy": {"kind": "conv-boost", "conv_factor": 1, "stem_factor": 4.0}}
    args = ["reproduce", "--datasets", "digits", "--out", str(tmp_path), "--report-only"]
    later = ["--later", json.dumps({"freshnets": [stem]})]
    later += ["--later", '{"lowfreq": [{"epochs": 2}]}']
    result = CliRunner().invoke(cli, [*args, *later])
    assert result.exit_code == 0, result.output
    options = json.loads((tmp_path / "results.json").read_text())["options"]
    assert options["protocol"]["later"] == [{"freshnets": [stem]}, {"lowfreq": [{"epochs": 2}]}]
    md = (tmp_path / "results.md").read_text()
    assert "stage 3: freshnets also tries its choice with" in md
    assert "stage 4: lowfreq also tries its choice with epochs=2" in md


def test_a_run_that_builds_a_finished_runs_network_takes_its_result(tmp_path: Path) -> None:
    """Two refinements whose first-layer rates both cap at 1 differ in name only: they build
    one network, so the second takes the first's result (and model file) without training and
    says so; the report counts it apart from the trained runs. A rate that changes the network
    trains."""

    def stem(factor: float) -> dict[str, Any]:
        return {"budget_policy": {"kind": "conv-boost", "conv_factor": 1, "stem_factor": factor}}

    refine = {"hashednets": [stem(1e3), stem(1e4), stem(2.0)]}
    options = _one_cell(tmp_path, "hashednets", 1, refine=refine)
    options.seeds = 1
    counting = Counting()
    summary = reproduce(options, counting)
    store = RunStore(tmp_path)
    _, capped, same, other = store.selection()["digits/hashednets/1/16"]["candidates"]
    assert len(counting.trained) == 3 and counting.skipped == [same["key"]]
    copy = store.get_key(same["key"])
    assert copy["same_network_as"] == capped["key"] and same["val_error"] == capped["val_error"]
    assert copy["spec"]["model"] == stem(1e4)  # its own spec, the twin's result
    assert copy["result"] == store.get_key(capped["key"])["result"]
    assert (tmp_path / "models" / f"{same['key']}.safetensors").exists()
    assert "same_network_as" not in store.get_key(other["key"])
    assert summary["runs_finished"] == 4 and summary["runs_copied"] == 1
    assert "1 more runs built the very network" in (tmp_path / "results.md").read_text()


DISTIL = {"teacher": "dense", "distill_alpha": 0.5, "distill_temperature": 4.0}


@pytest.mark.parametrize("workers", [1, 2])
def test_second_stage_distils_from_the_dense_choice(tmp_path: Path, workers: int) -> None:
    """hashednets' second stage distils from the dense cell: listed first, it waits for dense's
    choice; its tuning-seed candidate learns from dense's seed-0 run, and whatever validation
    keeps, seed 1 runs with it (a distilled seed 1 learns from dense's seed-1 run)."""
    options = _one_cell(tmp_path, "hashednets", workers, refine={"hashednets": [DISTIL]})
    options.methods = ["hashednets", "dense"]
    summary = reproduce(options, Counting())
    assert summary["failures"] == []
    store = RunStore(tmp_path)
    dense = store.selection()["digits/dense/1"]
    entry = store.selection()["digits/hashednets/1/16"]
    _, distilled = entry["candidates"]
    assert distilled["overrides"]["teacher"] == dense["chosen"]
    records = {r["key"]: r for r in store.records()}
    assert len(records) == 5  # dense on seeds 0 and 1, hashednets' two candidates and seed 1
    teacher = records[distilled["key"]]["spec"]["teacher"]
    assert teacher == records[dense["candidates"][0]["key"]]["spec"]  # dense's own seed-0 run
    (seed1,) = [r for r in records.values() if r["spec"]["method"] == "hashednets"
                and r["spec"]["seed"] == 1]  # fmt: skip
    if entry["chosen"] == distilled["overrides"]:
        assert seed1["spec"]["teacher"]["seed"] == 1
        assert seed1["spec"]["train"]["distill_alpha"] == 0.5
    else:
        assert seed1["spec"]["teacher"] is None
    assert "distilled from dense" in (tmp_path / "results.md").read_text()
    again = Counting()
    reproduce(replace(options, workers=1), again)
    assert again.trained == [] and len(again.skipped) == 5


@pytest.mark.parametrize("workers", [1, 2])
def test_distilling_without_a_dense_choice_is_a_named_failure(tmp_path: Path, workers: int) -> None:
    """Without dense in the command or in the store, the second stage that distils cannot be
    built: the cell's first stage runs, the failure names the dense cell, no seed 1 runs."""
    options = _one_cell(tmp_path, "hashednets", workers, refine={"hashednets": [DISTIL]})
    summary = reproduce(options, Reporter())
    (failure,) = summary["failures"]
    assert "digits/dense/1" in failure["error"] and "not chosen" in failure["error"]
    assert [r["spec"]["seed"] for r in RunStore(tmp_path).records()] == [0]


def test_parallel_runs_finish_the_group_given_first_before_the_next(tmp_path: Path) -> None:
    """A free worker takes the earliest group's waiting run: hashednets' seed 1, released when
    its grid is back, runs before lowfreq's grid (a plain queue would put it after)."""
    protocol = default_protocol(
        epochs=1, lrs=(0.05,), max_train_samples=300, device="cpu", batch_size=16
    )
    groups = table_groups(["digits"], ["hashednets", "lowfreq"], ["1/16"], {"digits": "mnist-cnn"})
    assert run_parallel(protocol, tmp_path, 1, groups, seeds=[0, 1]) == []
    finished = sorted((tmp_path / "runs").glob("*.json"), key=lambda f: f.stat().st_mtime_ns)
    runs = [json.loads(f.read_text())["spec"] for f in finished]
    assert [(r["method"], r["seed"]) for r in runs] == [
        ("hashednets", 0),
        ("hashednets", 1),
        ("lowfreq", 0),
        ("lowfreq", 1),
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU side of --cuda-graph")
def test_cuda_graph_flag_trains_eagerly_without_a_gpu(tmp_path: Path) -> None:
    """--cuda-graph is for GPUs and not part of a run's key: on a CPU the runs are the eager
    ones, and every record says the graph was not used."""
    args = ["reproduce", "--quick", "--cuda-graph", "--workers", "2", "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    records = RunStore(tmp_path).records()
    assert records and all(r["machine"]["cuda_graph"] is False for r in records)
    counting = Counting()
    reproduce(quick_options(tmp_path), counting)  # the same keys: nothing to train
    assert counting.trained == []


def test_workers_share_one_store_and_a_serial_rerun_skips_everything(tmp_path: Path) -> None:
    """`--workers 2`: the table's cells and the ablations run in two processes writing one
    output directory; every run lands once and the serial command then finds them all."""
    out = tmp_path / "par"
    args = ["reproduce", "--quick", "--workers", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "2/2 runs trained (0 of the 2 planned were done before), " in result.output
    assert "3/3 runs trained (1 of the 4 planned were done before), " in result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["failures"] == [] and summary["runs_finished"] == 5
    result = CliRunner().invoke(cli, args)  # the workers skip every run: nothing to count down
    assert result.exit_code == 0 and "so far" not in result.output
    assert set(RunStore(out).selection()) == {"digits/dense/1", "digits/freshnets/1/16"}
    counting = Counting()
    reproduce(quick_options(out), counting, command="serial")
    assert counting.trained == [] and len(counting.skipped) >= 5


def _select_many(root: str, prefix: str) -> None:
    store = RunStore(root)
    for i in range(40):
        store.put_selection(f"{prefix}/{i}", {"i": i})


def test_selection_writes_from_two_processes_are_never_lost(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_select_many, args=(str(tmp_path), p)) for p in "ab"]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert len(RunStore(tmp_path).selection()) == 80


def test_teacher_record_without_its_model_is_named(tmp_path: Path) -> None:
    """Records copied from another machine without models: a run needing that teacher says
    which file is missing and how to proceed, and nothing is overwritten."""
    out = tmp_path / "q"
    assert CliRunner().invoke(cli, ["reproduce", "--quick", "--out", str(out)]).exit_code == 0
    store = RunStore(out)
    project = next(spec for name, *_, spec in ablation_plan(quick_options(out), store)
                   if name == "project dense")  # fmt: skip
    teacher = project.teacher_spec()
    assert teacher is not None
    store.model_path(teacher).unlink()
    store.run_path(project).unlink()
    record = store.run_path(teacher).read_bytes()
    with pytest.raises(FileNotFoundError, match="teacher's trained model") as info:
        run_one(project, store, DataCache(), Counting(), device="cpu")
    assert str(store.model_path(teacher)) in str(info.value)
    assert store.run_path(teacher).read_bytes() == record


def test_a_run_waits_while_its_teacher_may_be_trained_elsewhere(tmp_path: Path) -> None:
    """A run that distils trains its teacher first if that is not done: while another worker
    trains that teacher, or the teacher is queued as a run of its own, the student waits (two
    processes would train one teacher side by side). Once the teacher's record is there, its
    students run side by side; given first on two workers, the student still runs after it."""
    out = tmp_path / "q"
    options = quick_options(out)
    (student,) = [spec for name, *_, spec in ablation_plan(options, RunStore(out))
                  if name == "project dense"]  # fmt: skip
    teacher = student.teacher_spec()
    assert teacher is not None
    store, key, other = RunStore(out), teacher.key(), replace(student, seed=student.seed + 7)
    assert _waits(student, store, busy={key}, queued=set())
    assert _waits(student, store, busy=set(), queued={key})
    assert _waits(teacher, store, busy={key}, queued=set())  # a student is training it
    assert not _waits(student, store, busy={other.key()}, queued=set())
    protocol = default_protocol(epochs=1, device="cpu", batch_size=16, max_train_samples=300)
    assert run_parallel(protocol, out, 2, specs=[student, teacher]) == []
    assert store.get(teacher) is not None and store.get(student) is not None
    assert not list((out / "runs").glob("*.tmp")) and not list((out / "models").glob("*.tmp"))
    assert not _waits(student, store, busy={key}, queued={key})  # done: nothing to wait for


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_command_leaves_no_worker_training(tmp_path: Path) -> None:
    """SIGKILL the command while its workers train: they end too (not orphaned, still training)."""
    code = "from app.cli import main; main()"
    args = ["reproduce", "--quick", "--workers", "2", "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and len(workers) < 2:
            workers = {c for c in _children(proc.pid) if "spawn_main" in _cmdline(c)}
            time.sleep(0.2)
        assert len(workers) == 2, "the workers never started"
    finally:
        proc.kill()
        proc.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
