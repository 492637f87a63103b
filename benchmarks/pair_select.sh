#!/usr/bin/env bash
# Choose a pair on validation only (docs/better_model.md, "a partner of another recipe"): pair
# SECOND (on the mirror) with each FIRST (on the image), calibrate, evaluate the val part, and
# name the pair with the lowest val MAE + CMAE. No test part is read here; the winner is judged
# by benchmarks/pair_candidate.sh, and only if its val MAE and CMAE are both below the shipped
# model's.
#   bash benchmarks/pair_select.sh SPLIT SECOND NAME=FIRST [NAME=FIRST ...]
# Writes runs/better_model/select_NAME/ and benchmarks/results/better_model/pair_select.json.
set -euo pipefail
data=../shared/data/utkface
split=$1 second=$2
shift 2
reports=()
for entry in "$@"; do
    name=${entry%%=*} first=${entry#*=}
    run=runs/better_model/select_$name
    mkdir -p "$run"
    glae pair "$first" "$second" --out "$run/uncalibrated.safetensors" --half
    glae calibrate --checkpoint "$run/uncalibrated.safetensors" --data "$data" --split "$split" \
        --out "$run/model.safetensors" > "$run/calibrate.log" 2>&1
    glae eval --checkpoint "$run/model.safetensors" --data "$data" --split "$split" --part val --mode routing \
        --json "$run/val_metrics.json" > "$run/val_eval.log" 2>&1
    reports+=("$name=$run/val_metrics.json")
done
glae eval --checkpoint glae/weights/glae_utkface.safetensors --data "$data" --split "$split" --part val --mode routing \
    --json runs/better_model/select_shipped_val.json > /dev/null 2>&1
python - "runs/better_model/select_shipped_val.json" "${reports[@]}" <<'PY'
import json, sys
shipped = json.load(open(sys.argv[1]))
pairs = {}
for entry in sys.argv[2:]:
    name, path = entry.split("=", 1)
    report = json.load(open(path))
    pairs[name] = {key: report[key] for key in ("mae", "cmae")}
    print(f"val {name:24s} MAE {pairs[name]['mae']:.3f} CMAE {pairs[name]['cmae']:.3f}")
print(f"val {'shipped':24s} MAE {shipped['mae']:.3f} CMAE {shipped['cmae']:.3f}")
best = min(pairs, key=lambda name: pairs[name]["mae"] + pairs[name]["cmae"])
judge = pairs[best]["mae"] < shipped["mae"] and pairs[best]["cmae"] < shipped["cmae"]
print(f"chosen: {best}; " + ("judge it on test" if judge else "not below the shipped model on val: no test part is read"))
out = {"shipped_val": {key: shipped[key] for key in ("mae", "cmae")}, "pairs_val": pairs, "chosen": best, "judge_on_test": judge}
json.dump(out, open("benchmarks/results/better_model/pair_select.json", "w"), indent=1)
PY
