"""Near-duplicate listings: products whose photos are the same item (re-encoded, cropped,
resized, or the same product from two sellers), found by the visual block of the served index.

A pair is a near duplicate when the listing cosine of their visual blocks (the whole block, or
its instance part without the colour histogram, whichever found more copies of validation
photos at the listing rate: embedder.visual.duplicate_queries) is at least the threshold
(default: the bundle's `photo_search.near_duplicate_threshold`, picked on validation photos;
see train.photo_search). `python -m train.huse near-duplicates --bundle B --index I` writes
near_duplicates.csv and near_duplicates.html (a contact sheet) beside the index, or to --out.
"""

from __future__ import annotations

import csv
import html
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.visual import DEFAULT_NEIGHBOURS, ServedSpace, duplicate_queries
from huse_common.atomic import write_atomic

logger = logging.getLogger(__name__)

CSV_FILE = "near_duplicates.csv"
HTML_FILE = "near_duplicates.html"


@dataclass(frozen=True)
class DuplicatePair:
    a: str
    b: str
    similarity: float  # cosine of the visual blocks


def find_pairs(index: Any, huse_dim: int, served: ServedSpace, threshold: float,
               k: int = DEFAULT_NEIGHBOURS, batch: int = 256) -> list[DuplicatePair]:
    """Every unordered pair of live products with listing cosine (embedder.visual.
    duplicate_queries) >= threshold, best first."""
    ids, xb = index.live_vectors()
    seen: dict[tuple[str, str], float] = {}
    for lo in range(0, len(ids), batch):
        xq = duplicate_queries(xb[lo:lo + batch], huse_dim, served)
        for pid, hits in zip(ids[lo:lo + batch], index.search(xq, k + 1), strict=True):
            for h in hits:
                if h.id != pid and h.score >= threshold:
                    key = (min(pid, h.id), max(pid, h.id))
                    seen[key] = max(h.score, seen.get(key, -1.0))
    pairs = [DuplicatePair(a, b, s) for (a, b), s in seen.items()]
    return sorted(pairs, key=lambda p: (-p.similarity, p.a, p.b))


def pair_metrics(found: Sequence[DuplicatePair], truth: set[frozenset]) -> dict[str, float]:
    """Precision and recall of found pairs against planted ones (unordered id pairs)."""
    got = {frozenset((p.a, p.b)) for p in found}
    tp = len(got & truth)
    return {"pairs_found": len(got), "pairs_planted": len(truth), "true_positives": tp,
            "precision": tp / len(got) if got else float("nan"),
            "recall": tp / len(truth) if truth else float("nan")}


