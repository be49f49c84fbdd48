"""A third stage, outside the table: each budgeted cell of a store retrained with a larger rate
for the network's first layer (`conv-boost`'s `stem_factor`), chosen on validation only.

Session 18 found the first layer a bottleneck of the hashed methods at width 1; the table's
second stage then picked narrow virtual networks, and the two were never combined. For each
cell and stem factor this trains the tuning seed (0) of the cell's final choice with that
factor. Where one beats the choice's validation error, the lowest such is trained on every
seed. Test errors are printed, never used to choose. At the end: the data sets' rows at that
factor, as the report's table and standings, every budgeted cell as this stage chose it (the
other methods, `equivalent`, as the store has them).

    .venv/bin/python docs/results/allconv-stem2/stem-probe.py runs/allconv-rich2 \
        runs/allconv-stem2 --stems 4,16 --factor 1/64 --datasets mnist-rot,convex

The runs go to their own store (resumable; several processes may share it, one per data set
say), so the table's store keeps its records.
"""

import argparse
import statistics
from dataclasses import replace
from typing import Any

import torch

from freshcore.reproduce.plan import BUDGETED_METHODS, COMPRESSED_METHODS, RunSpec
from freshcore.reproduce.report import collect_cells, markdown_table, standings, summarise
from freshcore.reproduce.runner import DataCache, RunStore, final_specs, run_one

SEEDS = [0, 1, 2]


def boosted(spec: RunSpec, stem: float) -> RunSpec:
    """The same run with the first layer's rate ``stem`` times the others' (capped at 1)."""
    policy = {"kind": "conv-boost", "conv_factor": 1, "stem_factor": stem}
    return replace(spec, model={**spec.model, "budget_policy": policy})


def percent(record: dict[str, Any], key: str) -> float:
    return 100 * record["result"][key]


def probe(
    cell: str,
    specs: list[RunSpec],
    src: RunStore,
    dst: RunStore,
    data: DataCache,
    stems: list[float],
) -> list[dict[str, Any]]:
    """One cell's runs as this stage chooses them: with the stem factor validation keeps, or
    the table's own where none beats the choice."""
    table = [src.get(spec) for spec in specs]
    if any(r is None for r in table):
        raise SystemExit(f"{cell}: the table's runs are not all finished in {src.root}")
    best, best_val, runs = None, percent(table[0], "val_error"), table
    for stem in stems:
        record = run_one(boosted(specs[0], stem), dst, data, device="cpu")
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
    if best is not None:
        runs = [run_one(boosted(s, best), dst, data, device="cpu") for s in specs]
    errors = [percent(r, "test_error") for r in runs]
    print(
        f"{cell}: {'the choice' if best is None else f'stem x{best:g}'} "
        f"{statistics.fmean(errors):.2f} ± {statistics.stdev(errors):.2f} (3 seeds, test %)",
        flush=True,
    )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the table's store (its final choices)")
    parser.add_argument("target", help="the store for the probe's runs")
    parser.add_argument("--stems", default="4,16", help="stem factors to try, comma-separated")
    parser.add_argument("--factor", default="1/64")
    parser.add_argument("--datasets", required=True, help="comma-separated")
    parser.add_argument(
        "--methods",
        default=",".join(BUDGETED_METHODS),
        help="comma-separated, to split a data set between processes; the table and standings "
        "are printed only when every budgeted method is probed",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    src, dst, data = RunStore(args.source), RunStore(args.target), DataCache()
    stems = [float(s) for s in args.stems.split(",")]
    datasets, methods = args.datasets.split(","), args.methods.split(",")
    specs = final_specs(src, SEEDS)
    cells = collect_cells(src, SEEDS)
    for dataset in datasets:
        names = [
            f"{dataset}/{m}/{args.factor}"
            for m in methods
            if f"{dataset}/{m}/{args.factor}" in specs
        ]
        for name in names:
            runs = probe(name, specs[name], src, dst, data, stems)
            cells[name]["test_error"] = summarise([r["result"]["test_error"] for r in runs])
    if set(BUDGETED_METHODS) - set(methods):
        return
    skipped = {  # cells the table could not store (lrd at 1/64 on mnist-allconv)
        f"{d}/{m}/{args.factor}": "cannot reach"
        for d in datasets
        for m in COMPRESSED_METHODS
        if f"{d}/{m}/{args.factor}" not in cells
    }
    table = (cells, datasets, ["dense", *COMPRESSED_METHODS], [args.factor], len(SEEDS), skipped)
    print()
    print(markdown_table(*table))
    print()
    print(standings(*table)[1])


if __name__ == "__main__":
    main()
