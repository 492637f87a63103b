#!/usr/bin/env bash
# Session 27's out-of-fold route to the end (docs/better_model.md, "Session 27"): wait for the
# better_model plan to finish its five oof_fold runs, label each training face with the fold
# model that never saw it (glae teach --held-out), train the student lite2_oof through the same
# plan, and choose its pair on validation only (benchmarks/pair_select.sh). Resumable: rerun it
# after a stop. Run it in the background:
#   nohup bash benchmarks/oof_student.sh > runs/better_model/oof_student.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
R=runs/better_model
glae plan benchmarks/plans/better_model.yaml  # starts the plan in the background unless it runs already
sleep 5
while ! flock -n $R/.plan.lock true; do sleep 60; done  # the plan stops at lite2_oof while its teacher file is missing
for i in 0 1 2 3 4; do
    [ -f $R/oof_fold$i/model.safetensors ] || { echo "oof_fold$i did not finish: see $R/plan.log"; exit 1; }
done
if [ ! -f $R/teacher_oof.safetensors ]; then
    glae teach $R/oof_fold{0,1,2,3,4}/model.safetensors --held-out --data ../shared/data/utkface \
        --split $R/lite2_flip12/split.json --out $R/teacher_oof.safetensors --workers 1
fi
glae plan benchmarks/plans/better_model.yaml --foreground || true  # its exit status counts failed runs; the check below decides
[ -f $R/lite2_oof/test_metrics.json ] || { echo "lite2_oof did not finish: see $R/plan.log"; exit 1; }
bash benchmarks/pair_select.sh $R/lite2_oof/split.json $R/lite2_oof/model.safetensors \
    l0=$R/lite0_shipped_before_pair.safetensors l2f=$R/lite2_flip/model.safetensors
cp benchmarks/results/better_model/pair_select.json benchmarks/results/better_model/pair_select_oof.json
