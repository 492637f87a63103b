#!/usr/bin/env bash
# An out-of-fold student to the end (docs/better_model.md, "Session 27", "Session 30" and "Session 32"):
# while the better_model plan trains the fold runs, label each finished fold's held-out training faces
# (glae teach --held-out --partial) into benchmarks/results/better_model/RUN/held_out.safetensors, a
# small file to commit, so that a lost machine loses no finished fold; then merge the folds' files
# into the student's targets (glae teach), train the student through the same plan (its entry reads
# TEACHER), and choose its pair on validation only (benchmarks/pair_select.sh). Resumable: rerun it
# after a stop. Run it in the background:
#   mkdir -p runs/better_model && nohup bash benchmarks/oof_student.sh lite2_oof3 runs/better_model/teacher_oof3.safetensors \
#       oof_fold{0..4} oof_r1_fold{0..4} oof_r2_fold{0..4} > runs/better_model/oof3_student.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
student=$1 teacher=$2
shift 2
R=runs/better_model results=benchmarks/results/better_model data=../shared/data/utkface
mkdir -p $R
split=$R/student_split.json  # the split of every split_seed-0 run of configs/utkface_better.yaml
if [ ! -f $split ]; then
    python - "$split" "$data" <<'PY'
import json, sys
from glae.config import load_config
from glae.data import load_dataset
from glae.fileio import atomic_write_text
from glae.train import make_split
config = load_config("configs/utkface_better.yaml", [])
index = load_dataset(sys.argv[2], config.data.format, config.data.csv_columns)
atomic_write_text(sys.argv[1], json.dumps(make_split(config, index).to_json(index.root), indent=1))
PY
fi

label_finished_folds() {
    for run in "$@"; do
        labels=$results/$run/held_out.safetensors
        if [ ! -f "$labels" ] && [ -f $R/$run/model.safetensors ] && [ -f $R/$run/test_metrics.json ]; then
            glae teach $R/$run/model.safetensors --held-out --partial --data $data --split $split \
                --out "$labels" --workers 1
        fi
    done
}

glae plan benchmarks/plans/better_model.yaml  # starts the plan in the background unless it runs already
sleep 5
while ! flock -n $R/.plan.lock true; do  # the plan stops at the student while its teacher file is missing
    label_finished_folds "$@"
    sleep 60
done
label_finished_folds "$@"
folds=()
for run in "$@"; do
    [ -f $results/$run/held_out.safetensors ] || { echo "$run did not finish: see $R/plan.log"; exit 1; }
    folds+=("$results/$run/held_out.safetensors")
done
if [ ! -f "$teacher" ]; then
    glae teach "${folds[@]}" --data $data --split $split --out "$teacher"
fi
glae plan benchmarks/plans/better_model.yaml --foreground || true  # its exit status counts failed runs; the check below decides
[ -f $R/$student/test_metrics.json ] || { echo "$student did not finish: see $R/plan.log"; exit 1; }
# The partners, recovered from git where a fresh machine lacks them: the GPU Lite0 as it shipped alone
# (fd38efc), and lite2_flip as the second member of the pair shipped since session 24 (3b19d78).
if [ ! -f $R/lite0_shipped_before_pair.safetensors ]; then
    git show fd38efc:glae/weights/glae_utkface.safetensors > $R/lite0.partial && mv $R/lite0.partial $R/lite0_shipped_before_pair.safetensors
fi
if [ ! -f $R/lite2_flip/model.safetensors ]; then
    mkdir -p $R/lite2_flip
    git show 3b19d78:glae/weights/glae_utkface.safetensors > $R/pair.partial
    python - $R/pair.partial $R/lite2_flip/model.safetensors <<'PY'
import sys
from glae.checkpoint import load_model, save_model
pair, info = load_model(sys.argv[1])
save_model(sys.argv[2], pair.second, {key: value for key, value in info["pair_of"][1].items() if key != "file"})
PY
    rm $R/pair.partial
fi
bash benchmarks/pair_select.sh $R/$student/split.json $R/$student/model.safetensors \
    l0=$R/lite0_shipped_before_pair.safetensors l2f=$R/lite2_flip/model.safetensors
cp $results/pair_select.json $results/pair_select_$student.json
