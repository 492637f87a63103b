#!/usr/bin/env bash
# Start (or resume) the claims plan of docs/claims.md with the training code its runs began with.
#
# The claims runs train with the code of commit 3eecb12, from a worktree next to this checkout,
# so that later changes to the code cannot reach a comparison in progress. Only the plan runner
# (glae/plan.py: recorded runs count as finished) and the plan file come from this checkout.
# Run folders and the results folder are this checkout's. Harmless to rerun: a running plan
# keeps running. Usage: bash scripts/claims_plan.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
main=$(pwd)
frozen=${CLAIMS_WORKTREE:-$main/../claims-code}
[ -d "$frozen" ] || git worktree add --detach "$frozen" 3eecb12
cp glae/plan.py "$frozen/glae/plan.py"
cp benchmarks/plans/claims.yaml "$frozen/benchmarks/plans/claims.yaml"
mkdir -p runs
ln -sfn "$main/runs" "$frozen/runs"
rm -rf "$frozen/benchmarks/results/claims"
ln -sfn "$main/benchmarks/results/claims" "$frozen/benchmarks/results/claims"
cd "$frozen"
# OpenMP threads sleep at barriers, so tests beside the run slow it less (docs/training_speed.md).
OMP_WAIT_POLICY=PASSIVE nohup nice -n -10 "$main/.venv/bin/python" -m glae plan benchmarks/plans/claims.yaml --foreground \
  >> "$main/runs/claims_plan.out" 2>&1 &
echo "claims plan started from $frozen (pid $!); status: glae plan benchmarks/plans/claims.yaml --status"
