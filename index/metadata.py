"""SQLite metadata store: the durable truth for every product, its vector and its generation.

One transaction per change. Each change bumps a generation counter and stamps the rows it
touches, so a FAISS snapshot taken at generation G can be brought up to date by replaying the
rows with generation > G (deletes are soft: `deleted = 1`). Keys are int64 INTEGER PRIMARY KEY
AUTOINCREMENT values: assigned by SQLite, stable across upserts, never reused.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from huse_common.categories import below, normalize_path
from index.errors import CorruptIndexError, IndexMismatchError, ProductNotFound

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
# Records of recent search hits kept in memory (FIFO). ~1 KB each with their strings: ~64 MB.
RECORD_CACHE_SIZE = 65_536
_CHUNK = 10_000  # ids per IN (...) query, well under SQLite's variable limit
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    category TEXT NOT NULL,
    image TEXT NOT NULL,
    attributes TEXT NOT NULL,
    vector BLOB NOT NULL,
    generation INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS products_generation ON products (generation);
CREATE INDEX IF NOT EXISTS products_category ON products (category) WHERE deleted = 0;
"""


def normalize_category(category: str) -> str:
    """'A>B >  C' -> 'A > B > C'; empty levels are an error."""
    if not isinstance(category, str):
        raise TypeError(f"category must be a str, got {type(category).__name__}")
    return normalize_path(category)


@dataclass(frozen=True)
class ProductRecord:
    """A product's metadata as the index stores and returns it."""

    id: str
    title: str
    category: str
    image: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    def validated(self) -> ProductRecord:
        """This record with its category normalised; ValueError/TypeError naming bad fields."""
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"product id must be a non-empty str, got {self.id!r}")
        for name in ("title", "image"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} of {self.id!r} must be a str, got {getattr(self, name)!r}")
        if not isinstance(self.attributes, dict):
            raise TypeError(f"attributes of {self.id!r} must be a dict, got {self.attributes!r}")
        try:
            json.dumps(self.attributes, allow_nan=False)  # NaN/Infinity are not JSON
        except (TypeError, ValueError) as e:
            raise ValueError(f"attributes of {self.id!r} are not JSON: {e}") from e
        return ProductRecord(
            self.id, self.title, normalize_category(self.category), self.image, self.attributes
        )


@dataclass(frozen=True)
class ProductFilter:
    """Which live products a search or a listing may return.

    `categories`: whole-level category subtrees, any of them (exact spelling, as stored);
    None allows every category. `attributes`: (name, value) pairs that must all be equal.
    """

    categories: tuple[str, ...] | None = None
    attributes: tuple[tuple[str, str], ...] = ()

    def sql(self) -> tuple[str, list[Any]]:
        """A WHERE clause over `products` (live rows only) and its parameters."""
        clauses, params = ["deleted = 0"], []
        if self.categories is not None:
            subtrees = []
            for prefix in map(normalize_category, self.categories):
                subtrees.append("category = ? OR (category >= ? AND category < ?)")
                params += [prefix, *below(prefix)]
            clauses.append("(" + " OR ".join(subtrees or ["0"]) + ")")
        for name, value in self.attributes:
            clauses.append("json_extract(attributes, ?) = ?")
            params += ['$."' + name.replace('"', '""') + '"', value]
        return " AND ".join(clauses), params


def _record(row: Sequence[Any]) -> ProductRecord:
    return ProductRecord(row[0], row[1], row[2], row[3], json.loads(row[4]))


