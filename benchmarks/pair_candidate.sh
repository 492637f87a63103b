#!/usr/bin/env bash
# Build and judge a pair candidate (docs/better_model.md, "Session 22"): pair two trained runs,
# calibrate the interval on validation, read the test part once, apply the ship rule, time it.
#   bash benchmarks/pair_candidate.sh NAME FIRST_RUN SECOND_RUN
# e.g. bash benchmarks/pair_candidate.sh pair_l2_l2 runs/better_model/lite2_seed1 runs/better_model/lite2_seed2
# Writes runs/better_model/NAME/ and benchmarks/results/better_model/NAME_{verdict,speed}.json.
# Pause any training while it runs: the speed part needs an otherwise idle machine.
set -euo pipefail
name=$1 first=$2 second=$3
data=../shared/data/utkface
run=runs/better_model/$name
results=benchmarks/results/better_model
mkdir -p "$run"
# Both members must have been trained on the same split, or the validation part leaks.
cmp "$first/split.json" "$second/split.json"
cp "$first/split.json" "$run/split.json"
glae pair "$first/model.safetensors" "$second/model.safetensors" --out "$run/uncalibrated.safetensors" --half
glae calibrate --checkpoint "$run/uncalibrated.safetensors" --data "$data" --split "$run/split.json" \
    --out "$run/model.safetensors"
glae eval --checkpoint "$run/model.safetensors" --data "$data" --split "$run/split.json" --part test \
    --json "$run/test_metrics.json" > "$run/test_eval.log" 2>&1
python benchmarks/ship_rule.py "$run" --json "$results/${name}_verdict.json"
python benchmarks/model_speed.py "$run/model.safetensors" glae/weights/glae_utkface.safetensors \
    --reference runs/better_model/lite0_shipped_before_pair.safetensors \
    --photo "$data/26_0_1_20170117194404976.jpg.chip.jpg" --json "$results/${name}_speed.json"
