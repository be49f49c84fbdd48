"""`freshnets` and `lowfreq` trained like for like on the three 1/16 rows `lowfreq` keeps in the
current table (MNIST, mnist-bg-img, convex): the same half-width network, 16 epochs, the same
first-layer rate (x4 or x16), `freshnets` with its cut-off allocation (decay 2, bands under rate
0.25 dropped) and balanced buckets, so that what differs is the method and not the search path.

Why: on these rows validation picked `lowfreq`'s half-width network, and on that network
`freshnets`' cut-off allocation stores as many values in every frequency band as `lowfreq`
keeps; the two differ only in each layer's partial band, which `freshnets` hashes and `lowfreq`
truncates (at x16, 220 of the 38,800 rebuilt conv coefficients). The rows say whether the
method still matters there.

A diagnostic, not the table: it never feeds a choice, and its `freshnets` runs (those the table
did not train) go to their own store. `lowfreq`'s runs are the table's, where its check or its
seeds trained them. Run from the repository root with the current table's store extracted
("How to reproduce" in docs/results.md) and this folder's runs in runs/like-for-like:
    tar -C runs -xzf docs/results/allconv-top2/like-for-like/runs.tar.gz
    .venv/bin/python docs/results/allconv-top2/like-for-like/compare.py
It trains what is missing (on this CPU, 5 to 8 min a MNIST run) and prints a Markdown table of
test error (%), mean ± std over the row's seeds, with Welch's p."""

from __future__ import annotations

import argparse
import statistics

import torch

from freshcore.reproduce.plan import RunSpec
from freshcore.reproduce.report import welch_p_of
from freshcore.reproduce.runner import DataCache, Reporter, RunStore, run_one

# (data set, first-layer rate, seeds): 5 seeds where the table has lowfreq's seeds 3 and 4
ROWS = [
    ("mnist", 4.0, [0, 1, 2]),
    ("mnist", 16.0, [0, 1, 2, 3, 4]),
    ("mnist-bg-img", 4.0, [0, 1, 2]),
    ("mnist-bg-img", 16.0, [0, 1, 2]),
    ("convex", 4.0, [0, 1, 2]),
    ("convex", 16.0, [0, 1, 2]),
]
CUT_OFF = {"shape": "exponential", "decay": 2.0, "min_rate": 0.25}


def spec(base: dict, dataset: str, method: str, stem: float, seed: int) -> RunSpec:
    """The current table's run of ``method`` at 1/16 with this first-layer rate, trained with
    the table's ``base`` settings at lr 0.02 for 16 epochs."""
    model: dict = {"width": 0.5}
    if method == "freshnets":
        model |= {"allocation": CUT_OFF, "balanced": True}
    model["budget_policy"] = {"kind": "conv-boost", "conv_factor": 1, "stem_factor": stem}
    train = {**base, "lr": 0.02, "epochs": 16}
    return RunSpec(dataset, method, "1/16", seed, "mnist-allconv", train, model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="runs/allconv-top2", help="the current table's store")
    parser.add_argument("--out", default="runs/like-for-like", help="this diagnostic's store")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table, out, data = RunStore(args.table), RunStore(args.out), DataCache()
    base = table.selection()["mnist/lowfreq/1/16"]["base"]  # the table's training settings

    def test_error(s: RunSpec) -> float:
        record = table.get(s) or out.get(s) or run_one(s, out, data, Reporter(), device="cpu")
        return 100 * record["result"]["test_error"]

    print("| row | first-layer rate | seeds | freshnets | lowfreq | difference | Welch p |")
    print("|---|---|---|---|---|---|---|")
    for dataset, stem, seeds in ROWS:
        fresh = [test_error(spec(base, dataset, "freshnets", stem, s)) for s in seeds]
        low = [test_error(spec(base, dataset, "lowfreq", stem, s)) for s in seeds]
        cells = [f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" for v in (fresh, low)]
        p = welch_p_of(fresh, low)
        print(
            f"| {dataset} 1/16 | x{stem:g} | {len(seeds)} | {cells[0]} | {cells[1]} | "
            f"{statistics.mean(fresh) - statistics.mean(low):+.2f} | "
            f"{'–' if p is None else f'{p:.2f}'} |"
        )


if __name__ == "__main__":
    main()
