#!/usr/bin/env bash
# An out-of-fold student to the end (docs/better_model.md, "Session 27" and "Session 30"): wait for
# the better_model plan to finish the fold runs, label each training face with the fold models that
# never saw it (glae teach --held-out), train the student through the same plan (its entry reads
# TEACHER), and choose its pair on validation only (benchmarks/pair_select.sh). Resumable: rerun it
# after a stop. Run it in the background:
#   nohup bash benchmarks/oof_student.sh lite2_oof runs/better_model/teacher_oof.safetensors oof_fold{0..4} \
#       > runs/better_model/oof_student.log 2>&1 &
#   nohup bash benchmarks/oof_student.sh lite2_oof3 runs/better_model/teacher_oof3.safetensors \
#       oof_fold{0..4} oof_r1_fold{0..4} oof_r2_fold{0..4} > runs/better_model/oof3_student.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
student=$1 teacher=$2
shift 2
R=runs/better_model
glae plan benchmarks/plans/better_model.yaml  # starts the plan in the background unless it runs already
sleep 5
while ! flock -n $R/.plan.lock true; do sleep 60; done  # the plan stops at the student while its teacher file is missing
models=()
for run in "$@"; do
    [ -f $R/$run/model.safetensors ] || { echo "$run did not finish: see $R/plan.log"; exit 1; }
    models+=("$R/$run/model.safetensors")
done
if [ ! -f "$teacher" ]; then
    glae teach "${models[@]}" --held-out --data ../shared/data/utkface \
        --split $R/lite2_flip12/split.json --out "$teacher" --workers 1
fi
glae plan benchmarks/plans/better_model.yaml --foreground || true  # its exit status counts failed runs; the check below decides
[ -f $R/$student/test_metrics.json ] || { echo "$student did not finish: see $R/plan.log"; exit 1; }
bash benchmarks/pair_select.sh $R/$student/split.json $R/$student/model.safetensors \
    l0=$R/lite0_shipped_before_pair.safetensors l2f=$R/lite2_flip/model.safetensors
cp benchmarks/results/better_model/pair_select.json benchmarks/results/better_model/pair_select_$student.json
