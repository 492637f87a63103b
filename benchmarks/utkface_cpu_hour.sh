#!/usr/bin/env bash
# The CPU run of docs/utkface_cpu_run.md: ℓ_base against GLAE (Vanilla, Balanced, AR) on
# one seeded split of ../shared/data/utkface. About an hour on 2 cores; resumable (rerun).
# Usage: bash benchmarks/utkface_cpu_hour.sh [DATA] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/utkface}
OUT=${2:-runs/utkface_cpu}
glae train --config configs/utkface_cpu_glae.yaml --data "$DATA" --out "$OUT/glae" --no-progress
glae train --config configs/utkface_cpu_base.yaml --data "$DATA" --out "$OUT/base" --no-progress
python benchmarks/compare_runs.py "$OUT/base" "$OUT/glae"
