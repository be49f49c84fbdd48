#!/usr/bin/env bash
# Probe: the conv/fc budget split at 1/64 on the background sets (freshnets, seed 0, v4's choice).
cd "$(dirname "$0")/../../.."
for cf in 2 8; do
.venv/bin/freshnets reproduce --out runs/probe-cf --workers 2 --datasets mnist-bg-img,mnist-bg-rand --methods freshnets --factors 1/64 \
  --seeds 1 --dropouts 0.5 --allocations '[{"shape":"exponential","decay":0.5},{"shape":"exponential","decay":0.25}]' \
  --budget-policy "{\"kind\": \"conv-boost\", \"conv_factor\": $cf}"
done
