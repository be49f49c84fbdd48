#!/bin/sh
# Gather what device.sh needs beside the checkout, in two git-ignored folders (see
# .git/info/exclude): wheels for the GPU machine's Python 3.12, the MNIST cache, the runs already
# done on CPU, and the dense teachers of the data sets whose second stage distils (TEACHERS,
# default mnist; "" for none).
set -eu
cd "$(dirname "$0")/../../.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >>.git/info/exclude
grep -qx '/.devcarry/' .git/info/exclude || echo '/.devcarry/' >>.git/info/exclude
mkdir -p .whl .devcarry/store/runs .devcarry/store/models
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 \
  typing_extensions==4.16.0 pydantic-settings==2.16.3 python-dotenv==1.2.4 typer==0.29.2 \
  rich==15.0.0 click==8.5.1
.venv/bin/python -c "from freshcore.data import load; load('mnist')"
CACHE=${FRESHNETS_DATA_DIR:-$HOME/.freshnets}
tar -C "$CACHE" -czf .devcarry/cache-mnist.tar.gz cache/mnist
# Generated variants to carry (EXTRA, e.g. "mnist-rot convex"; default none): device.sh generates
# the others there in seconds and records their digests, to compare with this machine's.
[ -z "${EXTRA:-}" ] || tar -C "$CACHE" -czf .devcarry/cache-extra.tar.gz \
  $(for n in $EXTRA; do echo "cache/$n.npz"; done)
# The store to continue (default table v8's, which starts from table v7's runs and the probe10
# records: docs/results.md, "Tables v8 and v9"), and the data sets whose records it carries
# (RECORDS, e.g. "mnist mnist-rot"; default all): the working tree travels only up to 64 MiB.
SEED=${SEED:-runs/table8}
for n in ${RECORDS:-}; do cp "$SEED"/runs/"$n"_*.json .devcarry/store/runs/; done
[ -n "${RECORDS:-}" ] || cp "$SEED"/runs/*.json .devcarry/store/runs/
[ ! -f "$SEED"/selection.json ] || cp "$SEED"/selection.json .devcarry/store/
# The dense teachers of the data sets whose second stage distils (table v7: MNIST), where their
# model files are here: 3 files of about 2 MB each per data set.
.venv/bin/python - "$SEED" ${TEACHERS-mnist} <<'PYEOF'
import shutil
import sys
from freshcore.reproduce.runner import RunStore, dense_teacher
store = RunStore(sys.argv[1])
for dataset in sys.argv[2:]:  # none when TEACHERS is empty
    for seed in range(3):
        spec = dense_teacher(store, dataset, seed)
        path = store.model_path(spec) if spec else None
        if path and path.exists():
            shutil.copy(path, ".devcarry/store/models/")
        else:
            print(f"no teacher model for {dataset} seed {seed}: its distillation runs will fail")
PYEOF
du -sh .whl .devcarry
