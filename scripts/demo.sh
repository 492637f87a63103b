#!/usr/bin/env bash
# GLAE's main job on an embedded default (sets up .venv first): train both stages on a few
# hundred UTKFace images (../shared/data/utkface, or generated faces when that folder is
# absent), evaluate with Adaptive Routing and write the report.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
DATA=${GLAE_DATA:-../shared/data/utkface}
if [ ! -d "$DATA" ]; then
  DATA=runs/demo-data
  echo "$DATA: no UTKFace folder found, generating a synthetic one"
  python -m glae.data.synthetic "$DATA" --count 400
fi
glae train --config configs/smoke.yaml --data "$DATA" --out runs/demo
echo "report: runs/demo/report/report.md"
