#!/bin/sh
# Table v2 on mnist-rot (10 800 training images, 50 000 test images): the protocol of table2.sh.
# The harness trains every cell's seed 0 (both dropout rates) before any seed 1 or 2, so a
# stopped run of this script leaves a complete one-seed table. Resumable: rerun to continue.
cd "$(dirname "$0")/../.."  # the repository root
nice -n 5 .venv/bin/freshnets reproduce --datasets mnist-rot --factors 1/16,1/64 --seeds 3 \
  --epochs 8 --lrs 0.02 --dropouts 0.5,0 --threads 1 --device auto \
  --allocation '{"shape":"exponential","decay":0.5}' \
  --budget-policy '{"kind":"conv-boost","conv_factor":4}' --allocations '[]' \
  --methods dense,freshnets,freshnets-uniform,hashednets,equivalent,lowfreq,lrd --out runs/table2rot
