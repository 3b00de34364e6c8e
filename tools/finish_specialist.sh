#!/usr/bin/env bash
# Finish a specialist training run the way the shipped rods specialist was finished:
# the final weights (not the best-on-val checkpoint), the size model refitted on its
# encoder, the inference settings of an existing model kept (no tuning on val), then
# the rescorer and the outline refiner refitted.  The model folder is RUN/model.
#
#   bash tools/finish_specialist.sh RUN [BASE_MODEL] [DATA]
#
# RUN: a run folder of `python -m imageextract.segment.bpartis.train ... --no-finish`;
# BASE_MODEL: the model folder whose config.json gives the inference settings
# (default models/bpartis-emps-rods); DATA: EMPS (default ../shared/data/emps).
# About 15 minutes on 2 CPU cores.  Judge the result with benchmarks/bench_specialist.py.
set -euo pipefail
RUN=${1:?usage: bash tools/finish_specialist.sh RUN [BASE_MODEL] [DATA]}
BASE=${2:-models/bpartis-emps-rods}
DATA=${3:-../shared/data/emps}
[ -f "$RUN/checkpoint.pt" ] || { echo "no checkpoint.pt in $RUN" >&2; exit 2; }
[ -f "$BASE/config.json" ] || { echo "no config.json in $BASE" >&2; exit 2; }
[ -f "$DATA/train.csv" ] || { echo "EMPS not found at $DATA" >&2; exit 2; }
[ -f "$RUN/best.pt" ] && mv "$RUN/best.pt" "$RUN/best_val.pt"
export RUN BASE DATA
python - <<'PY'
import os
from imageextract.segment.bpartis.train import fit_size
print(fit_size(os.environ["DATA"], os.environ["RUN"], progress=False))
PY
python - <<'PY'
import json, os
from pathlib import Path
from imageextract.segment.bpartis.train import export
base = json.loads((Path(os.environ["BASE"]) / "config.json").read_text())
export(os.environ["RUN"], inference=base["inference"])
PY
mkdir -p "$RUN/model"
cp "$RUN/weights.pt" "$RUN/config.json" "$RUN/model/"
python - <<'PY'
import json, logging, os
logging.basicConfig(level=logging.INFO)
from imageextract.segment.bpartis.outline_fit import fit_for_model as fit_outline
from imageextract.segment.bpartis.rescore_fit import fit_for_model as fit_rescorer
model, data = os.path.join(os.environ["RUN"], "model"), os.environ["DATA"]
r = fit_rescorer(model, data, progress=False)
print(json.dumps({k: v for k, v in r.items() if k not in ("cv", "rescorer")}, default=str))
r = fit_outline(model, data, progress=False)
print(json.dumps({k: v for k, v in r.items() if k != "refiner"}, default=str))
PY
echo "finished: $RUN/model"
