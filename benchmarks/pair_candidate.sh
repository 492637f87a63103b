#!/usr/bin/env bash
# Build and judge a pair candidate (docs/better_model.md, "Session 22"): pair two trained models,
# calibrate the interval on validation, read the test part once, apply the ship rule, time it.
#   bash benchmarks/pair_candidate.sh NAME SPLIT FIRST_MODEL SECOND_MODEL
# e.g. bash benchmarks/pair_candidate.sh pair_l2_l2 runs/better_model/lite2_seed1/split.json \
#          runs/better_model/lite2_seed1/model.safetensors runs/better_model/lite2_seed2/model.safetensors
# SPLIT must be the split both members were trained on (compare the runs' split.json with cmp),
# or their validation and test parts hold faces they trained on.
# Writes runs/better_model/NAME/ and benchmarks/results/better_model/NAME_{verdict,speed}.json.
# Pause any training while it runs: the speed part needs an otherwise idle machine.
set -euo pipefail
name=$1 split=$2 first=$3 second=$4
data=../shared/data/utkface
run=runs/better_model/$name
results=benchmarks/results/better_model
mkdir -p "$run"
cp "$split" "$run/split.json"
glae pair "$first" "$second" --out "$run/uncalibrated.safetensors" --half
glae calibrate --checkpoint "$run/uncalibrated.safetensors" --data "$data" --split "$run/split.json" \
    --out "$run/model.safetensors"
glae eval --checkpoint "$run/model.safetensors" --data "$data" --split "$run/split.json" --part test --mode routing \
    --json "$run/test_metrics.json" > "$run/test_eval.log" 2>&1
python benchmarks/ship_rule.py "$run" --json "$results/${name}_verdict.json"
python benchmarks/model_speed.py "$run/model.safetensors" glae/weights/glae_utkface.safetensors \
    --reference runs/better_model/lite0_shipped_before_pair.safetensors \
    --photo "$data/26_0_1_20170117194404976.jpg.chip.jpg" --json "$results/${name}_speed.json"
