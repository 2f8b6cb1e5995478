#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: creates .venv in the repo root and installs the project with
# the given extras in ONE pip command, so the torch==2.13.0 pin (a local CPU wheel) is never
# replaced by a CUDA build pulled in by another package. Re-runs are instant: a stamp file
# remembers which pyproject.toml + extras were installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-cpu}"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "[setup] installing huse-search[$EXTRAS] (first time: 2-4 minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$EXTRAS]"
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$ROOT"
