#!/bin/sh
# The session-2 screen (docs/results.md): freshnets 1/64 on full MNIST, seed 0, 3 epochs,
# dropout 0.5 or 0, SGD lr 0.02 or Adam lr 0.002 (no weight decay). Two runs per core.
cd "$(dirname "$0")/../../.."  # the repository root
P=".venv/bin/python docs/results/screen/screen.py"
ADAM='{"optimizer":"adam","lr":0.002,"weight_decay":0.0}'
($P base freshnets 1/64 3 0.5 '{}' '{}'; $P adam freshnets 1/64 3 0.5 "$ADAM" '{}') &
($P nodrop freshnets 1/64 3 0.0 '{}' '{}'; $P nodrop-adam freshnets 1/64 3 0.0 "$ADAM" '{}') &
wait