class RecordCache:
    """Bounded key -> ProductRecord map in front of SQLite, kept true under writes.

    A search's hit records cost ~0.08 ms from SQLite (a query and a JSON decode per row) and
    ~1 us from here. Lookups take no lock. A writer calls `invalidate` after its commit; it
    bumps an epoch, and a reader only stores rows if the epoch has not moved since before its
    SQLite read (`fill`), so a row read before a commit can never be stored after that
    commit's invalidation. Eviction is first-in first-out. Records are shared between callers:
    treat them (and their attributes) as read-only.
    """

    def __init__(self, max_records: int) -> None:
        if max_records < 0:
            raise ValueError(f"max_records must be >= 0, got {max_records}")
        self.max_records = max_records
        self._records: dict[int, ProductRecord] = {}
        self._lock = threading.Lock()
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: int) -> ProductRecord | None:
        return self._records.get(key)

    @property
    def epoch(self) -> int:
        """Read before reading SQLite; hand it to `fill` with what was read."""
        return self._epoch

    def fill(self, epoch: int, found: dict[int, ProductRecord]) -> None:
        """Remember rows read from SQLite, unless a write was committed since `epoch`."""
        if not self.max_records or not found:
            return
        with self._lock:
            if epoch != self._epoch:
                return
            self._records.update(found)
            over = len(self._records) - self.max_records
            if over > 0:
                for key in list(itertools.islice(self._records, over)):
                    del self._records[key]

    def invalidate(self, keys: Sequence[int]) -> None:
        """Forget `keys` (a write committed new values for them)."""
        with self._lock:
            self._epoch += 1
            for key in keys:
                self._records.pop(int(key), None)


