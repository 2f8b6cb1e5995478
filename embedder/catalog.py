"""Catalog reader: CSV or JSONL rows -> validated Products, plus a report of every bad row.

A bad row never stops the run: it is recorded as a Reject(row, id, reason, detail) and skipped.
Rows are numbered 1-based over data records (the CSV header is not counted; JSONL lines are
records, blank lines included). Every image is fully decoded once here, so truncated files are
caught before training, and its sha256 is kept so the feature cache need not rehash it.

Reject reasons: bad_row (more cells than columns), bad_json, line_too_large (a JSONL line over
RowLimits.max_line_bytes), field_too_large (a cell over RowLimits.max_cell_chars), bad_encoding
(not UTF-8), missing_id, bad_id (outside the grammar of huse_common.ids), duplicate_id (an id
already taken by an ACCEPTED earlier row; a row rejected for any other reason claims nothing),
empty_title, title_too_long, empty_category (or an empty level), missing_image, and the image
codes of embedder.images (truncated, not_an_image, too_many_pixels, too_small, too_many_bytes,
unsupported_mode).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from embedder.errors import CatalogError, ImageError, MissingColumnsError
from embedder.images import DEFAULT_LIMITS, ImageLimits, load_image, read_image_bytes, sha256_bytes
from huse_common.atomic import replacing
from huse_common.categories import SEPARATOR, join_path, split_path
from huse_common.ids import check_product_id
from huse_common.limits import MAX_TITLE_CHARS

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
REJECTS_HEADER = ("row", "id", "reason", "detail")
# The one default for the longest title; api.settings may import it to keep both in step.
_CSV_FIELD_LIMIT_ERROR = "field larger than field limit"
_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RowLimits:
    """Bounds one catalog row must satisfy; a row over any of them is rejected, never fatal.

    `max_cell_chars` may not exceed csv.field_size_limit() (128 KiB unless raised), the bound
    the csv module itself enforces while parsing a CSV catalog.
    """

    max_cell_chars: int = 128 * 1024
    max_line_bytes: int = 1024 * 1024
    max_title_chars: int = MAX_TITLE_CHARS

    def __post_init__(self) -> None:
        if min(self.max_cell_chars, self.max_line_bytes, self.max_title_chars) < 1:
            raise ValueError(
                f"RowLimits must be positive, got max_cell_chars={self.max_cell_chars}, "
                f"max_line_bytes={self.max_line_bytes}, max_title_chars={self.max_title_chars}"
            )


DEFAULT_ROW_LIMITS = RowLimits()


@dataclass(frozen=True)
class ColumnMap:
    """Names of the required columns in the source file, and the category level separator."""

    id: str = "id"
    title: str = "title"
    image: str = "image"
    category: str = "category"
    category_sep: str = SEPARATOR

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
        return join_path(self.category)


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
        """Write rejects as CSV (row,id,reason,detail), atomically (huse_common.atomic)."""
        path = Path(path)
        with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                          errors="backslashreplace") as f:
            writer = csv.writer(f)
            writer.writerow(REJECTS_HEADER)
            for r in self.rejects:
                writer.writerow([r.row, r.id or "", r.reason, r.detail])
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


class _LineTap:
    """The file's lines as csv.reader pulls them, keeping the current record's lines.

    csv.reader never reads ahead, so after a failed record `lines` holds exactly its text so far.
    """

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.lines: list[str] = []

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.lines.append(line)
        return line

    def finish_record(self, keep_chars: int) -> str:
        """Consume the rest of a record csv.reader gave up on; returns its first `keep_chars`.

        A record goes on while its quotes are unbalanced (an open quoted field holds newlines);
        this holds for the default dialect, where a literal quote is written doubled.
        """
        quotes = sum(line.count('"') for line in self.lines)
        while quotes % 2:
            line = next(self._lines, None)
            if line is None:
                break
            quotes += line.count('"')
        head, n = [], 0
        for line in self.lines:
            if n >= keep_chars:
                break
            head.append(line)
            n += len(line)
        return "".join(head)[:keep_chars]


def _id_from_prefix(prefix: str, header: list[str], columns: ColumnMap) -> str | None:
    """The id cell of an oversized CSV record, when it lies before the first oversized cell.

    `prefix` is no longer than csv.field_size_limit(), so it parses; its last cell may be cut
    short (it is where the oversized cell begins), so only the cells before it are whole.
    """
    cells = next(csv.reader(io.StringIO(prefix)), [])
    position = header.index(columns.id)
    if position >= len(cells) - 1:
        return None
    return _cell(cells[position]) or None


def _iter_csv(path: Path, columns: ColumnMap) -> Any:
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        tap = _LineTap(iter(f))
        reader = csv.DictReader(tap)
        header = reader.fieldnames or []
        if not header:
            raise CatalogError(f"{path} is empty: expected a header row with the columns "
                               f"{list(columns.required())}")
        missing = [c for c in columns.required() if c not in header]
        if missing:
            raise MissingColumnsError(f"{path}: missing column(s) {missing}; header is {header}")
        i = 0
        while True:
            tap.lines.clear()
            i += 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                if _CSV_FIELD_LIMIT_ERROR not in str(e):
                    raise
                prefix = tap.finish_record(keep_chars=csv.field_size_limit())
                pid = _id_from_prefix(prefix, list(header), columns)
                yield i, Reject(i, pid, "field_too_large", f"a cell is over the csv limit: {e}")
                continue
            extra = record.pop(None, None)  # cells beyond the header
            if extra:
                detail = f"{len(extra)} more cells than the header has columns"
                yield i, Reject(i, None, "bad_row", detail)
            else:
                yield i, record


def _iter_jsonl(path: Path, max_line_bytes: int) -> Any:
    """Lines read in binary with a bounded readline, so a huge line never sits in memory."""
    with open(path, "rb") as f:
        for i, raw in enumerate(iter(lambda: f.readline(max_line_bytes + 1), b""), start=1):
            if i == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                size = len(raw) + _skip_line(f, raw)
                detail = f"line of {size} bytes > limit {max_line_bytes}"
                yield i, Reject(i, None, "line_too_large", detail)
                continue
            line = raw.decode("utf-8", errors="surrogateescape")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield i, Reject(i, None, "bad_json", f"{e.msg} at column {e.colno}")
                continue
            if not isinstance(record, dict):
                detail = f"expected an object, got {type(record).__name__}"
                yield i, Reject(i, None, "bad_json", detail)
            else:
                yield i, record


def _skip_line(f: BinaryIO, read: bytes) -> int:
    """Read past the rest of a line whose start `read` is; returns the bytes skipped."""
    skipped = 0
    while not read.endswith(b"\n"):
        read = f.readline(_CHUNK_BYTES)
        if not read:
            break
        skipped += len(read)
    return skipped


def _parse(
    row: int, record: dict[str, Any], base: Path, columns: ColumnMap, row_limits: RowLimits
) -> _Row | Reject:
    """Cheap per-row checks (no image I/O, no duplicate check); returns the row or its reject."""
    pid = _cell(record.get(columns.id))
    cells = {k: _cell(v) for k, v in record.items()}
    oversized = [k for k, v in cells.items() if len(v) > row_limits.max_cell_chars]
    if oversized:
        detail = f"cell(s) {oversized} over {row_limits.max_cell_chars} chars"
        known_id = pid if columns.id not in oversized else ""
        return Reject(row, known_id or None, "field_too_large", detail)
    undecodable = [k for k, v in cells.items() if _not_utf8(k) or _not_utf8(v)]
    if undecodable:
        return Reject(row, pid or None, "bad_encoding", f"invalid UTF-8 in {undecodable}")
    if not pid:
        return Reject(row, None, "missing_id", f"empty {columns.id!r}")
    try:
        check_product_id(pid)
    except ValueError as e:
        return Reject(row, pid, "bad_id", str(e))
    title = cells.get(columns.title, "")
    if not title:
        return Reject(row, pid, "empty_title", f"empty {columns.title!r}")
    if len(title) > row_limits.max_title_chars:
        detail = f"title has {len(title)} chars > limit {row_limits.max_title_chars}"
        return Reject(row, pid, "title_too_long", detail)
    raw_category = cells.get(columns.category, "")
    if not raw_category.strip():
        return Reject(row, pid, "empty_category", f"empty {columns.category!r}")
    try:
        levels = split_path(raw_category, columns.category_sep)
    except ValueError as e:
        return Reject(row, pid, "empty_category", str(e))
    image = cells.get(columns.image, "")
    if not image:
        return Reject(row, pid, "missing_image", f"empty {columns.image!r}")
    image_path = Path(image) if Path(image).is_absolute() else base / image
    attributes = {k: v for k, v in cells.items() if k not in columns.required()}
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
    row_limits: RowLimits = DEFAULT_ROW_LIMITS,
) -> CatalogReport:
    """Read and validate a catalog (.csv, or .jsonl/.ndjson); bad rows become rejects.

    Raises CatalogError only when the file as a whole is unusable (missing, unknown format,
    required column absent, header unparsable). `workers` threads decode images (Pillow releases
    the GIL). An id is claimed by the first row that passes every check, images included.
    """
    path = Path(path).resolve()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not path.is_file():
        raise CatalogError(f"catalog {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        if row_limits.max_cell_chars > csv.field_size_limit():
            raise ValueError(
                f"row_limits.max_cell_chars={row_limits.max_cell_chars} exceeds "
                f"csv.field_size_limit()={csv.field_size_limit()}; raise that first"
            )
        records = _iter_csv(path, columns)
    elif suffix in JSONL_SUFFIXES:
        records = _iter_jsonl(path, row_limits.max_line_bytes)
    else:
        raise CatalogError(f"catalog {path}: unknown format {suffix!r}; use .csv or .jsonl")

    rejects: list[Reject] = []
    rows: list[_Row] = []
    n_rows = 0
    try:
        for n_rows, record in records:
            if isinstance(record, Reject):
                rejects.append(record)
                continue
            parsed = _parse(n_rows, record, path.parent, columns, row_limits)
            (rows if isinstance(parsed, _Row) else rejects).append(parsed)
    except csv.Error as e:
        raise CatalogError(f"catalog {path} is unreadable after row {n_rows}: {e}") from e

    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = list(pool.map(lambda r: _check_image(r, limits), rows))
    products: list[Product] = []
    accepted_row: dict[str, int] = {}
    for row, outcome in zip(rows, checked, strict=True):
        if isinstance(outcome, Reject):
            rejects.append(outcome)
        elif outcome.id in accepted_row:
            detail = f"id {outcome.id!r} already taken by accepted row {accepted_row[outcome.id]}"
            rejects.append(Reject(row.row, outcome.id, "duplicate_id", detail))
        else:
            accepted_row[outcome.id] = row.row
            products.append(outcome)
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
