"""Catalog reader: CSV or JSONL rows -> validated Products, plus a report of every bad row.

A bad row never stops the run: it is recorded as a Reject(row, id, reason, detail) and skipped.
Rows are numbered 1-based over data records (the CSV header is not counted; JSONL lines are
records, blank lines included). Every image is fully decoded once here, so truncated files are
caught before training, and its sha256 is kept so the feature cache need not rehash it.

Reject reasons: bad_row (more cells than columns), bad_json, bad_encoding (not UTF-8),
missing_id, duplicate_id (the first row with an id claims it), empty_title, empty_category
(or an empty level), missing_image, and the image codes of embedder.images (truncated,
not_an_image, too_many_pixels, too_small, too_many_bytes, unsupported_mode).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedder.errors import CatalogError, ImageError
from embedder.images import DEFAULT_LIMITS, ImageLimits, load_image, read_image_bytes, sha256_bytes

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
REJECTS_HEADER = ("row", "id", "reason", "detail")


@dataclass(frozen=True)
class ColumnMap:
    """Names of the required columns in the source file, and the category level separator."""

    id: str = "id"
    title: str = "title"
    image: str = "image"
    category: str = "category"
    category_sep: str = " > "

    def required(self) -> tuple[str, ...]:
        return (self.id, self.title, self.image, self.category)


@dataclass(frozen=True)
class Product:
    id: str
    title: str
    image_path: Path
    category: tuple[str, ...]
    attributes: dict[str, str] = field(default_factory=dict)
    image_sha256: str = ""

    @property
    def category_path(self) -> str:
        """Category levels joined with ' > ' (the form the index stores)."""
        return " > ".join(self.category)


@dataclass(frozen=True)
class Reject:
    row: int
    id: str | None
    reason: str
    detail: str


@dataclass
class CatalogReport:
    path: Path
    n_rows: int
    products: list[Product]
    rejects: list[Reject]
    duplicate_images: list[tuple[str, str]]

    def summary(self) -> dict[str, Any]:
        """Counts for logs and reports: rows, accepted, rejected (by reason), duplicate images."""
        return {
            "catalog": str(self.path),
            "rows": self.n_rows,
            "accepted": len(self.products),
            "rejected": len(self.rejects),
            "rejects_by_reason": dict(Counter(r.reason for r in self.rejects).most_common()),
            "duplicate_images": len(self.duplicate_images),
        }

    def write_rejects(self, path: Path | str) -> Path:
        """Write rejects as CSV (row,id,reason,detail), atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
            writer = csv.writer(f)
            writer.writerow(REJECTS_HEADER)
            for r in self.rejects:
                writer.writerow([r.row, r.id or "", r.reason, r.detail])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path


