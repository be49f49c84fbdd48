"""The report's diagnostics, on a store written by hand: what they conclude follows from the
numbers in it, so each case can be checked by eye."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freshcore.reproduce.report import headroom
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


def test_headroom_waits_for_every_method_of_a_row(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    _cell(store, "freshnets", [(0.01, 0.07)])
    summary, md = headroom(store, ["d"], ["hashednets", "freshnets"], ["1/64"])
    assert summary["rows"] == {} and "No row" in md
