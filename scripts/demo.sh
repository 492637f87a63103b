#!/usr/bin/env bash
# GLAE's main job on an embedded default (sets up .venv first): estimate the age of every
# face in sample photos that need no download (scikit-image's astronaut and cameraman, and
# a composite of both built on the spot) with the model shipped in glae/weights, print the
# ages and write annotated copies. Pass your own photos or folders to use them instead.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
OUT=runs/demo
if [ "$#" -eq 0 ]; then
  python -m glae.samples "$OUT/photos" >/dev/null
  set -- "$OUT/photos"
fi
glae predict "$@" --annotate "$OUT/annotated"
echo "annotated photos: $OUT/annotated/"