def _thumb(path: str, size: int = 128) -> str:
    """A small inline JPEG data URI (the sheet opens anywhere, without the image files)."""
    import base64

    from embedder.images import load_image

    try:
        img = load_image(path)
    except Exception as e:  # a missing image must not stop the sheet
        logger.warning("no thumbnail for %s: %s", path, e)
        return ""
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def write_outputs(pairs: Sequence[DuplicatePair], index: Any, out_dir: Path,
                  threshold: float, media_root: Path | None = None) -> tuple[Path, Path]:
    """near_duplicates.csv (a, b, similarity, titles) and an HTML contact sheet, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id_a", "id_b", "similarity", "title_a", "title_b"])
    rows = []
    for p in pairs:
        ra, rb = index.get(p.a), index.get(p.b)
        writer.writerow([p.a, p.b, f"{p.similarity:.4f}", ra.title, rb.title])
        rows.append((p, ra, rb))
    write_atomic(out_dir / CSV_FILE, buf.getvalue().encode())

    def cell(record: Any) -> str:
        path = record.image
        if path and media_root is not None and not Path(path).is_absolute():
            path = str(media_root / path)
        src = _thumb(path) if path else ""
        img = f'<img src="{src}" alt="">' if src else "<div>(no image)</div>"
        return (f"<td>{img}<div><b>{html.escape(record.id)}</b> "
                f"{html.escape(record.title)}</div></td>")

    body = "\n".join(f"<tr>{cell(ra)}{cell(rb)}<td>{p.similarity:.3f}</td></tr>"
                     for p, ra, rb in rows)
    page = (f"<!doctype html><meta charset=utf-8><title>Near duplicates</title>"
            f"<style>td{{vertical-align:top;padding:6px;max-width:220px}}</style>"
            f"<h1>{len(pairs)} near-duplicate pairs (visual cosine &ge; {threshold:.3f})</h1>"
            f"<table><tr><th>product</th><th>duplicate</th><th>cosine</th></tr>{body}</table>")
    write_atomic(out_dir / HTML_FILE, page.encode())
    return out_dir / CSV_FILE, out_dir / HTML_FILE


DUPLICATE_KINDS = ("reencoded", "cropped", "resized")


def _variant(image: Any, kind: str, rng: np.random.Generator) -> bytes:
    """One planted copy: JPEG re-encoded at low quality, cropped a few percent, or resized."""
    buf = io.BytesIO()
    w, h = image.size
    if kind == "cropped":
        m = rng.uniform(0.03, 0.08)
        image = image.crop((round(w * m), round(h * m), w - round(w * m), h - round(h * m)))
    elif kind == "resized":
        s = rng.uniform(0.5, 0.8)
        image = image.resize((max(16, round(w * s)), max(16, round(h * s))))
    image.save(buf, format="JPEG", quality=int(rng.integers(50, 80)))
    return buf.getvalue()


def plant_duplicates(catalog: Path, out_dir: Path, n: int, seed: int = 0
                     ) -> tuple[Path, set[frozenset]]:
    """A copy of `catalog` (CSV, absolute image paths) plus n planted near duplicates of n
    distinct seeded products (kinds cycling through DUPLICATE_KINDS; new ids, same title,
    category and attributes). Returns the new catalog and the planted (original, copy) pairs.
    Products whose image bytes already repeat in the catalog are not drawn, so the truth
    holds only planted pairs plus the catalog's own exact duplicates (added to it)."""
    from embedder.catalog import read_catalog
    from embedder.images import load_image

    products = read_catalog(catalog).products
    by_sha: dict[str, list[str]] = {}
    for p in products:
        by_sha.setdefault(p.image_sha256, []).append(p.id)
    truth = {frozenset((a, b)) for ids in by_sha.values() for i, a in enumerate(ids)
             for b in ids[i + 1:]}
    unique = [p for p in products if len(by_sha[p.image_sha256]) == 1]
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(unique), size=min(n, len(unique)), replace=False)
    columns = sorted({c for p in products for c in p.attributes})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(exist_ok=True)
    rows = [{"id": p.id, "title": p.title, "image": str(Path(p.image_path).resolve()),
             "category": p.category_path, **p.attributes} for p in products]
    for j, i in enumerate(drawn):
        p = unique[int(i)]
        kind = DUPLICATE_KINDS[j % len(DUPLICATE_KINDS)]
        copy_id = f"{p.id}-dup-{kind}"
        path = out_dir / "images" / f"{copy_id}.jpg"
        path.write_bytes(_variant(load_image(p.image_path), kind, rng))
        rows.append({"id": copy_id, "title": p.title, "image": str(path.resolve()),
                     "category": p.category_path, **p.attributes})
        truth.add(frozenset((p.id, copy_id)))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["id", "title", "image", "category", *columns])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out_dir / "catalog.csv", buf.getvalue().encode())
    return out_dir / "catalog.csv", truth


def list_near_duplicates(bundle_dir: str | Path, index_dir: str | Path,
                         threshold: float | None = None, out_dir: str | Path | None = None
                         ) -> tuple[Path, Path, int]:
    """The CLI: every near-duplicate pair of an index built from the bundle, written as CSV and
    an HTML contact sheet (default: into the index dir). Returns both paths and the count."""
    from embedder.bundle import Bundle
    from index.store import ProductIndex

    bundle = Bundle.load(bundle_dir)
    threshold = bundle.near_duplicate_threshold if threshold is None else threshold
    out = Path(out_dir) if out_dir is not None else Path(index_dir)
    with ProductIndex.open(index_dir, expected_fingerprint=bundle.fingerprint) as index:
        pairs = find_pairs(index, bundle.dim, bundle.served_space, threshold)
        csv_path, html_path = write_outputs(pairs, index, out, threshold,
                                            media_root=Path(index_dir).parent)
    logger.info("%d near-duplicate pairs at visual cosine >= %.3f", len(pairs), threshold)
    return csv_path, html_path, len(pairs)
