#!/bin/sh
# Table v2 (session 2): MNIST, every method at 1/16 and 1/64, 3 seeds, full training split,
# 8 epochs, lr 0.02, and the dropout rate of fc-150 chosen on validation from {0.5, 0} for every
# cell (a 3-epoch screen found a 1/64 network underfits with dropout 0.5). Same model options as
# table.sh. Two processes, one per core, with their own stores (no shared file is written twice);
# table2-report.sh merges them into runs/table2 and writes the report. Resumable: rerun to continue.
cd "$(dirname "$0")/../.."  # the repository root
COMMON="--datasets mnist --factors 1/16,1/64 --seeds 3 --epochs 8 --lrs 0.02 --dropouts 0.5,0 \
  --threads 1 --device auto --allocation {\"shape\":\"exponential\",\"decay\":0.5} \
  --budget-policy {\"kind\":\"conv-boost\",\"conv_factor\":4} --allocations []"
nice -n 5 .venv/bin/freshnets reproduce $COMMON --methods dense,freshnets --out runs/table2a &
nice -n 5 .venv/bin/freshnets reproduce $COMMON --out runs/table2b \
  --methods freshnets-uniform,hashednets,equivalent,lowfreq,lrd &
wait
sh docs/results/table2-report.sh
