#!/usr/bin/env bash
# Issue 5's accuracy targets on the held-out test split of runs/utkface_gpu (made by
# benchmarks/gpu/select_runs.py): the shipped model against (a) the PyPI peer
# age-and-gender 2.0.0, run here in its own venv, and (b) the ℓ_base baseline trained with
# the same budget. Prints MAE and CMAE of each and whether GLAE beats both.
# Usage: bash benchmarks/shipped_model_targets.sh [DATA] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/utkface}
RUNS=${2:-runs/utkface_gpu}
OUT=benchmarks/results
glae eval --data "$DATA" --format utkface --split "$RUNS/glae/split.json" --part test --json "$OUT/shipped_model_test.json" --report "$OUT/shipped_model_report"
bash benchmarks/peer_setup.sh
.venv-peer/bin/python benchmarks/peer_age_and_gender.py --data "$DATA" --split "$RUNS/glae/split.json" --part test --json "$OUT/peer_age_and_gender_test.json"
python - "$OUT/shipped_model_test.json" "$RUNS/base/test_metrics.json" "$OUT/peer_age_and_gender_test.json" <<'PY'
import json, sys
glae, base, peer = (json.load(open(path)) for path in sys.argv[1:])
rows = {"GLAE (shipped, routing)": glae, "l_base (same budget)": base["modes"]["vanilla"], "age-and-gender 2.0.0": peer["metrics"]["all"]}
for name, metrics in rows.items():
    print(f"{name:28s} MAE {metrics['mae']:.3f}  CMAE {metrics['cmae']:.3f}")
for name in list(rows)[1:]:
    better = glae["mae"] < rows[name]["mae"] and glae["cmae"] < rows[name]["cmae"]
    print(f"GLAE better than {name} in both MAE and CMAE: {'yes' if better else 'NO'}")
PY
