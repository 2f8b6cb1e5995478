"""`python -m api --model DIR [--host H] [--port P] [--api-key K]`: serve a bundle + index."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from pathlib import Path

from api.settings import Settings
from embedder.backbones import ENGINES, ONNX_MODULES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m api",
        description="Serve the HUSE classify/search API and web page over a model directory "
        "written by `python -m train.huse --out DIR` (DIR/bundle + DIR/index).",
    )
    p.add_argument("--model", type=Path, help="directory with bundle/ and index/")
    p.add_argument("--bundle", type=Path, help="bundle directory (instead of --model)")
    p.add_argument("--index", type=Path, help="index directory (instead of --model)")
    p.add_argument("--uploads", type=Path, help="where uploaded images go (default DIR/uploads)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="write key (default: env HUSE_API_KEY; none = no writes)")
    p.add_argument(
        "--no-batching", action="store_true", help="one model call per request (baseline)"
    )
    p.add_argument("--batch-max-size", type=int, help="most requests per model call")
    p.add_argument("--batch-max-wait-ms", type=float, help="wait for a batch to fill")
    p.add_argument("--batch-workers", type=int, help="threads forming and running batches")
    p.add_argument("--image-batch-max", type=int, help="most image requests per model call")
    p.add_argument(
        "--image-engine",
        choices=ENGINES,
        help="image backbone runtime (default auto: onnx where installed and it applies)",
    )
    p.add_argument(
        "--read-timeout", type=float, help="seconds a request has to arrive whole (default 30)"
    )
    p.add_argument("--max-connections", type=int, help="connections served at once (default 1000)")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def build_settings(args: argparse.Namespace) -> Settings:
    """Flags override HUSE_* environment variables, which override the defaults."""
    overrides = {
        "model_dir": args.model,
        "bundle_dir": args.bundle,
        "index_dir": args.index,
        "uploads_dir": args.uploads,
        "api_key": args.api_key,
        "batch_max_size": args.batch_max_size,
        "batch_max_wait_ms": args.batch_max_wait_ms,
        "batch_workers": args.batch_workers,
        "image_batch_max": args.image_batch_max,
        "image_engine": args.image_engine,
        "request_read_timeout_s": args.read_timeout,
        "max_connections": args.max_connections,
    }
    if args.no_batching:
        overrides["batching"] = False
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-variant probing
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = build_settings(args)
    if settings.image_engine == "onnx":
        missing = [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise SystemExit(
                f"--image-engine onnx needs {', '.join(missing)}: "
                "pip install 'huse-search[onnx]' (or use --image-engine torch)"
            )
    from api.server import serve

    print(f"HUSE search: open http://{args.host}:{args.port}/  (API docs: /docs)", flush=True)
    if settings.api_key is None:
        print("no API key configured (--api-key or HUSE_API_KEY): writes are refused", flush=True)
    serve(settings, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
