#!/usr/bin/env bash
# The main job on the embedded default: generate a sample catalog, train the HUSE model on it
# with the packaged offline backbones (EfficientNet-Lite0 + all-MiniLM-L6-v2), build the FAISS
# index, then serve the API and web page. Options: HUSE_DEMO_DIR (default runs/demo),
# HUSE_PORT (8000), HUSE_API_KEY (a random one is generated and printed), HUSE_CATALOG (train on
# your own catalog.csv/jsonl instead of the generated sample).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" "cpu,onnx"
OUT="${HUSE_DEMO_DIR:-runs/demo}"
PORT="${HUSE_PORT:-8000}"
CATALOG="${HUSE_CATALOG:-}"
if [ -z "$CATALOG" ]; then
  CATALOG="runs/sample/catalog.csv"
  [ -f "$CATALOG" ] || python -m train.huse sample-catalog runs/sample
fi
if [ ! -f "$OUT/index/manifest.json" ]; then
  python -m train.huse --catalog "$CATALOG" --out "$OUT"
fi
export HUSE_API_KEY="${HUSE_API_KEY:-$(python -c 'import secrets; print(secrets.token_urlsafe(16))')}"
echo "[demo] report: $OUT/bundle/report.md"
echo "[demo] open http://127.0.0.1:$PORT/  (API docs: /docs; write key: $HUSE_API_KEY)"
exec python -m api --model "$OUT" --host 127.0.0.1 --port "$PORT"
