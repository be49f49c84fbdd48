"""Session 14's probe: the same methods on a network whose weights are almost all conv filters.

`mnist-cnn` keeps 90% of its weights in fc-150, which `hashednets`, `lowfreq` and both FreshNets
methods store the same way (HashedNets), so much of the table compares identical fc layers. The
`mnist-allconv` preset replaces fc-150 by a third 5x5 conv layer and a global average pool: over
99% of its weights are conv filters, the regime the paper's conv compression is for. Batch norm
follows each conv: without it the dense network trained to 19.8% test error on mnist-rot in 8
epochs, worse than HashedNets at 1/16 (10.4%). Outside the table's protocol: one seed, no
tuning, the table's base training (SGD, Nesterov, lr 0.02, cosine, batch 64) for 8 epochs,
every method with the same budget policy (the same rate for every layer) and FreshNets with its
default allocation.

    python docs/results/probe14/convheavy.py DATASET FACTOR[,FACTOR...] > log

Prints one line per run (validation and test error in %, stored values, seconds).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor

from freshcore.reproduce.plan import default_protocol

METHODS = ("equivalent", "hashednets", "lowfreq", "freshnets-uniform", "freshnets")
# the table's base training, at its learning rate, one thread per process
TRAIN = {**default_protocol(epochs=8).base, "lr": 0.02, "device": "cpu", "num_threads": 1}


def one(job: tuple[str, str, str]) -> str:
    import freshcore
    from freshcore.data import load

    dataset, method, factor = job
    data = load(dataset)
    model = freshcore.build_model(
        "mnist-allconv", method=method, compression=1.0 if method == "dense" else factor, seed=0
    )
    started = time.perf_counter()
    result = freshcore.train(model, data, freshcore.TrainConfig.from_dict({**TRAIN, "seed": 0}))
    best = max(result.history, key=lambda m: m.val_accuracy)
    stored = freshcore.size_report(model).stored_parameters
    return (
        f"{dataset} {method} {factor}: val {100 * (1 - best.val_accuracy):.2f} "
        f"test {100 * (1 - result.test_accuracy):.2f} stored {stored} "
        f"({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    name, factors = sys.argv[1], sys.argv[2].split(",")
    jobs = [(name, "dense", "1")] + [(name, m, f) for f in factors for m in METHODS]
    with ProcessPoolExecutor(2) as pool:
        for line in pool.map(one, jobs):
            print(line, flush=True)
