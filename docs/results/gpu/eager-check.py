"""Rerun on this machine, eagerly on the CPU, every seed of table cells trained elsewhere (a lent
GPU with CUDA graphs, say), and print both test errors: how far the machine moves a cell.

    .venv/bin/python docs/results/gpu/eager-check.py runs/allconv-rich2 runs/eager-check \
        mnist-rot/freshnets/1/16 mnist-rot/lowfreq/1/64

The reruns go to their own store (resumable), so the table's store keeps its records.
"""

import sys

import torch

from freshcore.reproduce.runner import DataCache, RunStore, final_specs, run_one


def main(source: str, target: str, cells: list[str]) -> None:
    torch.set_num_threads(1)
    src, dst, data = RunStore(source), RunStore(target), DataCache()
    specs = final_specs(src, [0, 1, 2])
    for cell in cells:
        for spec in specs[cell]:
            theirs = src.get(spec)
            ours = run_one(spec, dst, data, device="cpu")
            print(
                f"{cell} seed {spec.seed}: {theirs['machine'].get('gpu') or 'cpu'} "
                f"{100 * theirs['result']['test_error']:.2f}%, here "
                f"{100 * ours['result']['test_error']:.2f}% ({ours['result']['seconds']:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
