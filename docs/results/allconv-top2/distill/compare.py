"""Distillation from the dense network on the conv-heavy network (`mnist-allconv`, MNIST): the
current table's choice of its four best compressed methods by mean rank (`freshnets`,
`lowfreq`, `hashednets`, `freshnets-uniform`) at 1/16 and 1/64, trained again on seeds 0 to 2
with the dense cell's choice of the same seed as teacher, nothing else changed.

Why: distillation was the largest single lever at 1/64 on `mnist-cnn` (the ablations of
docs/results.md) and a second-stage candidate of its tables, but the conv-heavy tables never
tried it. This says what it is worth there, for every method alike, and whether it takes MNIST
1/16 under the issue's 0.70%.

A diagnostic, not the table: it never feeds a choice, and its runs (the dense teachers too,
whose models the table's tarballs do not hold) go to their own store. Run from the repository
root with the current table's store extracted ("How to reproduce" in docs/results.md) and this
folder's runs in runs/distill:
    tar -C runs -xzf docs/results/allconv-top2/distill/runs.tar.gz
    .venv/bin/python docs/results/allconv-top2/distill/compare.py --workers 2
It trains what is missing (on this CPU, two at a time with ``--workers 2``: 10 min a dense
teacher, 4 to 18 min a student) and prints a Markdown table of test error (%), mean ± std over
the seeds, with Welch's p against the table's runs.

Session 31's variants (``results.md`` beside this file): ``--lr-scale 0.5 --out
runs/distill-lr2`` and ``--alpha 0.5 --out runs/distill-a05``, both with ``--methods
freshnets,lowfreq,hashednets``; their records are in ``runs-lr2.tar.gz`` and ``runs-a05.tar.gz``
(``tar -C runs -xzf ...``)."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from freshcore.reproduce.parallel import run_parallel
from freshcore.reproduce.plan import TEACHER_KEY, Group, Protocol, RunSpec
from freshcore.reproduce.report import welch_p_of
from freshcore.reproduce.runner import RunStore, dense_cell

DATASET = "mnist"
METHODS = ("freshnets", "lowfreq", "hashednets", "freshnets-uniform")
FACTORS = ("1/16", "1/64")
SEEDS = [0, 1, 2]
ALPHA, TEMPERATURE = 0.9, 4.0  # as in the mnist-cnn tables


def specs(
    table: RunStore, name: str, distil: bool, lr_scale: float = 1.0, alpha: float = ALPHA
) -> list[RunSpec]:
    """Seeds 0 to 2 of a table cell's choice, distilling from the dense choice if ``distil``
    (the student's learning rate times ``lr_scale``, the soft targets' weight ``alpha``)."""
    selection = table.selection()
    entry = selection[name]
    point: dict[str, Any] = dict(entry["chosen"])
    if distil:
        point |= {
            "distill_alpha": alpha,
            "distill_temperature": TEMPERATURE,
            TEACHER_KEY: selection[dense_cell(DATASET)]["chosen"],
        }
        if lr_scale != 1.0:  # every choice has its lr: the table tunes it (`--lrs`)
            point["lr"] *= lr_scale
    group = Group(entry["dataset"], entry["method"], entry["factor"], entry["arch"])
    group.model = entry.get("model", {})
    return [group.point_spec(seed, entry["base"], point) for seed in SEEDS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="runs/allconv-top2", help="the current table's store")
    parser.add_argument("--out", default="runs/distill", help="this diagnostic's store")
    parser.add_argument("--workers", type=int, default=1, help="processes training at once")
    parser.add_argument(
        "--lr-scale", type=float, default=1.0, help="the students' learning rate, times this"
    )
    parser.add_argument("--alpha", type=float, default=ALPHA, help="the soft targets' weight")
    parser.add_argument("--methods", default=",".join(METHODS), help="students' methods")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table, out = RunStore(args.table), RunStore(args.out)
    methods = args.methods.split(",")
    cells = [f"{DATASET}/{method}/{factor}" for method in methods for factor in FACTORS]
    distilled_specs = {name: specs(table, name, True, args.lr_scale, args.alpha) for name in cells}
    todo = [s for name in cells for s in distilled_specs[name] if out.get(s) is None]
    if todo:
        base = table.selection()[cells[0]]["base"]
        failures = run_parallel(Protocol(base=base, grid=[{}]), out.root, args.workers, specs=todo)
        for spec, error in failures:
            raise RuntimeError(f"run {spec.key()} failed") from error

    def errors(store: RunStore, runs: list[RunSpec]) -> list[float]:
        return [100 * store.get(s)["result"]["test_error"] for s in runs]

    def cell(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    print("| method | factor | the table (seeds 0-2) | distilled | difference | Welch p |")
    print("|---|---|---|---|---|---|")
    for name in cells:
        plain = errors(table, specs(table, name, False))
        distilled = errors(out, distilled_specs[name])
        p = welch_p_of(distilled, plain)
        _, method, factor = name.split("/", 2)
        print(
            f"| {method} | {factor} | {cell(plain)} | {cell(distilled)} | "
            f"{statistics.mean(distilled) - statistics.mean(plain):+.2f} | "
            f"{'–' if p is None else f'{p:.2f}'} |"
        )
    # The teachers were trained here; the table's dense runs on whatever machine ran the table.
    teachers = [s.teacher_spec() for s in distilled_specs[cells[0]]]
    print(f"\nThe teachers (dense, seeds 0-2, this store): {cell(errors(out, teachers))}%; the")
    print(f"table's dense runs of the same seeds: {cell(errors(table, teachers))}%.")


if __name__ == "__main__":
    main()
