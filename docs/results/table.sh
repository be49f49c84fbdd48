#!/bin/sh
# The real table: MNIST then mnist-rot, every method at 1/16 and 1/64, 3 seeds, full training
# split, 5 epochs, lr chosen on validation from {0.05, 0.02} (seed 0), then the ablations with the
# chosen rates. Defaults from the probe (runs/probe): exponential decay 0.5, conv-boost x4 for
# every method that splits a budget. Resumable: rerun this script to continue.
cd "$(dirname "$0")/../.."  # the repository root
COMMON="--methods dense,freshnets,freshnets-uniform,hashednets,equivalent,lowfreq,lrd \
  --factors 1/16,1/64 --seeds 3 --epochs 5 --lrs 0.05,0.02 --threads 1 --device auto \
  --allocation {\"shape\":\"exponential\",\"decay\":0.5} \
  --budget-policy {\"kind\":\"conv-boost\",\"conv_factor\":4} --allocations [] --out runs/table"
nice -n 19 .venv/bin/freshnets reproduce --datasets mnist $COMMON
nice -n 19 .venv/bin/freshnets reproduce --datasets mnist-rot $COMMON
nice -n 19 .venv/bin/freshnets reproduce --datasets mnist,mnist-rot $COMMON --no-table \
  --ablations --ablation-datasets mnist,mnist-rot --ablation-factors 1/64,1/16
nice -n 19 .venv/bin/freshnets reproduce --datasets mnist,mnist-rot $COMMON --report-only \
  --ablations --ablation-datasets mnist,mnist-rot --ablation-factors 1/64,1/16
