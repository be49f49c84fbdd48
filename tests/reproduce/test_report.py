"""The report's diagnostics, on a store written by hand: what they conclude follows from the
numbers in it, so each case can be checked by eye."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freshcore.reproduce.report import (
    describe_seconds,
    headroom,
    running_time,
    selection_table,
)
from freshcore.reproduce.runner import RunStore


def _cell(store: RunStore, method: str, candidates: list[tuple[float, float]]) -> None:
    """A cell whose candidates have these (validation, test) errors; the first is chosen."""
    entry = {"dataset": "d", "method": method, "factor": "1/64", "candidates": []}
    for i, (val, test) in enumerate(candidates):
        key = f"d_{method}_1of64_s0_{i}"
        record = {"result": {"val_error": val, "test_error": test}}
        (store.root / "runs" / f"{key}.json").write_text(json.dumps(record))
        entry["candidates"].append({"overrides": {"lr": i}, "key": key, "val_error": val})
    entry["chosen"] = {"lr": 0}
    store.put_selection(f"d/{method}/1/64", entry)


def test_headroom_names_rows_no_freshnets_candidate_could_win(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    _cell(store, "hashednets", [(0.01, 0.05), (0.02, 0.03)])
    _cell(store, "freshnets", [(0.01, 0.07), (0.03, 0.06)])
    summary, md = headroom(store, ["d"], ["hashednets", "freshnets"], ["1/64"])
    row = summary["rows"]["d 1/64"]
    assert row["hashednets"] == pytest.approx({"chosen": 5.0, "best": 3.0})
    assert row["freshnets"] == pytest.approx({"chosen": 7.0, "best": 6.0})
    assert summary["freshnets_out_of_reach"] == ["d 1/64"]  # 6.0 above hashednets' chosen 5.0
    assert "| d 1/64 | 5.00 / 3.00 | 7.00 / 6.00 |" in md

    _cell(store, "freshnets", [(0.01, 0.07), (0.03, 0.04)])  # a candidate below 5.0 exists
    summary, md = headroom(store, ["d"], ["hashednets", "freshnets"], ["1/64"])
    assert summary["freshnets_out_of_reach"] == []
    assert "the tuning seed: none." in md


def test_selection_table_says_how_hard_the_chosen_model_compresses_what_it_rebuilds(
    tmp_path: Path,
) -> None:
    """At 1/16, a quarter-width mnist-cnn keeps 92% of its own weights: the row no longer
    compares compression methods, and the table says so beside the choice, with how the rest
    is dropped: `lowfreq` truncates (zeros), `freshnets` at full width hashes."""
    store = RunStore(tmp_path)
    _cell(store, "lowfreq", [(0.01, 0.05)])  # no "arch": a store older than the key
    for method, width in [("lowfreq", 0.25), ("freshnets", 1), ("equivalent", 1)]:
        entry = {"dataset": "digits", "method": method, "factor": "1/16", "arch": "mnist-cnn"}
        entry |= {"model": {}, "candidates": [], "chosen": {"lr": 0.1}}
        if width != 1:
            entry["chosen"]["model"] = {"width": width}
        store.put_selection(f"digits/{method}/1/16", entry)
    rows = {
        line.split(" | ")[0][2:]: tuple(line.split(" | ")[2:4])
        for line in selection_table(store).splitlines()[2:]
    }
    assert rows == {
        "d/lowfreq/1/64": ("–", "–"),
        "digits/equivalent/1/16": ("1.000", "0% / 0%"),
        "digits/freshnets/1/16": ("0.063", "0% / 100%"),
        "digits/lowfreq/1/16": ("0.917", "5% / 31%"),  # its fc layers are HashedNets
    }


def test_headroom_waits_for_every_method_of_a_row(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    _cell(store, "freshnets", [(0.01, 0.07)])
    summary, md = headroom(store, ["d"], ["hashednets", "freshnets"], ["1/64"])
    assert summary["rows"] == {} and "No row" in md


def test_running_time_counts_parallel_runs_once_and_pauses_not_at_all() -> None:
    """Three runs: two side by side (10:00-10:10 and 10:05-10:15), a pause of a day, then one of
    5 minutes on a GPU: 20 minutes busy, though the runs add up to 25 and the span is a day."""
    cpu = {"cpu": "EPYC", "cpu_count": 2, "threads": 1, "gpu": None, "torch": "2.13"}
    gpu = {**cpu, "gpu": "H200", "cuda_graph": True}

    def record(finished: str, seconds: float, machine: dict) -> dict:
        return {"finished_at": finished, "result": {"seconds": seconds}, "machine": machine}

    records = [
        record("2026-11-27T10:15:00+00:00", 600, cpu),
        record("2026-11-27T10:10:00+00:00", 600, cpu),
        record("2026-11-28T10:05:00+00:00", 300, gpu),
        {"result": {"seconds": 60}, "machine": cpu},  # an older record, without a finish time
    ]
    running = running_time(records)
    assert running["busy_s"] == pytest.approx(1200)
    assert running["first_started"] == "2026-11-27T10:00:00+00:00"
    assert running["last_finished"] == "2026-11-28T10:05:00+00:00"
    assert running["runs_without_time"] == 1
    assert running["machines"] == [
        {"machine": "EPYC (2 cores, 1 torch thread), GPU: none, torch 2.13", "runs": 3},
        {
            "machine": "EPYC (2 cores, 1 torch thread), GPU: H200 with CUDA graphs, torch 2.13",
            "runs": 1,
        },
    ]
    assert describe_seconds(running["busy_s"]) == "20 min 0 s"
    assert describe_seconds(9264.3) == "2 h 34 min"
    assert running_time([])["first_started"] is None
