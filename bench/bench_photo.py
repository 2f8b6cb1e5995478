"""Held-out photo search protocol of issue #11, measured through the public CLI and HTTP API.

1. `n_held` products (seeded) are held out of the catalog; `python -m train.huse` trains on the
   rest (bundle + index).
2. The held-out products are added through `PUT /v1/products/{id}` (image, title, category,
   attributes), so the index holds every product.
3. Each held-out product's photo, cropped, mirrored and JPEG re-encoded (train.photo_eval),
   goes to `POST /v1/search`; its title goes there too.
4. Scored: instance recall@1 (own product first), precision@10 of the leaf class and of each
   attribute column over the 10 nearest other products, leaf precision@10 of title queries.
Baselines in the same run, over the same products and query bytes: the frozen backbones alone
(cosine of EfficientNet features for photos, of MiniLM features for titles) and the universal
space alone (the served API with `visual_weight=0`).

    python -m bench.bench_photo [--catalog C] [--held-out 400] [--seed 0] [--work DIR]
        [--model DIR (skip training: DIR was trained on this split)] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, print_table, write_results
from train.photo_eval import (
    instance_recall_at_1,
    photo_query,
    precision_at_k,
    query_seed,
    ranked_ids,
)

logger = logging.getLogger(__name__)

API_KEY = "bench-photo-key"
LEAF = "leaf"
COLUMNS = ["space", "queries", "instance_r1", "leaf_p10", "title_leaf_p10"]


@dataclass
class HeldOutSplit:
    """The training catalog (CSV with absolute image paths) and the held-out products."""

    train_catalog: Path
    held: list[Any]  # embedder.catalog.Product
    everyone: list[Any]


def split_catalog(catalog: Path, n_held: int, seed: int, out_dir: Path) -> HeldOutSplit:
    """Hold out n_held valid products (seeded); write the rest as a catalog CSV in out_dir."""
    from embedder.catalog import read_catalog

    products = read_catalog(catalog).products
    if not 0 < n_held < len(products):
        raise ValueError(f"held-out count must be in (0, {len(products)}), got {n_held}")
    rng = np.random.default_rng(seed)
    held_rows = set(rng.choice(len(products), n_held, replace=False).tolist())
    columns = sorted({c for p in products for c in p.attributes})
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "train_catalog.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "title", "image", "category", *columns])
        writer.writeheader()
        for i, p in enumerate(products):
            if i not in held_rows:
                writer.writerow({"id": p.id, "title": p.title,
                                 "image": str(Path(p.image_path).resolve()),
                                 "category": p.category_path, **p.attributes})
    held = [p for i, p in enumerate(products) if i in held_rows]
    return HeldOutSplit(path, held, products)


def train(train_catalog: Path, out: Path, sets: Sequence[str], cache_dir: str | None) -> Path:
    """`python -m train.huse` on the training catalog (the public CLI); returns OUT."""
    cmd = [sys.executable, "-m", "train.huse", "--catalog", str(train_catalog), "--out", str(out),
           "--no-progress"]
    for item in sets:
        cmd += ["--set", item]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"training failed ({done.returncode}): {done.stderr[-3000:]}")
    return out


def add_products(client: Any, products: Sequence[Any]) -> None:
    """PUT every product with its image, title, category and attributes."""
    for p in products:
        r = client.put(f"/v1/products/{p.id}", headers={"Authorization": f"Bearer {API_KEY}"},
                       data={"title": p.title, "category": p.category_path,
                             "attributes": json.dumps(p.attributes)},
                       files={"image": ("photo.jpg", Path(p.image_path).read_bytes())})
        r.raise_for_status()


def photo_queries(products: Sequence[Any], seed: int) -> list[bytes]:
    from embedder.images import load_image

    return [photo_query(load_image(p.image_path), query_seed(p.id, seed)) for p in products]


def search_ids(client: Any, k: int, form: dict[str, Any], image: bytes | None = None) -> list[str]:
    files = {"image": ("query.jpg", image)} if image is not None else None
    r = client.post("/v1/search", data={"k": str(k), **form}, files=files)
    r.raise_for_status()
    return [h["id"] for h in r.json()["hits"]]


def attribute_table(products: Sequence[Any], columns: Sequence[str]) -> dict[str, dict]:
    """{column: {product id: value}} with the leaf category path as column 'leaf'."""
    table: dict[str, dict] = {LEAF: {p.id: p.category_path for p in products}}
    for c in columns:
        table[c] = {p.id: (p.attributes.get(c) or None) for p in products}
    return table


def score(query_ids: list[str], photo: list[list[str]], title: list[list[str]] | None,
          table: dict[str, dict], k: int) -> dict[str, Any]:
    p = precision_at_k(query_ids, photo, table, k=k)
    row = {"queries": len(query_ids), "instance_r1": instance_recall_at_1(query_ids, photo),
           "leaf_p10": p[LEAF], "attr_p10": {c: v for c, v in p.items() if c != LEAF}}
    if title is not None:
        row["title_leaf_p10"] = precision_at_k(query_ids, title, {LEAF: table[LEAF]}, k=k)[LEAF]
    return row


def frozen_baseline(split: HeldOutSplit, queries: list[bytes], bundle_config: dict,
                    cache_dir: str | None, k: int) -> tuple[list[list[str]], list[list[str]]]:
    """Cosine over the frozen backbones' features of every product (photos: image backbone,
    without the `+colour` histogram; titles: text backbone), same products and query bytes as
    the served runs."""
    from embedder.backbones import load_backbone
    from embedder.colour import split_spec
    from embedder.features import FeatureCache, extract_image_features, extract_text_features
    from embedder.images import load_image

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    ids = [p.id for p in split.everyone]
    with FeatureCache(cache_dir or None) as cache:
        image_bb = load_backbone(split_spec(bundle_config["image_backbone"]["spec"])[0],
                                 device="cpu")
        xb = unit(extract_image_features(split.everyone, image_bb, cache, num_workers=0))
        xq = unit(image_bb.encode([load_image(q) for q in queries]))
        photo = ranked_ids(xq @ xb.T, ids, k)
        text_bb = load_backbone(bundle_config["text_backbone"]["spec"], device="cpu")
        tb = unit(extract_text_features([p.title for p in split.everyone], text_bb, cache))
        tq = unit(text_bb.encode([p.title for p in split.held]))
        title = ranked_ids(tq @ tb.T, ids, k)
    return photo, title


def run_protocol(catalog: Path, work: Path, n_held: int, seed: int, sets: Sequence[str] = (),
                 model_dir: Path | None = None, cache_dir: str | None = None,
                 k: int = 10) -> dict[str, Any]:
    """The whole protocol; returns {"spaces": {name: scores}, "chosen": bundle's photo config}."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings

    split = split_catalog(catalog, n_held, seed, work)
    if model_dir is None:
        model_dir = train(split.train_catalog, work / "model", sets, cache_dir)
    bundle_config = json.loads((model_dir / "bundle" / "config.json").read_text())
    columns = sorted({c for p in split.everyone for c in p.attributes})
    table = attribute_table(split.everyone, columns)
    query_ids = [p.id for p in split.held]
    queries = photo_queries(split.held, seed)
    spaces: dict[str, Any] = {}
    photo, title = frozen_baseline(split, queries, bundle_config, cache_dir, k + 1)
    spaces["frozen backbone (cosine)"] = score(query_ids, photo, title, table, k)
    settings = Settings(model_dir=model_dir, api_key=API_KEY, uploads_dir=work / "uploads")
    with TestClient(create_app(settings)) as client:
        add_products(client, split.held)
        for name, form in (("universal space alone (visual_weight=0)", {"visual_weight": "0"}),
                           ("served (default)", {})):
            photo = [search_ids(client, k + 1, form, image=q) for q in queries]
            title = [search_ids(client, k + 1, {"title": p.title, **form}) for p in split.held]
            spaces[name] = score(query_ids, photo, title, table, k)
    return {"spaces": spaces, "photo_search": bundle_config.get("photo_search"),
            "catalog": str(catalog), "held_out": n_held, "seed": seed, "k": k,
            "train_sets": list(sets), "model_dir": str(model_dir)}


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, s in result["spaces"].items():
        rows.append({"space": name, **{c: s.get(c, "") for c in COLUMNS[1:]},
                     **{f"{c}_p10": v for c, v in s["attr_p10"].items()}})
    return rows


def default_catalog() -> Path:
    shared = Path(os.environ.get("HUSE_SHARED_DATA",
                                 Path(__file__).resolve().parents[2] / "shared" / "data"))
    return shared / "fashion-products" / "catalog.csv"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_photo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", type=Path, default=default_catalog())
    p.add_argument("--held-out", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, help="scratch dir (default: a temporary one)")
    p.add_argument("--model", type=Path, help="reuse a model trained on this split's catalog")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig override passed to python -m train.huse")
    p.add_argument("--cache-dir")
    p.add_argument("--name", default="bench_photo", help="results file name")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        result = run_protocol(args.catalog, work, args.held_out, args.seed, args.set,
                              model_dir=args.model, cache_dir=args.cache_dir)
    rows = table_rows(result)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    print_table(rows, columns)
    print(write_results(args.name, {"machine": machine_info(), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
