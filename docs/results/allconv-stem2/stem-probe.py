"""A third stage, outside the table: each chosen cell of a store retrained with a larger rate for
the network's first layer (`conv-boost`'s `stem_factor`), chosen on validation only.

Session 18 found the first layer a bottleneck of the hashed methods at width 1; the table's
second stage then picked narrow virtual networks, and the two were never combined. For each
cell and stem factor this trains the tuning seed (0) of the cell's final choice with that
factor. Where one beats the choice's validation error, the lowest such is trained on every
seed; the test errors of both are printed, never used to choose.

    .venv/bin/python docs/results/allconv-stem2/stem-probe.py runs/allconv-rich2 \
        runs/allconv-stem2 4,16 mnist-rot/freshnets/1/64 mnist-rot/lowfreq/1/64

The runs go to their own store (resumable), so the table's store keeps its records.
"""

import statistics
import sys
from dataclasses import replace
from typing import Any

import torch

from freshcore.reproduce.plan import RunSpec
from freshcore.reproduce.runner import DataCache, RunStore, final_specs, run_one


def boosted(spec: RunSpec, stem: float) -> RunSpec:
    """The same run with the first layer's rate ``stem`` times the others' (capped at 1)."""
    policy = {"kind": "conv-boost", "conv_factor": 1, "stem_factor": stem}
    return replace(spec, model={**spec.model, "budget_policy": policy})


def percent(record: dict[str, Any], key: str) -> float:
    return 100 * record["result"][key]


def main(source: str, target: str, stems: list[float], cells: list[str]) -> None:
    torch.set_num_threads(1)
    src, dst, data = RunStore(source), RunStore(target), DataCache()
    specs = final_specs(src, [0, 1, 2])
    for cell in cells:
        table = [src.get(spec) for spec in specs[cell]]
        best, best_val = None, percent(table[0], "val_error")
        for stem in stems:
            record = run_one(boosted(specs[cell][0], stem), dst, data, device="cpu")
            val = percent(record, "val_error")
            print(
                f"{cell} stem x{stem:g}, seed 0: val {val:.2f} / test "
                f"{percent(record, 'test_error'):.2f}% (the choice: val "
                f"{percent(table[0], 'val_error'):.2f} / test "
                f"{percent(table[0], 'test_error'):.2f}%)",
                flush=True,
            )
            if val < best_val:
                best, best_val = stem, val
        ours = [percent(r, "test_error") for r in table]
        line = f"{cell}: choice {statistics.fmean(ours):.2f} ± {statistics.stdev(ours):.2f}"
        if best is not None:
            runs = [run_one(boosted(s, best), dst, data, device="cpu") for s in specs[cell]]
            errors = [percent(r, "test_error") for r in runs]
            mean, std = statistics.fmean(errors), statistics.stdev(errors)
            line += f"; stem x{best:g} {mean:.2f} ± {std:.2f}"
        print(line + " (3 seeds, test %)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [float(s) for s in sys.argv[3].split(",")], sys.argv[4:])
