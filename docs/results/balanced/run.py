"""Balanced bucket assignment in FreshNets conv layers, under table v3's protocol.

The same training as table v3, the allocation's decay tuned on validation as there, dropout fixed
at 0 (every MNIST and mnist-rot `freshnets` cell of table v3 chose 0), and `balanced=True`
(`FreshConv2d`: each band's coefficients dealt evenly to its buckets, so a band at rate 1 is
stored exactly). The hashed counterpart is table v3's own runs: restricted to dropout 0, its
choices are those table v3 made, so its 3-seed results are table v3's.

    .venv/bin/python docs/results/balanced/run.py [--workers 2] [--out runs/balanced]

Resumable like every `freshnets reproduce` store.
"""

from __future__ import annotations

import argparse
import time

from freshcore import reproduce as rp
from freshcore.reproduce.parallel import run_parallel
from freshcore.reproduce.plan import Group

DECAYS = (0.25, 0.5, 1.0, 2.0)
CELLS = "mnist-rot:1/16,mnist-rot:1/64,mnist:1/16,mnist:1/64"
MODEL = {
    "allocation": {"shape": "exponential", "decay": 0.5},
    "budget_policy": {"kind": "conv-boost", "conv_factor": 4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/balanced")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cells", default=CELLS, help="data set:factor pairs, in run order")
    args = parser.parse_args()
    started = time.perf_counter()
    protocol = rp.default_protocol(epochs=8, lrs=(0.02,), dropouts=(0.0,), device=args.device)
    protocol.model_grid = {
        "freshnets": [
            {"allocation": {"shape": "exponential", "decay": d}, "balanced": True} for d in DECAYS
        ]
    }
    cells = [tuple(c.split(":")) for c in args.cells.split(",")]
    groups = [
        Group(dataset, "freshnets", factor, "mnist-cnn", dict(MODEL)) for dataset, factor in cells
    ]
    failures = run_parallel(protocol, args.out, args.workers, groups, seeds=[0, 1, 2])
    options = rp.Options(
        datasets=list(dict.fromkeys(d for d, _ in cells)),
        methods=["freshnets"],
        factors=list(dict.fromkeys(f for _, f in cells)),
        out=args.out,
        protocol=protocol,
        **MODEL,
    )
    command = "docs/results/balanced/run.py --cells " + args.cells
    summary = rp.write_report(options, command, time.perf_counter() - started, failures)
    for name, cell in summary["cells"].items():
        print(name, cell["chosen"], cell["test_error"], flush=True)


if __name__ == "__main__":
    main()
