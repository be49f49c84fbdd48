"""Each chosen cell of two stores side by side: its test error (%) over the given seeds before
and after a change of protocol, whether the choice changed, and Welch's p between the two; the
last line, each method's mean over the rows. Run from the repository root with both stores
extracted ("How to reproduce"), e.g. the confirm check against the three-stage choices on
seeds 3 and 4, which neither choice saw:
    .venv/bin/python docs/results/allconv-confirm/compare.py \\
        runs/allconv-seeds5 runs/allconv-confirm --seeds 3,4 --methods freshnets,lowfreq
Reads the stores' records only (no training); a cell with a missing run is left out."""

from __future__ import annotations

import argparse
import statistics

from freshcore.reproduce.report import welch_p_of
from freshcore.reproduce.runner import RunStore, final_specs


def errors(store: RunStore, seeds: list[int]) -> dict[str, tuple[dict, list[float]]]:
    """Cell name -> (its chosen point, its test errors in % on ``seeds``), complete cells only."""
    out = {}
    chosen = {name: entry["chosen"] for name, entry in store.selection().items()}
    for name, specs in final_specs(store, seeds).items():
        records = [store.get(spec) for spec in specs]
        if all(r is not None and r["result"]["test_error"] is not None for r in records):
            out[name] = (chosen[name], [100 * r["result"]["test_error"] for r in records])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="freshnets,lowfreq")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    before = errors(RunStore(args.before), seeds)
    after = errors(RunStore(args.after), seeds)
    names = sorted(n for n in after if n in before and n.split("/")[1] in methods)
    print(f"| cell | before (seeds {args.seeds}) | after | choice changed | Welch p |")
    print("|---|---|---|---|---|")
    for name in names:
        (old_point, old), (new_point, new) = before[name], after[name]
        p = welch_p_of(old, new)
        print(
            f"| {name} | {statistics.mean(old):.2f} | {statistics.mean(new):.2f} "
            f"| {'yes' if old_point != new_point else 'no'} "
            f"| {'–' if p is None else f'{p:.2g}'} |"
        )
    for method in methods:
        rows = [n for n in names if n.split("/")[1] == method]
        if rows:
            old = statistics.mean(statistics.mean(before[n][1]) for n in rows)
            new = statistics.mean(statistics.mean(after[n][1]) for n in rows)
            print(f"\n{method}: mean over its {len(rows)} rows {old:.3f} -> {new:.3f}")
    if len(methods) == 2:  # the head-to-head, before and after, over the rows both complete
        first, second = methods
        for label, cells in (("before", before), ("after", after)):
            rows = {n.replace(f"/{first}/", "/") for n in names if n.split("/")[1] == first}
            rows = {r for r in rows if r.replace("/", f"/{second}/", 1) in names}
            lower = sum(
                statistics.mean(cells[r.replace("/", f"/{first}/", 1)][1])
                < statistics.mean(cells[r.replace("/", f"/{second}/", 1)][1])
                for r in rows
            )
            print(f"{label}: {first} lower than {second} in {lower} of {len(rows)} rows")


if __name__ == "__main__":
    main()
