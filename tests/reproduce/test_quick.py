"""The harness end to end on real data (scikit-learn's digits): train, skip, resume, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from freshcore.reproduce import Reporter, RunSpec, RunStore, quick_options, reproduce
from freshcore.reproduce.runner import DataCache, run_one


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
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == before
    assert again["cells"]["digits/freshnets/1/16"] == fresh

    (out / "results.md").unlink()
    result = CliRunner().invoke(cli, ["reproduce", "--quick", "--report-only", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| digits | 1/16 |" in (out / "results.md").read_text()


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


def test_defaults_are_the_tables_protocol(tmp_path: Path) -> None:
    """Without options the harness runs table v2's protocol (docs/results.md); null restores
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
