"""The probes of sessions 10 and 11, outside the table's protocol: table cells trained again
from their chosen seed-0 record with a few settings changed, into a store of their own
(PROBE_STORE, default runs/probe10), so no table's selection is touched.

    python docs/results/probe10/probe.py VARIANTS SEEDS [RECORD ...]

VARIANTS is a JSON list of changes, each with an optional "conv_factor" (the conv-boost factor
of the budget split), "model" (build_model keywords) and "train" (TrainConfig fields); every
variant is trained on every seed in SEEDS (a JSON list) from every RECORD (default: table v7's
freshnets choice on mnist-bg-img 1/64). Session 10:

    python docs/results/probe10/probe.py '[{"conv_factor": 32, "train": {"epochs": 16}}]' '[0]'

Session 11 (learning rate and 32 epochs, from table v9's choices; docs/results/probe11/):

    PROBE_STORE=runs/probe11 python docs/results/probe10/probe.py \\
        '[{"train": {"lr": 0.01}}, {"train": {"lr": 0.04}}, {"train": {"epochs": 32}}]' '[0]' \\
        runs/table9/runs/<each chosen record>.json
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from freshcore.reproduce.plan import RunSpec
from freshcore.reproduce.runner import DataCache, RunStore, run_one

FRESHNETS = "runs/table7/runs/mnist-bg-img_freshnets_1of64_s0_93860b7bb3f7.json"  # x8, 8 epochs
STORE = os.environ.get("PROBE_STORE", "runs/probe10")


def one(job: tuple[dict[str, Any], int]) -> tuple[str, int, float, float]:
    import torch

    torch.set_num_threads(1)
    spec = RunSpec.from_dict({**job[0], "seed": job[1]})
    result = run_one(spec, RunStore(STORE), DataCache(), device="cpu")["result"]
    return spec.key(), job[1], result["val_error"], result["test_error"]


if __name__ == "__main__":
    jobs = []
    for record in sys.argv[3:] or [FRESHNETS]:
        base = json.loads(Path(record).read_text())["spec"]
        for variant in json.loads(sys.argv[1]):
            spec = json.loads(json.dumps(base))
            if "conv_factor" in variant:
                spec["model"]["budget_policy"]["conv_factor"] = variant["conv_factor"]
            spec["model"].update(variant.get("model", {}))
            spec["train"].update(variant.get("train", {}))
            jobs += [(spec, seed) for seed in json.loads(sys.argv[2])]
    with ProcessPoolExecutor(2) as pool:
        for key, seed, val, test in pool.map(one, jobs):
            print(key, seed, f"val {100 * val:.2f} test {100 * test:.2f}", flush=True)
