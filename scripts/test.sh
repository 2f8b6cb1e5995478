#!/usr/bin/env bash
# The test command: installs everything the tests need (venv + the dev, onnx and scale extras, and
# Debian's chromium for the browser test when it is missing and we may install it), then lint +
# the test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" "cpu,dev,onnx,scale"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  echo "[setup] installing Debian chromium for the browser test"
  ($SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
    || ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null)) \
    || echo "[setup] could not install chromium: the browser test will be skipped"
fi
ruff check .
python -m pytest -q "$@"
