#!/usr/bin/env bash
# The table on a lent GPU machine (one NVIDIA H100/H200, 16 cores, no network), in one call of
# about 9 minutes: the GPU tests, the freshcore benchmarks on CUDA, then as much of the table in
# progress (table v8: the harness's defaults plus docs/results/table8/refine.json) as fits, 14
# training processes sharing the GPU and one store. What is done comes back in $OUT (runs.tgz is
# refreshed every 15 s, so a run cut off by the time limit loses only itself).
#
# Needs, beside the checkout (prepare them here with docs/results/gpu/prepare-carry.sh):
#   .whl/       wheels the machine lacks (pydantic, pydantic-settings, typer, rich, click...)
#   .devcarry/  the MNIST cache, any generated variants carried (the others are generated here,
#               seconds each), the runs already done on CPU, and the dense teachers' model files
#               of the data sets whose second stage distils (MNIST in tables v7 to v9)
# Environment: OUT (where results go), PY (python, default python3), SKIP_WHEELS=1 (use PY's
# own packages), DEVICE (cuda), DEADLINE (seconds from start when training stops, default 530),
# WORKERS (14), STORE (runs/table8), REFINE (the second stage's JSON file, default table v8's;
# empty: the harness's default, table v6), TABLE_ARGS (extra `freshnets reproduce` arguments, e.g.
# to shrink a dry run), DATASETS (the table's, in the order run), CHECKS=0 (skip the GPU tests and
# benchmarks), TESTS_TIMEOUT (75 s), BENCH=0 (skip the benchmarks only), CUDA_GRAPH=1 (train the
# table with --cuda-graph; auto: only if the GPU tests passed), ABLATIONS=1 (then table v3's
# ablations on MNIST and mnist-rot; the distillation and projection ones need their dense
# teachers' model files in the store, which .devcarry lacks).
set -u
cd "$(dirname "$0")/../../.."
PY=${PY:-python3}
DEADLINE=${DEADLINE:-530}
WORKERS=${WORKERS:-14}
STORE=${STORE:-runs/table8}
REFINE=${REFINE-docs/results/table8/refine.json}
export PYTHONUNBUFFERED=1
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export FRESHNETS_DATA_DIR=${FRESHNETS_DATA_DIR:-/tmp/freshnets-data}
mkdir -p "$FRESHNETS_DATA_DIR" "$STORE/runs"
for t in .devcarry/cache-*.tar.gz; do tar -C "$FRESHNETS_DATA_DIR" -xzf "$t"; done
cp -n .devcarry/store/runs/*.json "$STORE/runs/" 2>/dev/null
mkdir -p "$STORE/models" && cp -n .devcarry/store/models/* "$STORE/models/" 2>/dev/null
[ -f "$STORE/selection.json" ] || cp .devcarry/store/selection.json "$STORE/" 2>/dev/null
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; $PY -V
  $PY -c 'import torch; print(torch.__version__, torch.cuda.is_available())'; } >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# The variants named are generated once, before the workers need them, and their digests
# recorded (they must equal the ones generated on the CPU machine for the runs to be comparable).
# by default MNIST (the goals' data set) first
DATASETS=${DATASETS:-mnist,mnist-rot,mnist-bg-rand,mnist-bg-img,mnist-bg-img-rot,convex,rectangles}
$PY - "$DATASETS" >"$OUT/digests.txt" 2>&1 <<'PYEOF' &
import json
import sys
import numpy as np
from freshcore.data import load
from freshcore.data.sources import default_cache_dir
for name in sys.argv[1].split(","):
    if name in ("mnist", "digits"):  # carried or bundled, not generated
        continue
    load(name)
    with np.load(default_cache_dir() / f"{name}.npz", allow_pickle=False) as z:
        print(name, json.loads(str(z["manifest"]))["sha256"], flush=True)
PYEOF
GEN=$!

tests_passed=0
if [ "${CHECKS:-1}" = 1 ]; then
  timeout "${TESTS_TIMEOUT:-75}" $PY -m pytest tests/gpu --noconftest -q -p no:cacheprovider \
    -p no:randomly >"$OUT/gpu-tests.log" 2>&1 && tests_passed=1
  tail -15 "$OUT/gpu-tests.log"
fi
if [ "${CHECKS:-1}" = 1 ] && [ "${BENCH:-1}" = 1 ]; then
  FRESHNETS_BENCH_REPEATS=30 timeout 75 $PY -m benchmarks freshcore --json "$OUT/bench.json" \
    >"$OUT/bench.log" 2>&1; tail -25 "$OUT/bench.log"
fi
# CUDA_GRAPH=1: the table trains with --cuda-graph; =auto: only if the GPU tests just passed.
if [ "${CUDA_GRAPH:-0}" = 1 ] || { [ "${CUDA_GRAPH:-0}" = auto ] && [ $tests_passed = 1 ]; }; then
  TABLE_ARGS="${TABLE_ARGS:-} --cuda-graph"
fi
echo "table arguments: ${TABLE_ARGS:-}"
wait $GEN; cat "$OUT/digests.txt"

pack() {
  tar -czf "$OUT/runs.tmp" -C "$(dirname "$STORE")" "$(basename "$STORE")/runs" \
    "$(basename "$STORE")/selection.json" 2>/dev/null \
    && mv "$OUT/runs.tmp" "$OUT/runs.tgz"
}
( while sleep 15; do pack; done ) &
PACKER=$!
FRESHNETS="$PY -c 'from app.cli import main; main()' reproduce --device ${DEVICE:-cuda} --workers $WORKERS"
FRESHNETS="$FRESHNETS --out $STORE ${REFINE:+--refine \"\$(cat $REFINE)\"} ${TABLE_ARGS:-}"
left=$((DEADLINE - SECONDS))
echo "table: $left s left at $(date -u +%T)"
eval timeout "$left" "$FRESHNETS" --datasets "$DATASETS" \
  >"$OUT/table.log" 2>&1
echo "table exit $? at $((SECONDS)) s"
left=$((DEADLINE - SECONDS))
if [ "${ABLATIONS:-0}" = 1 ] && [ "$left" -gt 40 ]; then
  echo "ablations: $left s left"
  eval timeout "$left" "$FRESHNETS" --no-table --ablations --datasets mnist,mnist-rot \
    --ablation-datasets mnist,mnist-rot >"$OUT/ablations.log" 2>&1
  echo "ablations exit $? at $((SECONDS)) s"
fi
kill $PACKER 2>/dev/null
pack
grep -c "test error" "$OUT/table.log" "$OUT"/ablations.log 2>/dev/null
grep -m5 FAILED "$OUT/table.log"
tail -3 "$OUT/table.log"
ls -la "$OUT"
