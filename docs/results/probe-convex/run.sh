#!/usr/bin/env bash
# Probe (outside the table's protocol): seeds 1 and 2 of the convex 1/64 freshnets point that the
# second stage of table v5 rejected on validation (decay 1, dropout 0.5, conv-boost x8). Seed 0's
# run is table v5's own, copied in so it is reused by key.
cd "$(dirname "$0")/../../.."
mkdir -p runs/probe-convex/runs
cp runs/table5/runs/convex_freshnets_1of64_s0_2915fd1a39c1.json runs/probe-convex/runs/
.venv/bin/freshnets reproduce --out runs/probe-convex --workers 2 --datasets convex --methods freshnets \
  --factors 1/64 --seeds 3 --dropouts 0.5 --allocations '[{"shape":"exponential","decay":1.0}]' \
  --budget-policy '{"kind":"conv-boost","conv_factor":8}' --refine '{}'
