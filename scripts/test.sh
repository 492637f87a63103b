#!/usr/bin/env bash
# Type-check with mypy, then run the whole test suite (sets up .venv first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
# tests/test_serve_browser.py drives headless Chromium; install it once where we may (root,
# as in CI), otherwise that test says why it skipped.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing chromium and chromium-driver for the browser test (apt, about 1 minute)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
      echo "warning: could not install chromium; tests/test_serve_browser.py will skip" >&2
  fi
fi
# Type check first (config in pyproject.toml): a type error fails the run before the tests.
python -m mypy glae
python -m pytest "$@"
