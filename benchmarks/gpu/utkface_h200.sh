#!/usr/bin/env bash
# Training runs on UTKFace on one GPU, all at once; plus a one-process NCCL DDP smoke run.
# By default: GLAE and the ℓ_base baseline with the same budget, two learning rates each
# (the shipped model's runs, docs/utkface_gpu_run.md). About 11 minutes on an H200 with 16
# CPU cores: 600-900 images/s per run, the loaders (3 processes per run) being the
# bottleneck. Runs still going at DEADLINE seconds are stopped; running the same command
# again resumes them from their checkpoints.
#
# Usage, in the repository root of the GPU machine:
#   python benchmarks/gpu/pack_utkface.py --data ../shared/data/utkface --out .device_data/utkface   # here, first
#   bash benchmarks/gpu/utkface_h200.sh .device_data/utkface OUT_DIR
# Then, back on a machine with the UTKFace folder: benchmarks/gpu/select_runs.py picks each
# method's learning rate on validation and evaluates the chosen runs on the test part.
#
# RUN_LIST="NAME=CONFIG[,KEY=VALUE...] ..." trains those runs instead, e.g. the claims runs
# of docs/claims.md (its "On a GPU" section; benchmarks/gpu/claims_results.py evaluates them).
#
# OUT_DIR receives each run's final model in fp16 (RUN.safetensors: what would be shipped)
# and runs.tar.gz with every run folder's config, split, metrics log and training log.
set -uo pipefail
DATA=${1:?packed data folder}
OUT=${2:?output folder}
RUNS=runs/utkface_gpu_all
# LRS="0.01 0.03" (the default) sets the learning rates each method is tried at.
read -ra LRS <<< "${LRS:-0.01 0.03}"
# DRY_RUN=1 checks the script itself on a CPU (a few minutes): 2 steps per stage.
QUICK=()
[ "${DRY_RUN:-0}" = 1 ] && QUICK=(--set stage1.epochs=1 --set stage1.max_steps_per_epoch=2 --set stage2.epochs=1 --set stage2.max_steps_per_epoch=2 --set data.num_workers=1)
# SETTINGS="KEY=VALUE ..." overrides the configs for every run, e.g. SETTINGS=clip_grad_norm=null.
for setting in ${SETTINGS:-}; do QUICK+=(--set "$setting"); done
export PYTHONPATH="$PWD:$PWD/$DATA/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

train() {  # name config [--set KEY=VALUE ...]: a run folder holding the packed split
    local name=$1 config=$2; shift 2
    mkdir -p "$RUNS/$name"
    cp "$DATA/split.json" "$RUNS/$name/split.json"
    python3 -m glae train --config "$config" --data "$DATA/labels.csv" --format csv --out "$RUNS/$name" \
        --no-progress "$@" "${QUICK[@]}" >> "$RUNS/$name/train.log" 2>&1
}

# bfloat16 autocast had never run on a GPU before this script: if a run fails with it, the
# same run is repeated in float32 (folder suffix _fp32) so that the budget is not lost.
train_with_fallback() {  # name config [--set KEY=VALUE ...]
    local name=$1 config=$2; shift 2
    train "$name" "$config" "$@" && return 0
    (( $(date +%s) - start < 180 )) || return 1  # a late failure is not autocast's (or is the deadline)
    echo "$name failed with amp; last lines:"; tail -5 "$RUNS/$name/train.log"
    train "${name}_fp32" "$config" "$@" --set amp=false
}

[ -d "$DATA/images" ] || python3 -m zipfile -e "$DATA/images.zip" "$DATA"
start=$(date +%s)
( torchrun --standalone --nproc_per_node 1 -m glae train --config configs/smoke.yaml --data "$DATA/labels.csv" \
    --format csv --out "$RUNS/ddp_nccl_smoke" --no-progress --set amp=true --set data.num_workers=1 \
    --set stage1.max_steps_per_epoch=10 --set stage2.max_steps_per_epoch=10 "${QUICK[@]}" > "$RUNS/ddp_nccl_smoke.log" 2>&1
  echo "NCCL DDP smoke exit $? after $(( $(date +%s) - start )) s" ) &
pids=()
if [ -n "${RUN_LIST:-}" ]; then
    for entry in $RUN_LIST; do
        IFS=, read -ra fields <<< "${entry#*=}"
        sets=()
        for setting in "${fields[@]:1}"; do sets+=(--set "$setting"); done
        train_with_fallback "${entry%%=*}" "${fields[0]}" "${sets[@]}" & pids+=($!)
    done
else
    for lr in "${LRS[@]}"; do
        train_with_fallback "glae_lr$lr" configs/utkface_gpu_glae.yaml --set stage1.lr="$lr" & pids+=($!)
        train_with_fallback "base_lr$lr" configs/utkface_gpu_base.yaml --set stage1.lr="$lr" & pids+=($!)
    done
fi
# A device call has a hard time limit and what a killed command leaves is lost: at
# DEADLINE seconds, runs still going are stopped so the finished ones are still exported.
# Only this script's runs (their --out is under $RUNS): other trainings on the machine go on.
( sleep "${DEADLINE:-480}"; pkill -f -- "glae train .*--out $RUNS/" && echo "deadline: stopped the runs still going" ) & watchdog=$!
wait "${pids[@]}"
kill "$watchdog" 2>/dev/null
wait
echo "all runs ended after $(( $(date +%s) - start )) s"
grep -h "NCCL\|nccl\|backend\|Error\|error" "$RUNS/ddp_nccl_smoke.log" | tail -5

for run in "$RUNS"/*/; do
    name=$(basename "$run")
    [ "$name" = ddp_nccl_smoke ] && continue
    [ -f "$run/model.safetensors" ] || { echo "$name: no final model"; tail -3 "$run/train.log" 2>/dev/null; continue; }
    python3 - "$run/model.safetensors" "$OUT/$name.safetensors" <<'PY'
import sys
from glae.checkpoint import load_model, save_model
model, info = load_model(sys.argv[1])
save_model(sys.argv[2], model, info, half=True)
PY
    tail -1 "$run/metrics.jsonl" | python3 -c "import json,sys; r=json.load(sys.stdin); print('$name', 'last epoch', r['stage'], r['epoch'], {m: (round(v['mae'],3), round(v['cmae'],3)) for m, v in r.get('val', {}).items()}, int(r['train_images_per_s']), 'img/s')"
done
tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude=checkpoints --exclude=tensorboard "$RUNS"
ls -la "$OUT"