class MetadataStore:
    """products + meta tables in one SQLite file (WAL, synchronous=FULL: a commit is durable).

    Writes go through one connection (the caller serialises writers); each reading thread
    gets its own connection, so searches never block each other. Records of search hits are
    served from a bounded RecordCache that every write invalidates after its commit.
    """

    def __init__(self, path: Path, record_cache_size: int = RECORD_CACHE_SIZE) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._writer = self._connect()
        self.cache = RecordCache(record_cache_size)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as e:
            raise CorruptIndexError(f"{self.path} is not a readable SQLite database: {e}") from e
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @property
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @classmethod
    def create(
        cls,
        path: Path,
        d: int,
        bundle_fingerprint: str,
        factory: str,
        memory_budget_bytes: int | None,
    ) -> MetadataStore:
        store = cls(path)
        store._writer.executescript(_SCHEMA)  # executescript commits on its own
        with store._transaction() as cur:
            cur.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [
                    ("schema_version", SCHEMA_VERSION),
                    ("generation", "0"),
                    ("d", str(d)),
                    ("bundle_fingerprint", bundle_fingerprint),
                    ("factory", factory),
                    ("memory_budget_bytes", json.dumps(memory_budget_bytes)),
                ],
            )
        return store

    @classmethod
    def open(cls, path: Path) -> MetadataStore:
        """Open an existing store; IndexMismatchError when the file is not one of ours."""
        if not Path(path).is_file():
            raise CorruptIndexError(f"metadata store {path} is missing")
        store = cls(path)
        try:
            meta = store.meta()
        except sqlite3.DatabaseError as e:
            store.close()
            if "no such table" in str(e):
                raise IndexMismatchError(f"{path} is SQLite but not an index store: {e}") from e
            raise CorruptIndexError(f"{path} is not a readable SQLite database: {e}") from e
        if meta.get("schema_version") != SCHEMA_VERSION:
            store.close()
            raise IndexMismatchError(
                f"{path} has schema version {meta.get('schema_version')!r}, "
                f"expected {SCHEMA_VERSION!r}"
            )
        return store

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    # ------------------------------------------------------------------ meta
    def meta(self) -> dict[str, str]:
        return dict(self._reader.execute("SELECT name, value FROM meta").fetchall())

    @functools.cached_property
    def d(self) -> int:
        return int(self.meta()["d"])

    def generation(self) -> int:
        row = self._reader.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
        return int(row[0])

    def live_count(self) -> int:
        return self._reader.execute("SELECT COUNT(*) FROM products WHERE deleted = 0").fetchone()[0]

    # ------------------------------------------------------------------ writes
    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Cursor:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn.cursor()

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _transaction(self) -> MetadataStore._Tx:
        return self._Tx(self._writer)

    @staticmethod
    def _bump(cur: sqlite3.Cursor) -> int:
        cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'")
        return int(cur.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()[0])

    def upsert(self, records: Sequence[ProductRecord], xb: np.ndarray) -> tuple[np.ndarray, int]:
        """Insert or replace records and vectors in one transaction; -> (keys, generation)."""
        with self._transaction() as cur:
            gen = self._bump(cur)
            keys = [
                cur.execute(
                    "INSERT INTO products (id, title, category, image, attributes, vector,"
                    " generation, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
                    " ON CONFLICT (id) DO UPDATE SET title = excluded.title,"
                    " category = excluded.category, image = excluded.image,"
                    " attributes = excluded.attributes, vector = excluded.vector,"
                    " generation = excluded.generation, deleted = 0 RETURNING key",
                    (
                        r.id,
                        r.title,
                        r.category,
                        r.image,
                        json.dumps(r.attributes, allow_nan=False),
                        x.tobytes(),
                        gen,
                    ),
                ).fetchone()[0]
                for r, x in zip(records, xb, strict=True)
            ]
        self.cache.invalidate(keys)
        return np.asarray(keys, dtype=np.int64), gen

    def delete(self, product_ids: Sequence[str]) -> tuple[np.ndarray, int]:
        """Soft-delete live products in one transaction; ProductNotFound changes nothing."""
        with self._transaction() as cur:
            keys = self._keys(cur, product_ids)
            missing = [pid for pid in product_ids if pid not in keys]
            if missing:
                raise ProductNotFound(missing[0])
            gen = self._bump(cur)
            cur.executemany(
                "UPDATE products SET deleted = 1, generation = ? WHERE key = ?",
                [(gen, keys[pid]) for pid in product_ids],
            )
        self.cache.invalidate(list(keys.values()))
        return np.asarray([keys[pid] for pid in product_ids], dtype=np.int64), gen

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _chunks(values: Sequence[Any]) -> Iterator[tuple[Sequence[Any], str]]:
        for i in range(0, len(values), _CHUNK):
            chunk = values[i : i + _CHUNK]
            yield chunk, ",".join("?" * len(chunk))

    def _keys(self, cur: sqlite3.Cursor, product_ids: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for chunk, marks in self._chunks(list(product_ids)):
            out.update(
                cur.execute(
                    f"SELECT id, key FROM products WHERE deleted = 0 AND id IN ({marks})", chunk
                ).fetchall()
            )
        return out

    def keys_for_ids(self, product_ids: Sequence[str]) -> dict[str, int]:
        """Live keys of the ids that exist (unknown ids are left out)."""
        return self._keys(self._reader.cursor(), product_ids)

    def get(self, product_id: str) -> tuple[int, ProductRecord]:
        row = self._reader.execute(
            "SELECT key, id, title, category, image, attributes FROM products"
            " WHERE id = ? AND deleted = 0",
            (product_id,),
        ).fetchone()
        if row is None:
            raise ProductNotFound(product_id)
        return row[0], _record(row[1:])

    def vector(self, product_id: str) -> np.ndarray:
        """A live product's stored float32 vector, in one read (no record): the first step of
        every "more like this" and recognised-photo search."""
        row = self._reader.execute(
            "SELECT vector FROM products WHERE id = ? AND deleted = 0", (product_id,)
        ).fetchone()
        if row is None:
            raise ProductNotFound(product_id)
        return np.frombuffer(row[0], dtype=np.float32).copy()

    def image_in_use(self, image: str) -> bool:
        """Whether any live product records this image path (a scan: writes only)."""
        row = self._reader.execute(
            "SELECT 1 FROM products WHERE deleted = 0 AND image = ? LIMIT 1", (image,)
        ).fetchone()
        return row is not None

    def records(self, keys: Iterable[int], remember: bool = True) -> dict[int, ProductRecord]:
        """key -> record (deleted rows included); `remember=False` for whole-catalog scans,
        which would only flush the cache."""
        out: dict[int, ProductRecord] = {}
        missing = []
        for key in map(int, keys):
            record = self.cache.get(key)
            if record is None:
                missing.append(key)
            else:
                out[key] = record
        if not missing:
            return out
        epoch = self.cache.epoch  # before the read: see RecordCache
        found: dict[int, ProductRecord] = {}
        for chunk, marks in self._chunks(missing):
            for row in self._reader.execute(
                f"SELECT key, id, title, category, image, attributes FROM products"
                f" WHERE key IN ({marks})",
                chunk,
            ):
                found[row[0]] = _record(row[1:])
        if remember:
            self.cache.fill(epoch, found)
        out.update(found)
        return out

    def vectors(self, keys: np.ndarray) -> np.ndarray:
        """Stored float32 vectors of keys, in order (exact re-ranking and rebuilds)."""
        d = self.d
        found: dict[int, bytes] = {}
        for chunk, marks in self._chunks([int(k) for k in keys]):
            found.update(
                self._reader.execute(
                    f"SELECT key, vector FROM products WHERE key IN ({marks})", chunk
                ).fetchall()
            )
        xb = np.empty((len(keys), d), dtype=np.float32)
        for i, key in enumerate(keys):
            xb[i] = np.frombuffer(found[int(key)], dtype=np.float32)
        return xb

    def keys_with_category_prefix(self, prefix: str) -> np.ndarray:
        """Sorted live keys whose category is `prefix` or lies below it (whole levels)."""
        return self.keys_matching(ProductFilter(categories=(prefix,)))

    def keys_matching(self, where: ProductFilter) -> np.ndarray:
        """Sorted live keys that pass `where`."""
        clause, params = where.sql()
        rows = self._reader.execute(
            f"SELECT key FROM products WHERE {clause} ORDER BY key", params
        ).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def page(
        self, after: int, limit: int, where: ProductFilter
    ) -> list[tuple[int, ProductRecord]]:
        """Up to `limit` live (key, record) pairs with key > `after`, in key order: keys are
        never reused and an upsert keeps its key, so paging by key is stable under writes."""
        clause, params = where.sql()
        rows = self._reader.execute(
            f"SELECT key, id, title, category, image, attributes FROM products"
            f" WHERE key > ? AND {clause} ORDER BY key LIMIT ?",
            [after, *params, limit],
        ).fetchall()
        return [(row[0], _record(row[1:])) for row in rows]

    def categories(self) -> list[str]:
        """The distinct categories of live products, sorted."""
        rows = self._reader.execute(
            "SELECT DISTINCT category FROM products WHERE deleted = 0 ORDER BY category"
        ).fetchall()
        return [r[0] for r in rows]

    def facet_counts(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """Live products per category path and per (attribute, value): what a shop's filter
        menus offer. Values are counted as text; nested ones (objects, arrays) are skipped."""
        categories = dict(
            self._reader.execute(
                "SELECT category, COUNT(*) FROM products WHERE deleted = 0 GROUP BY category"
            ).fetchall()
        )
        attributes: dict[str, dict[str, int]] = {}
        for name, value, count in self._reader.execute(
            "SELECT j.key, CAST(j.value AS TEXT), COUNT(*) FROM products, json_each(attributes) j"
            " WHERE deleted = 0 AND j.type NOT IN ('object', 'array', 'null')"
            " GROUP BY j.key, CAST(j.value AS TEXT)"
        ):
            attributes.setdefault(name, {})[value] = count
        return categories, attributes

    def changes_since(self, generation: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows changed after `generation`: (upserted keys, their vectors, deleted keys)."""
        rows = self._reader.execute(
            "SELECT key, deleted, vector FROM products WHERE generation > ? ORDER BY key",
            (generation,),
        ).fetchall()
        return self._split(rows)

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """All live (keys, vectors), for rebuilding a lost snapshot."""
        rows = self._reader.execute(
            "SELECT key, deleted, vector FROM products WHERE deleted = 0 ORDER BY key"
        ).fetchall()
        keys, xb, _ = self._split(rows)
        return keys, xb

    def _split(self, rows: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.d
        up = [r for r in rows if not r[1]]
        keys = np.asarray([r[0] for r in up], dtype=np.int64)
        xb = np.empty((len(up), d), dtype=np.float32)
        for i, r in enumerate(up):
            xb[i] = np.frombuffer(r[2], dtype=np.float32)
        deleted = np.asarray([r[0] for r in rows if r[1]], dtype=np.int64)
        return keys, xb, deleted

    def checkpoint(self) -> None:
        """Fold the WAL into the main file at save time (durability does not depend on it)."""
        self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
