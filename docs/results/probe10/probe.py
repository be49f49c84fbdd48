"""Session 10's probe, outside the table's protocol: a cell of mnist-bg-img at 1/64 with a
larger conv share of the budget and 16 epochs, trained into its own store (runs/probe10), so
table v7's selection is untouched. Each variant starts from v7's choice for the cell (its
seed-0 record; freshnets' by default).

    python docs/results/probe10/probe.py '[{"conv_factor": 32, "train": {"epochs": 16}}]' '[0]' \
        [runs/table7/runs/<the chosen record>.json]
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from freshcore.reproduce.plan import RunSpec
from freshcore.reproduce.runner import DataCache, RunStore, run_one

FRESHNETS = "runs/table7/runs/mnist-bg-img_freshnets_1of64_s0_93860b7bb3f7.json"  # x8, 8 epochs


def one(job: tuple[dict[str, Any], int]) -> tuple[str, int, float, float]:
    import torch

    torch.set_num_threads(1)
    spec = RunSpec.from_dict({**job[0], "seed": job[1]})
    result = run_one(spec, RunStore("runs/probe10"), DataCache(), device="cpu")["result"]
    return spec.key(), job[1], result["val_error"], result["test_error"]


if __name__ == "__main__":
    base = json.loads(Path(sys.argv[3] if len(sys.argv) > 3 else FRESHNETS).read_text())["spec"]
    jobs = []
    for variant in json.loads(sys.argv[1]):
        spec = json.loads(json.dumps(base))
        spec["model"]["budget_policy"]["conv_factor"] = variant["conv_factor"]
        spec["train"].update(variant.get("train", {}))
        jobs += [(spec, seed) for seed in json.loads(sys.argv[2])]
    with ProcessPoolExecutor(2) as pool:
        for key, seed, val, test in pool.map(one, jobs):
            print(key, seed, f"val {100 * val:.2f} test {100 * test:.2f}", flush=True)
