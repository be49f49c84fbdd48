"""Probe (outside the protocol): would table v5's second stage choose differently if it averaged
validation over seeds 0 and 1? For `freshnets` and `hashednets` at 1/64 on the five variants
where the stage could tell, train seed 1 of whichever split (x4 or x8) lacks it, then compare.

    python docs/results/probe-2seed/probe.py runs/table5 runs/probe-2seed
"""

import sys

from freshcore.reproduce.plan import Group
from freshcore.reproduce.runner import DataCache, Reporter, RunStore, run_one

table, out = RunStore(sys.argv[1]), RunStore(sys.argv[2])
data = DataCache()
selection = table.selection()
cells = ["convex", "mnist-rot", "mnist-bg-rand", "mnist-bg-img", "mnist-bg-img-rot"]
for dataset in cells:
    for method in ("hashednets", "freshnets"):
        entry = selection[f"{dataset}/{method}/1/64"]
        group = Group(dataset, method, "1/64", entry["arch"], entry.get("model", {}))
        *stage1, second = entry["candidates"]  # the second stage's one candidate comes last
        first = min(stage1, key=lambda c: c["val_error"])  # ties: the earlier, as `choose`
        vals = []
        for cand in (first, second):
            seeds = []
            for seed in (0, 1):
                spec = group.point_spec(seed, entry["base"], cand["overrides"])
                record = table.get(spec) or out.get(spec)
                if record is None:
                    record = run_one(spec, out, data, Reporter(), "cpu")
                seeds.append(record["result"]["val_error"])
            vals.append(seeds)
        (a0, a1), (b0, b1) = vals
        print(
            f"{dataset:17s} {method:11s} x4 val {100 * a0:5.2f} {100 * a1:5.2f} "
            f"x8 val {100 * b0:5.2f} {100 * b1:5.2f}  one seed: {'x8' if b0 < a0 else 'x4'}  "
            f"two seeds: {'x8' if b0 + b1 < a0 + a1 else 'x4'}",
            flush=True,
        )
