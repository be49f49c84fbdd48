#!/bin/sh
# Merge every store of table v2 (runs/table2a and runs/table2b from table2.sh, runs/table2rot
# from table2-rot.sh, any other runs/table2<name> made with the same protocol) into runs/table2
# and write its report (results.md, results.json, errors.png) for the data sets that have runs.
# No training: run it any time for a report of what has finished.
cd "$(dirname "$0")/../.."  # the repository root
mkdir -p runs/table2/runs
DATASETS=$(.venv/bin/python - <<'PY'
import glob, json, pathlib
merged, datasets = {}, []
for part in sorted(glob.glob("runs/table2?*/")):
    for run in pathlib.Path(part, "runs").glob("*.json"):
        pathlib.Path("runs/table2/runs", run.name).write_bytes(run.read_bytes())
    selection = pathlib.Path(part, "selection.json")
    if selection.exists():
        merged.update(json.loads(selection.read_text()))
pathlib.Path("runs/table2/selection.json").write_text(json.dumps(merged, indent=1))
for entry in merged.values():
    if entry["dataset"] not in datasets:
        datasets.append(entry["dataset"])
print(",".join(datasets) or "mnist")
PY
)
.venv/bin/freshnets reproduce --datasets "$DATASETS" --factors 1/16,1/64 --seeds 3 \
  --epochs 8 --lrs 0.02 --dropouts 0.5,0 --threads 1 --device auto \
  --allocation '{"shape":"exponential","decay":0.5}' \
  --budget-policy '{"kind":"conv-boost","conv_factor":4}' --allocations '[]' \
  --methods dense,freshnets,freshnets-uniform,hashednets,equivalent,lowfreq,lrd \
  --out runs/table2 --report-only
