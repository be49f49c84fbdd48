#!/bin/sh
# Merge the stores of table2.sh (runs/table2a, runs/table2b) and table2-rot.sh (runs/table2rot)
# into runs/table2 and write its report (results.md, results.json, errors.png). No training:
# run it any time for a report of what has finished.
cd "$(dirname "$0")/../.."  # the repository root
mkdir -p runs/table2/runs
for part in runs/table2a runs/table2b runs/table2rot; do
  [ -d "$part/runs" ] && find "$part/runs" -name '*.json' -exec cp {} runs/table2/runs/ \;
done
.venv/bin/python - <<'PY'
import json, pathlib
merged = {}
for part in ("runs/table2a", "runs/table2b", "runs/table2rot"):
    path = pathlib.Path(part, "selection.json")
    if path.exists():
        merged.update(json.loads(path.read_text()))
pathlib.Path("runs/table2/selection.json").write_text(json.dumps(merged, indent=1))
PY
.venv/bin/freshnets reproduce --datasets mnist,mnist-rot --factors 1/16,1/64 --seeds 3 \
  --epochs 8 --lrs 0.02 --dropouts 0.5,0 --threads 1 --device auto \
  --allocation '{"shape":"exponential","decay":0.5}' \
  --budget-policy '{"kind":"conv-boost","conv_factor":4}' \
  --methods dense,freshnets,freshnets-uniform,hashednets,equivalent,lowfreq,lrd \
  --out runs/table2 --report-only