@dataclass(frozen=True)
class _Row:
    row: int
    id: str
    title: str
    image_path: Path
    category: tuple[str, ...]
    attributes: dict[str, str]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _not_utf8(text: str) -> bool:
    """True when text holds bytes that were not UTF-8 (decoded with surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _iter_csv(path: Path, columns: ColumnMap) -> Any:
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in columns.required() if c not in header]
        if missing:
            raise CatalogError(f"{path}: missing column(s) {missing}; header is {header}")
        for i, record in enumerate(reader, start=1):
            extra = record.pop(None, None)  # cells beyond the header
            if extra:
                yield i, None, ("bad_row", f"{len(extra)} more cells than the header has columns")
            else:
                yield i, record, None


def _iter_jsonl(path: Path) -> Any:
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield i, None, ("bad_json", f"{e.msg} at column {e.colno}")
                continue
            if not isinstance(record, dict):
                yield i, None, ("bad_json", f"expected an object, got {type(record).__name__}")
            else:
                yield i, record, None


def _parse(
    row: int, record: dict[str, Any], base: Path, columns: ColumnMap, seen_ids: set[str]
) -> _Row | Reject:
    """Cheap per-row checks (no image I/O); returns the row or its reject."""
    pid = _cell(record.get(columns.id))
    undecodable = [k for k, v in record.items() if _not_utf8(k) or _not_utf8(_cell(v))]
    if undecodable:
        return Reject(row, pid or None, "bad_encoding", f"invalid UTF-8 in {undecodable}")
    if not pid:
        return Reject(row, None, "missing_id", f"empty {columns.id!r}")
    if pid in seen_ids:
        return Reject(row, pid, "duplicate_id", f"id {pid!r} already used by an earlier row")
    seen_ids.add(pid)
    title = _cell(record.get(columns.title))
    if not title:
        return Reject(row, pid, "empty_title", f"empty {columns.title!r}")
    raw_category = _cell(record.get(columns.category))
    levels = tuple(level.strip() for level in raw_category.split(columns.category_sep))
    if not any(levels):
        return Reject(row, pid, "empty_category", f"empty {columns.category!r}")
    if not all(levels):
        return Reject(row, pid, "empty_category", f"empty level in {' > '.join(levels)!r}")
    image = _cell(record.get(columns.image))
    if not image:
        return Reject(row, pid, "missing_image", f"empty {columns.image!r}")
    image_path = Path(image) if Path(image).is_absolute() else base / image
    attributes = {k: _cell(v) for k, v in record.items() if k not in columns.required()}
    return _Row(row, pid, title, image_path, levels, attributes)


def _check_image(row: _Row, limits: ImageLimits) -> Product | Reject:
    try:
        data = read_image_bytes(row.image_path, limits)
        load_image(data, limits)
    except ImageError as e:
        reason = "missing_image" if e.reason == "missing_file" else e.reason
        return Reject(row.row, row.id, reason, e.detail)
    return Product(
        row.id, row.title, row.image_path, row.category, row.attributes, sha256_bytes(data)
    )


def read_catalog(
    path: Path | str,
    columns: ColumnMap = ColumnMap(),
    limits: ImageLimits = DEFAULT_LIMITS,
    rejects_path: Path | str | None = None,
    workers: int = 2,
) -> CatalogReport:
    """Read and validate a catalog (.csv, or .jsonl/.ndjson); bad rows become rejects.

    Raises CatalogError only when the file as a whole is unusable (missing, unknown format,
    required column absent). `workers` threads decode images (Pillow releases the GIL).
    """
    path = Path(path).resolve()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not path.is_file():
        raise CatalogError(f"catalog {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        records = _iter_csv(path, columns)
    elif suffix in JSONL_SUFFIXES:
        records = _iter_jsonl(path)
    else:
        raise CatalogError(f"catalog {path}: unknown format {suffix!r}; use .csv or .jsonl")

    rejects: list[Reject] = []
    rows: list[_Row] = []
    seen_ids: set[str] = set()
    n_rows = 0
    try:
        for n_rows, record, problem in records:
            if record is None:
                rejects.append(Reject(n_rows, None, *problem))
                continue
            parsed = _parse(n_rows, record, path.parent, columns, seen_ids)
            (rows if isinstance(parsed, _Row) else rejects).append(parsed)
    except csv.Error as e:
        raise CatalogError(f"catalog {path} is unreadable after row {n_rows}: {e}") from e

    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = list(pool.map(lambda r: _check_image(r, limits), rows))
    products = [c for c in checked if isinstance(c, Product)]
    rejects.extend(c for c in checked if isinstance(c, Reject))
    rejects.sort(key=lambda r: r.row)

    first_with_hash: dict[str, str] = {}
    duplicate_images = []
    for p in products:
        first = first_with_hash.setdefault(p.image_sha256, p.id)
        if first != p.id:
            duplicate_images.append((p.id, first))

    report = CatalogReport(path, n_rows, products, rejects, duplicate_images)
    if rejects_path is not None:
        report.write_rejects(rejects_path)
    logger.info("catalog summary: %s", report.summary())
    return report
