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
  # (re)written when missing or older than its generator, e.g. after a pull that changed it
  if [ ! -f "$CATALOG" ] || [ train/sample_catalog.py -nt "$CATALOG" ] \
    || [ train/sample_drawing.py -nt "$CATALOG" ]; then
    python -m train.huse sample-catalog runs/sample
  fi
fi
if [ ! -f "$CATALOG" ]; then
  echo "[demo] no catalog at $CATALOG (HUSE_CATALOG)" >&2
  exit 2
fi
# A model is served only for the catalog it was built from (path and content), so a new
# HUSE_CATALOG always wins over a model cached from another one: that model is rebuilt.
BUILT_FROM="$(realpath "$CATALOG") $(sha256sum < "$CATALOG" | cut -d' ' -f1)"
if [ ! -f "$OUT/index/manifest.json" ] || [ "$(cat "$OUT/built-from" 2>/dev/null)" != "$BUILT_FROM" ]; then
  rm -rf "$OUT.new"
  python -m train.huse --catalog "$CATALOG" --out "$OUT.new"
  echo "$BUILT_FROM" > "$OUT.new/built-from"
  rm -rf "$OUT"
  mv "$OUT.new" "$OUT"
fi
export HUSE_API_KEY="${HUSE_API_KEY:-$(python -c 'import secrets; print(secrets.token_urlsafe(16))')}"
echo "[demo] report: $OUT/bundle/report.md"
echo "[demo] open http://127.0.0.1:$PORT/  (API docs: /docs; write key: $HUSE_API_KEY)"
exec python -m api --model "$OUT" --host 127.0.0.1 --port "$PORT"
