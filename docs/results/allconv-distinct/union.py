"""What the confirm check would choose from the union of the plain shortlist (`--confirm 3`)
and the one spread over allocations (`--confirm-distinct allocation`): up to five candidates a
cell, all of whose runs on seeds 0 to 2 are in the session-26 store. Reads records only (no
training); prints each `freshnets` cell's test error (%, seeds 0-2) under the plain check and
under the union, and the mean over the rows. Run from the repository root with the store
extracted ("How to reproduce"):
    .venv/bin/python docs/results/allconv-distinct/union.py runs/allconv-distinct"""

from __future__ import annotations

import statistics
import sys
from functools import partial
from typing import Any

from freshcore.reproduce.plan import Group, default_protocol
from freshcore.reproduce.runner import RunStore, shortlist

SEEDS = (0, 1, 2)


def mean(
    store: RunStore, group: Group, base: dict[str, Any], point: dict[str, Any], key: str
) -> float:
    """A point's mean result ``key`` over `SEEDS`."""
    specs = [group.point_spec(s, base, point) for s in SEEDS]
    return statistics.mean(store.get(spec)["result"][key] for spec in specs)


def main() -> None:
    store = RunStore(sys.argv[1])
    plain = default_protocol(confirm=3)
    spread = default_protocol(confirm=3, confirm_distinct=("allocation",))
    means: dict[str, list[float]] = {"plain": [], "union": []}
    print("| cell | candidates | plain | union | changed |\n|---|---|---|---|---|")
    for name, entry in sorted(store.selection().items()):
        if entry["method"] != "freshnets":
            continue
        group = Group(entry["dataset"], "freshnets", entry["factor"], entry["arch"], entry["model"])
        candidates = [
            (c["overrides"], {"result": {"val_error": c["val_error"]}}) for c in entry["candidates"]
        ]

        val = partial(mean, store, group, entry["base"], key="val_error")
        short = shortlist(plain, candidates)
        union = short + [p for p in shortlist(spread, candidates) if p not in short]
        chosen = {"plain": min(short, key=val), "union": min(union, key=val)}
        tests = {
            k: 100 * mean(store, group, entry["base"], p, "test_error") for k, p in chosen.items()
        }
        for k, value in tests.items():
            means[k].append(value)
        changed = "yes" if chosen["plain"] != chosen["union"] else ""
        row = [name, str(len(union)), f"{tests['plain']:.2f}", f"{tests['union']:.2f}", changed]
        print("| " + " | ".join(row) + " |")
    print(", ".join(f"{k}: mean {statistics.mean(v):.3f}" for k, v in means.items()))


if __name__ == "__main__":
    main()
