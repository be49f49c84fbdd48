#!/bin/sh
# Probe: MNIST, 10k training samples, 3 epochs, lr 0.02, seed 0: all methods at 1/16 and 1/64,
# then ablations at 1/64 (the contested factor).
cd "$(dirname "$0")/../.."  # the repository root
exec nice -n 19 .venv/bin/freshnets reproduce --datasets mnist \
  --methods dense,freshnets,hashednets,equivalent,freshnets-uniform,lowfreq,lrd \
  --factors 1/64,1/16 --seeds 1 --epochs 3 --lrs 0.02 --max-train-samples 10000 \
  --threads 1 --device cpu \
  --allocation '{"shape": "exponential", "decay": 0.5}' --budget-policy '{"kind": "uniform"}' --allocations '[]' \
  --ablations --ablation-factors 1/64 \
  --ablation-variants 'default,float16 buckets,conv-boost x4,conv-boost x16,hashednets conv-boost x4,exponential decay=1,exponential decay=2,beta a=1 b=4,project dense,distill alpha=0.5 T=4 lr/2,augment shifts' \
  --out runs/probe
