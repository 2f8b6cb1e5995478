"""Is static int8 EfficientNet as good as fp32 on real data? Frozen-feature quality and speed.

Static QDQ int8 (embedder.backbones `quantize_static_int8`: per-channel int8 weights, uint8
activations with min/max ranges shipped in embedder/int8_ranges) against the fp32 export, on a
real catalog (default fashion-products). The gate for making it the default:

- photo own-product-first rate (R@1) and own product in the top 10 (R@10): each product's
  photo query (train.photo_eval: cropped, mirrored, JPEG re-encoded) searched by cosine over
  every product's features, query and products through the same engine;
- leaf P@10: share of each product's 10 nearest other products (by its catalog features) in
  its leaf category;
- the colour histogram (`+colour`) is computed from the pixels, so it must not change at all.

Queries are the products outside the calibration sample. Each int8 metric is paired with fp32
query by query: the difference gets a 95% bootstrap interval over queries (resampled pairs);
"equal" means the interval holds 0. Speed: both engines encode the same preprocessed batches
on one thread, alternating `--repeats` rounds (images per CPU-second, robust to load).

`--calibrate` first fits the ranges on `--calibration` products drawn by `--seed` and writes
them to embedder/int8_ranges/SPEC.json (the file shipped with the code).

    python -m bench.bench_image_int8 [--catalog CSV] [--calibrate] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, print_table, write_results

logger = logging.getLogger(__name__)

SPEC = "efficientnet-lite0"
K = 10
BOOTSTRAP = 2000
CROSS = "onnx-int8 photos on fp32 catalog features"
DEFAULT_CATALOG = Path("/work/shared/data/fashion-products/catalog.csv")
COLUMNS = ["arm", "queries", "photo_r1", "photo_r10", "leaf_p10", "d_photo_r1_ci95",
           "d_photo_r10_ci95", "d_leaf_p10_ci95", "r1_lost", "r1_gained"]


def calibrate(products: list[Any], n: int, seed: int, ranges: Path) -> list[str]:
    """Fit the int8 activation ranges on `n` products' images (drawn by `seed`); -> their ids."""
    from embedder.backbones import calibrate_int8_ranges, load_backbone
    from embedder.images import load_image

    fp32 = load_backbone(SPEC, device="cpu", engine="onnx")
    chosen = sorted(np.random.default_rng(seed).choice(len(products), n, replace=False))
    pixels = fp32.preprocess_batch([load_image(products[i].image_path) for i in chosen])
    calibrate_int8_ranges(SPEC, pixels, ranges)
    return [products[i].id for i in chosen]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _scores(catalog_feats: np.ndarray, query_feats: np.ndarray, products: list[Any],
            queries: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query flags: photo R@1 / R@10, leaf P@10 of the product's nearest other products."""
    xb, xq = _unit(catalog_feats), _unit(query_feats[queries])
    photo = np.argsort(-(xq @ xb.T), axis=1)[:, :K]
    leaf = np.asarray([p.category_path for p in products])
    near = np.argsort(-(xb[queries] @ xb.T), axis=1)[:, 1 : K + 1]  # itself first: skipped
    return {
        "photo_r1": (photo[:, 0] == queries).astype(float),
        "photo_r10": (photo == queries[:, None]).any(axis=1).astype(float),
        "leaf_p10": (leaf[near] == leaf[queries][:, None]).mean(axis=1),
    }


def _ci95(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> list[float]:
    diff = b - a
    idx = rng.integers(0, diff.shape[0], (BOOTSTRAP, diff.shape[0]))
    means = diff[idx].mean(axis=1)
    return [round(float(np.percentile(means, q)) * 100, 2) for q in (2.5, 97.5)]


def _features(backbone: Any, products: list[Any], cache: Any, seed: int) -> tuple:
    from embedder.features import extract_image_features
    from train.photo_eval import photo_query_features

    catalog = extract_image_features(products, backbone, cache, num_workers=2)
    photos = photo_query_features(products, backbone, cache, seed)
    return catalog, photos


def bench_speed(backbones: dict[str, Any], products: list[Any], repeats: int,
                n: int = 256) -> list[dict[str, Any]]:
    """Images per CPU-second of the model alone, one ONNX thread, alternating engines."""
    from embedder.images import load_image

    pixels = np.asarray(backbones["onnx"].preprocess_batch(
        [load_image(p.image_path) for p in products[:n]]), dtype=np.float32)
    rows = []
    for r in range(repeats):
        for name, bb in backbones.items():
            session = bb.model
            c0, t0 = time.process_time(), time.perf_counter()
            for i in range(0, n, 32):
                session.run(None, {"pixels": pixels[i : i + 32]})
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            rows.append({"round": r, "engine": name, "images_per_cpu_s": round(n / cpu, 1),
                         "images_per_s": round(n / wall, 1), "load_avg_1m": os.getloadavg()[0]})
            logger.info("%s", rows[-1])
    return rows


def run(catalog: Path, calibration: int, seed: int, do_calibrate: bool, repeats: int
        ) -> dict[str, Any]:
    from embedder.backbones import int8_quantisation, int8_ranges_path, load_backbone
    from embedder.catalog import read_catalog
    from embedder.colour import ColourHistogram
    from embedder.features import FeatureCache
    from embedder.images import load_image

    products = read_catalog(catalog).products
    ranges = int8_ranges_path(SPEC)
    if do_calibrate:
        calibrated = calibrate(products, calibration, seed, ranges)
    else:
        chosen = np.random.default_rng(seed).choice(len(products), calibration, replace=False)
        calibrated = [products[i].id for i in sorted(chosen)]
    backbones = {engine: load_backbone(SPEC, device="cpu", engine=engine)
                 for engine in ("onnx", "onnx-int8")}
    in_cal = set(calibrated)
    queries = np.asarray([i for i, p in enumerate(products) if p.id not in in_cal])
    feats, scores = {}, {}
    with FeatureCache(None) as cache:
        for name, bb in backbones.items():
            feats[name] = _features(bb, products, cache, seed)
            scores[name] = _scores(*feats[name], products, queries)
    # a bundle indexed with fp32 features and queried with int8 photos (engines mismatched)
    scores[CROSS] = _scores(feats["onnx"][0], feats["onnx-int8"][1], products, queries)
    rng = np.random.default_rng(seed)
    base = scores["onnx"]
    rows = []
    for name, s in scores.items():
        row: dict[str, Any] = {"arm": name, "queries": int(queries.shape[0]),
                               **{m: round(float(v.mean()) * 100, 2) for m, v in s.items()}}
        if name != "onnx":
            for m in s:
                row[f"d_{m}_ci95"] = _ci95(base[m], s[m], rng)
            row["r1_lost"] = int(((base["photo_r1"] == 1) & (s["photo_r1"] == 0)).sum())
            row["r1_gained"] = int(((base["photo_r1"] == 0) & (s["photo_r1"] == 1)).sum())
        rows.append(row)
    a, b = _unit(feats["onnx"][0]), _unit(feats["onnx-int8"][0])
    cos = (a * b).sum(axis=1)
    sample = [load_image(p.image_path) for p in products[:64]]
    colour = {name: bb.with_colour(ColourHistogram()).encode(sample)[:, bb.dim:]
              for name, bb in backbones.items()}
    return {
        "rows": rows,
        "feature_cosine_to_fp32": {"min": round(float(cos.min()), 4),
                                   "mean": round(float(cos.mean()), 5)},
        "colour_histogram_equal": bool(np.array_equal(colour["onnx"], colour["onnx-int8"])),
        "speed": bench_speed(backbones, products, repeats),
        "quantisation": int8_quantisation(SPEC),
        "calibration": {"images": calibration, "seed": seed, "catalog": str(catalog),
                        "refit_in_this_run": do_calibrate},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    parser.add_argument("--calibrate", action="store_true",
                        help="fit and write the shipped int8 ranges first")
    parser.add_argument("--calibration", type=int, default=256, help="calibration images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench_image_int8")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load_start = os.getloadavg()
    result = run(Path(args.catalog), args.calibration, args.seed, args.calibrate, args.repeats)
    print_table(result["rows"], COLUMNS)
    print("feature cosine to fp32:", result["feature_cosine_to_fp32"],
          "colour histogram equal:", result["colour_histogram_equal"])
    print_table(result["speed"], ["round", "engine", "images_per_cpu_s", "images_per_s",
                                  "load_avg_1m"])
    path = write_results(args.out, {
        "machine": machine_info(), "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(), "parameters": vars(args),
        "baseline": "fp32 ONNX export (engine onnx), same products, queries and run", **result,
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
