"""Is the int8 text encoder as good as fp32 on real data? Title search quality and speed.

A trained bundle (fp32 text features at training time) is served with each text engine:
"onnx" (fp32, the baseline) and "onnx-int8" (dynamic int8, per-channel weights). The products
are indexed exactly (Flat) from the catalog's cached fp32 features, as `train.huse` indexed
them, and every product's title is sent through `Bundle.served_search`:

- R@1 / R@10: the queried product itself is first / in the top 10 (known-item search);
- leaf P@10: share of the 10 nearest *other* products in the query's leaf category.

The int8 arm is paired with the fp32 arm query by query: the difference of each metric gets
a 95% bootstrap interval over queries (resampled pairs), and R@10 flips are counted both ways.
A third arm indexes the products with int8 features too (a bundle trained and served int8).
Speed: both encoders encode every title, alternating `--repeats` rounds (wall and CPU time).

    python -m bench.bench_text_int8 --model DIR [--catalog CSV] [--repeats 3]
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
from huse_common.vectors import l2_normalize

logger = logging.getLogger(__name__)

ENGINES = ("onnx", "onnx-int8")
K = 10
BOOTSTRAP = 2000
COLUMNS = ["arm", "queries", "r1", "r10", "leaf_p10", "d_r1_ci95", "d_r10", "d_r10_ci95",
           "d_leaf_p10_ci95", "r10_lost", "r10_gained"]


def _index_rows(bundle: Any, image: np.ndarray, text: np.ndarray, products: list[Any],
                work: Path) -> Any:
    """An exact (Flat) ProductIndex of the products, rows as `train.huse` builds them."""
    from index.metadata import ProductRecord
    from index.store import ProductIndex

    titles = [p.title for p in products]
    rows = bundle.index_vectors(image, text, titles)
    index = ProductIndex.create(work, bundle.index_dim, bundle.fingerprint, factory="Flat")
    index.upsert([ProductRecord(p.id, p.title, p.category_path) for p in products], rows)
    return index


def _scores(bundle: Any, index: Any, text: np.ndarray, products: list[Any]) -> dict[str, Any]:
    """Per-query hit flags and leaf precision of title searches (text features given)."""
    titles = [p.title for p in products]
    huse = bundle.embed_features(None, text, titles)
    pad = bundle.index_dim - bundle.dim
    parts = np.hstack([huse, np.zeros((len(huse), pad), np.float32)]) if pad else huse
    leaf = {p.id: p.category_path for p in products}
    r1, r10, p10 = (np.zeros(len(products)) for _ in range(3))
    for i, p in enumerate(products):
        hits, _ = bundle.served_search(index, parts[i], False, K + 1)
        ids = [h.id for h in hits]
        r1[i] = ids[:1] == [p.id]
        r10[i] = p.id in ids[:K]
        others = [h for h in ids if h != p.id][:K]
        p10[i] = np.mean([leaf[h] == p.category_path for h in others])
    return {"r1": r1, "r10": r10, "leaf_p10": p10, "huse": huse}


def _ci95(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> list[float]:
    """95% bootstrap interval of mean(b - a) over resampled query pairs, in points."""
    diff = b - a
    idx = rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))
    means = diff[idx].mean(1) * 100
    return [round(float(np.percentile(means, 2.5)), 3), round(float(np.percentile(means, 97.5)), 3)]


def _row(arm: str, s: dict[str, Any], base: dict[str, Any] | None,
         rng: np.random.Generator) -> dict[str, Any]:
    row: dict[str, Any] = {"arm": arm, "queries": len(s["r10"])}
    for m in ("r1", "r10", "leaf_p10"):
        row[m] = round(float(s[m].mean() * 100), 2)
    if base is not None:
        row["d_r10"] = round(row["r10"] - float(base["r10"].mean() * 100), 3)
        row["d_r1_ci95"] = _ci95(base["r1"], s["r1"], rng)
        row["d_r10_ci95"] = _ci95(base["r10"], s["r10"], rng)
        row["d_leaf_p10_ci95"] = _ci95(base["leaf_p10"], s["leaf_p10"], rng)
        row["r10_lost"] = int(((base["r10"] == 1) & (s["r10"] == 0)).sum())
        row["r10_gained"] = int(((base["r10"] == 0) & (s["r10"] == 1)).sum())
    return row


def _cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = (l2_normalize(a) * l2_normalize(b)).sum(1)
    return {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 6),
            "p01": round(float(np.percentile(cos, 1)), 5)}


def bench_speed(backbones: dict[str, Any], titles: list[str], repeats: int) -> list[dict]:
    """Each encoder over every title, alternating rounds: titles/s wall and per CPU-second."""
    rows = []
    for round_ in range(repeats):
        for engine, bb in backbones.items():
            cpu, wall = time.process_time(), time.perf_counter()
            bb.encode(titles)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rows.append({"engine": engine, "round": round_ + 1, "titles": len(titles),
                         "titles_per_s": round(len(titles) / wall, 1),
                         "titles_per_cpu_s": round(len(titles) / cpu, 1),
                         "load_avg_1m": os.getloadavg()[0]})
    return rows


def run(model: Path, catalog: Path, repeats: int) -> dict[str, Any]:
    from embedder.backbones import load_backbone
    from embedder.bundle import Bundle
    from embedder.catalog import read_catalog
    from embedder.features import FeatureCache, extract_image_features, extract_text_features

    load_start = os.getloadavg()[0]
    bundle = Bundle.load(model)
    products = read_catalog(catalog).products
    titles = [p.title for p in products]
    spec = bundle.config.text_backbone.spec
    backbones = {e: load_backbone(spec, device="cpu", engine=e) for e in ENGINES}
    with FeatureCache() as cache:  # the shared cache: fp32 features as training computed them
        image = extract_image_features(
            products, load_backbone(bundle.config.image_backbone.spec, device="cpu"), cache)
        text = {"onnx": extract_text_features(titles, backbones["onnx"], cache)}
    text["onnx-int8"] = backbones["onnx-int8"].encode(titles)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        index = _index_rows(bundle, image, text["onnx"], products, Path(tmp) / "fp32")
        base = _scores(bundle, index, text["onnx"], products)
        int8 = _scores(bundle, index, text["onnx-int8"], products)
        index.close()
        index = _index_rows(bundle, image, text["onnx-int8"], products, Path(tmp) / "int8")
        both = _scores(bundle, index, text["onnx-int8"], products)
        index.close()
    quality = [
        _row("fp32 queries, fp32 index (baseline)", base, None, rng),
        _row("int8 queries, fp32 index (fp32-trained bundle served int8)", int8, base, rng),
        _row("int8 queries, int8 index (products indexed int8 too)", both, base, rng),
    ]
    speed = bench_speed(backbones, titles, repeats)
    return {
        "bench": "text_int8", "machine": machine_info(), "model": str(model),
        "catalog": str(catalog), "products": len(products),
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()[0],
        "feature_cosine_int8_vs_fp32": _cosines(text["onnx-int8"], text["onnx"]),
        "query_embedding_cosine_int8_vs_fp32": _cosines(int8["huse"], base["huse"]),
        "quality": quality, "speed": speed,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a trained bundle directory")
    ap.add_argument("--catalog", type=Path,
                    default=Path("../shared/data/fashion-products/catalog.csv"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    payload = run(args.model, args.catalog, args.repeats)
    print_table(payload["quality"], COLUMNS)
    print_table(payload["speed"], ["engine", "round", "titles_per_s", "titles_per_cpu_s",
                                   "load_avg_1m"])
    print("feature cosine", payload["feature_cosine_int8_vs_fp32"],
          "query cosine", payload["query_embedding_cosine_int8_vs_fp32"])
    print("wrote", write_results("bench_text_int8", payload, args.results_dir))


if __name__ == "__main__":
    main()
