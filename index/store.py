"""ProductIndex: FAISS vectors + SQLite metadata behind one lock, saved crash-safely.

SQLite is the durable truth: an upsert or delete commits there (metadata, vector, new
generation, one transaction) before the in-memory FAISS index changes, so a write is durable
when the call returns. `save()` writes a FAISS snapshot (tmp + fsync + rename, under a new
name) and then the manifest (same way, last), which names the snapshot, its sha256 and its
generation. `open()` verifies the manifest, loads the snapshot and replays newer rows; a lost
or damaged snapshot is rebuilt from SQLite, while a foreign or mismatched file is refused.

With `prefix_dims` a second vector index holds the first prefix_dims columns of every row and
answers the queries whose other columns are all zero (same scores: the other columns add
nothing to their inner products). The served space's titles are such queries (HUSE block,
visual block zero): an approximate index over whole rows scatters their neighbours over many
lists, and a prefix index is also cheaper to scan (docs/performance.md). It is saved, loaded,
replayed and rebuilt like the main one.
"""

from __future__ import annotations

import json
import logging
import platform
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from huse_common.atomic import replacing, sha256_file, write_atomic
from huse_common.vectors import row_norms
from index.arrays import as_matrix
from index.errors import IndexMismatchError, IndexStoreError
from index.metadata import MetadataStore, ProductFilter, ProductRecord
from index.plan import IndexPlan, prefix_plan
from index.rwlock import RWLock
from index.snapshot import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    METADATA,
    PREFIX,
    load_vectors,
    read_manifest,
)
from index.vectors import VectorIndex

logger = logging.getLogger(__name__)

__all__ = ["Hit", "ProductFilter", "ProductIndex", "ProductRecord", "check_ids", "validate_batch"]

UNIT_NORM_TOLERANCE = 1e-3  # stored vectors must be L2-normalised: scores are cosines


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    record: ProductRecord


def _versions() -> dict[str, str]:
    import faiss

    return {
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def validate_batch(
    records: Sequence[ProductRecord], xb: Any, d: int
) -> tuple[list[ProductRecord], np.ndarray]:
    """The write contract every store checks first: records + unit-norm (n, d) rows, unique ids.

    Returns the records with normalised categories and xb as contiguous float32; raises
    TypeError/ValueError (naming the bad rows) before anything is written.
    """
    if isinstance(records, ProductRecord) or not isinstance(records, Sequence):
        raise TypeError(f"records must be a list of ProductRecord, got {type(records).__name__}")
    bad = [r for r in records if not isinstance(r, ProductRecord)]
    if bad:
        raise TypeError(f"records must be ProductRecord, got {type(bad[0]).__name__}")
    xb = as_matrix(xb, d)
    if xb.shape[0] != len(records):
        raise ValueError(f"got {len(records)} records but xb has shape {xb.shape}")
    norms = row_norms(xb)
    off = np.flatnonzero(np.abs(norms - 1) > UNIT_NORM_TOLERANCE)
    if off.shape[0]:
        raise ValueError(
            f"xb rows must be L2-normalised; rows {off[:10].tolist()} have norms "
            f"{np.round(norms[off[:10]], 4).tolist()}"
        )
    checked = [r.validated() for r in records]
    ids = [r.id for r in checked]
    dups = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dups:
        raise ValueError(f"duplicate product ids within one batch: {dups[:10]}")
    return checked, xb


def check_ids(product_ids: Sequence[str]) -> list[str]:
    """A list of str ids (a bare str is refused: it would iterate as characters)."""
    if isinstance(product_ids, str) or not all(isinstance(i, str) for i in product_ids):
        raise TypeError(f"product ids must be a list of str, got {product_ids!r:.200}")
    return list(product_ids)


class ProductIndex:
    """Products with metadata and vectors; k-NN search with category and id filters."""

    # search() and vector() take wait=False: in memory, they either answer now or raise
    # IndexBusy, so a caller on an event loop can try them without blocking it.
    nonblocking_reads = True

    def __init__(
        self,
        directory: Path,
        meta: MetadataStore,
        vi: VectorIndex,
        manifest: dict[str, Any],
        prefix_vi: VectorIndex | None = None,
    ) -> None:
        """Use create() or open(); this only wires parts that are already consistent."""
        self.directory = directory
        self._meta = meta
        self._vi = vi
        self._prefix_vi = prefix_vi  # over the first prefix_dims columns (module docstring)
        self._manifest = manifest
        self._lock = RWLock()
        self._save_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def _new_vectors(
        d: int, factory: str, meta: MetadataStore, budget: int | None, **kwargs: Any
    ) -> VectorIndex:
        return VectorIndex(
            d, factory, memory_budget_bytes=budget, exact_vectors=meta.vectors, **kwargs
        )

    @staticmethod
    def _new_prefix_vectors(
        prefix_dims: int, factory: str, meta: MetadataStore, budget: int | None, **kwargs: Any
    ) -> tuple[VectorIndex, str]:
        """The prefix index and its requested factory: the main one's where it fits prefix_dims
        columns (a PQ code count may not divide them), else "auto"."""

        def exact(keys: Any) -> np.ndarray:
            return meta.vectors(keys)[:, :prefix_dims]

        kwargs["plan"] = prefix_plan(kwargs.get("plan"))
        for requested in dict.fromkeys((factory, "auto")):
            try:
                vi = VectorIndex(prefix_dims, requested, memory_budget_bytes=budget,
                                 exact_vectors=exact, **kwargs)
            except ValueError:
                continue
            return vi, requested
        raise AssertionError("an 'auto' VectorIndex always constructs")

    @classmethod
    def create(
        cls,
        directory: str | Path,
        d: int,
        bundle_fingerprint: str,
        factory: str = "auto",
        memory_budget_bytes: int | None = None,
        use_gpu: bool | str = "auto",
        plan: IndexPlan | None = None,
        prefix_dims: int | None = None,
    ) -> ProductIndex:
        """Start an empty index in `directory` (which must not hold one already); with
        `prefix_dims` (1 <= prefix_dims < d), a prefix index too (module docstring)."""
        directory = Path(directory)
        if not isinstance(bundle_fingerprint, str) or not bundle_fingerprint:
            raise ValueError(
                f"bundle_fingerprint must be a non-empty str, got {bundle_fingerprint!r}"
            )
        if (directory / MANIFEST).exists() or (directory / METADATA).exists():
            raise IndexStoreError(f"{directory} already holds an index; use ProductIndex.open")
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        if prefix_dims is not None and (
            not isinstance(prefix_dims, int) or isinstance(prefix_dims, bool)
            or not 1 <= prefix_dims < d
        ):
            raise ValueError(f"prefix_dims must be an int in [1, {d}), got {prefix_dims!r}")
        directory.mkdir(parents=True, exist_ok=True)
        meta = MetadataStore.create(
            directory / METADATA, d, bundle_fingerprint, factory, memory_budget_bytes
        )
        prefix_vi = None
        manifest: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "save_seq": 0, "build": {}
        }
        try:
            vi = cls._new_vectors(d, factory, meta, memory_budget_bytes, use_gpu=use_gpu, plan=plan)
            if prefix_dims is not None:
                prefix_vi, requested = cls._new_prefix_vectors(
                    prefix_dims, factory, meta, memory_budget_bytes, use_gpu=use_gpu, plan=plan
                )
                manifest[PREFIX] = {"dims": prefix_dims, "requested_factory": requested}
        except (ValueError, TypeError):
            meta.close()
            for path in directory.glob(METADATA + "*"):
                path.unlink()
            raise
        store = cls(directory, meta, vi, manifest, prefix_vi)
        store.save()
        return store

    @classmethod
    def open(
        cls,
        directory: str | Path,
        expected_fingerprint: str | None = None,
        use_gpu: bool | str = "auto",
        plan: IndexPlan | None = None,
        rebuild_if_corrupt: bool = True,
    ) -> ProductIndex:
        """Open and verify an index; replay writes newer than its snapshot.

        IndexMismatchError: another format, bundle or dimension. CorruptIndexError: unreadable
        manifest or SQLite, or (with rebuild_if_corrupt=False) a missing or damaged snapshot;
        with rebuild_if_corrupt=True the snapshot is rebuilt from SQLite, with a warning.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        fingerprint = manifest.get("bundle_fingerprint")
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise IndexMismatchError(
                f"index in {directory} was built for bundle {fingerprint!r}, "
                f"not {expected_fingerprint!r}"
            )
        meta = MetadataStore.open(directory / METADATA)
        try:
            vi = load_vectors(directory, manifest, meta, rebuild_if_corrupt, use_gpu, plan)
            prefix_vi = None
            if manifest.get(PREFIX):
                prefix_vi = load_vectors(directory, manifest, meta, rebuild_if_corrupt, use_gpu,
                                         plan, prefix_dims=int(manifest[PREFIX]["dims"]))
        except BaseException:
            meta.close()
            raise
        return cls(directory, meta, vi, manifest, prefix_vi)

    def close(self) -> None:
        """Release SQLite connections (writes are already durable; save() is separate)."""
        with self._lock.write():
            if not self._closed:
                self._meta.close()
                self._closed = True

    def __enter__(self) -> ProductIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise IndexStoreError(f"index in {self.directory} is closed")

    # ------------------------------------------------------------------ writes
    def upsert(self, records: Sequence[ProductRecord], xb: Any) -> None:
        """Insert or replace products (metadata and vector together); durable on return."""
        checked, xb = validate_batch(records, xb, self._vi.d)
        if not checked:
            return
        prefix = None if self._prefix_vi is None else xb[:, : self._prefix_vi.d]
        if prefix is not None and not prefix.any(axis=1).all():
            raise ValueError(f"rows {np.flatnonzero(~prefix.any(axis=1))[:10].tolist()} are "
                             f"zero in their first {prefix.shape[1]} columns (the prefix index's)")
        with self._lock.write():
            self._check_open()
            self._vi.prepare(xb)  # an untrained index that cannot train fails here, not later
            if self._prefix_vi is not None:
                self._prefix_vi.prepare(prefix)
            keys, _ = self._meta.upsert(checked, xb)
            self._vi.upsert(keys, xb)
            if self._prefix_vi is not None:
                self._prefix_vi.upsert(keys, prefix)

    def delete(self, product_ids: Sequence[str]) -> None:
        """Delete products; ProductNotFound (nothing deleted) if any id is not live."""
        ids = check_ids(product_ids)
        if not ids:
            return
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate product ids within one batch: {sorted(ids)[:10]}")
        with self._lock.write():
            self._check_open()
            keys, _ = self._meta.delete(ids)
            self._vi.remove(keys)
            if self._prefix_vi is not None:
                self._prefix_vi.remove(keys)

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        with self._lock.read():
            return self._vi.ntotal

    @property
    def d(self) -> int:
        return self._vi.d

    @property
    def search_effort(self) -> int | None:
        """nprobe (IVF) or efSearch (HNSW) in effect; None for exact indexes."""
        with self._lock.read():
            return self._vi.search_effort

    def set_search_effort(self, value: int, part: str = "main") -> int:
        """Trade speed for recall (saved with the next snapshot) of the main index or, with
        part="prefix", of the prefix index; returns the value in effect."""
        if part not in ("main", "prefix"):
            raise ValueError(f"part must be 'main' or 'prefix', got {part!r}")
        with self._lock.write():
            if part == "main":
                return self._vi.set_search_effort(value)
            if self._prefix_vi is None:
                raise IndexStoreError(f"index in {self.directory} has no prefix index")
            return self._prefix_vi.set_search_effort(value)

    @property
    def prefix_search_effort(self) -> int | None:
        """The prefix index's nprobe or efSearch (None: exact, empty or no prefix index)."""
        with self._lock.read():
            return None if self._prefix_vi is None else self._prefix_vi.search_effort

    @property
    def prefix_dims(self) -> int | None:
        """Columns of the prefix index (None: none; module docstring)."""
        return None if self._prefix_vi is None else self._prefix_vi.d

    def on_prefix(self, xq: np.ndarray) -> np.ndarray:
        """Which (n, d) query rows the prefix index answers: those zero past its columns
        (all False without one)."""
        if self._prefix_vi is None:
            return np.zeros(len(xq), dtype=bool)
        return ~np.asarray(xq)[:, self._prefix_vi.d :].any(axis=1)

    @property
    def factory(self) -> str:
        """The FAISS factory string in use ("" while an "auto" index is still empty)."""
        return self._vi.factory

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as last saved (or loaded)."""
        return json.loads(json.dumps(self._manifest))

    def get(self, product_id: str) -> ProductRecord:
        with self._lock.read():
            self._check_open()
            return self._meta.get(product_id)[1]

    def image_in_use(self, image: str) -> bool:
        """Whether any live product records `image` (the API deletes unreferenced uploads)."""
        with self._lock.read():
            self._check_open()
            return self._meta.image_in_use(image)

    def facet_counts(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """(products per category path, {attribute: {value: products}}) over live products."""
        with self._lock.read():
            self._check_open()
            return self._meta.facet_counts()

    def vector(self, product_id: str, wait: bool = True) -> np.ndarray:
        """A live product's stored row; `wait=False`: IndexBusy rather than wait for a write."""
        with self._lock.read(wait):
            self._check_open()
            return self._meta.vector(product_id)

    def live_vectors(self) -> tuple[list[str], np.ndarray]:
        """Ids and stored vectors of every live product (whole-catalog scans such as
        near-duplicate listings)."""
        with self._lock.read():
            self._check_open()
            keys, xb = self._meta.live()
            records = self._meta.records(keys, remember=False)
        return [records[int(k)].id for k in keys], xb

    def search(
        self,
        xq: Any,
        k: int,
        category_prefix: str | None = None,
        exclude_ids: Sequence[str] | None = None,
        where: ProductFilter | None = None,
        wait: bool = True,
    ) -> list[list[Hit]]:
        """k nearest products per query row, best first; fewer only if fewer match.

        `category_prefix` and `where` (categories, attribute equality) both restrict hits.
        `wait=False` raises IndexBusy instead of waiting for a write (nonblocking_reads)."""
        excluded_ids = check_ids(exclude_ids) if exclude_ids is not None else None
        with self._lock.read(wait):
            self._check_open()
            allowed = None
            if category_prefix is not None:
                allowed = self._meta.keys_with_category_prefix(category_prefix)
            if where is not None:
                matching = self._meta.keys_matching(where)
                allowed = matching if allowed is None else np.intersect1d(allowed, matching)
            excluded = None
            if excluded_ids:
                excluded = np.asarray(
                    list(self._meta.keys_for_ids(excluded_ids).values()), np.int64
                )
            D, I = self._search_vectors(xq, k, allowed, excluded)  # noqa: E741
            # Python lists, not numpy scalars: ~10x cheaper per hit on this per-query path
            scores, keys = D.tolist(), I.tolist()
            records = self._meta.records({key for row in keys for key in row if key >= 0})
        return [
            [
                Hit(records[key].id, score, records[key])
                for score, key in zip(score_row, key_row, strict=True)
                if key >= 0
            ]
            for score_row, key_row in zip(scores, keys, strict=True)
        ]

    def _search_vectors(
        self, xq: Any, k: int, allowed: Any, excluded: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """The main index, or the prefix index for rows zero past its columns."""
        if self._prefix_vi is None:
            return self._vi.search(xq, k, allowed=allowed, excluded=excluded)
        xq = as_matrix(xq, self._vi.d, "xq")
        p = self._prefix_vi.d
        on_prefix = self.on_prefix(xq)
        if on_prefix.all():
            return self._prefix_vi.search(xq[:, :p], k, allowed=allowed, excluded=excluded)
        if not on_prefix.any():
            return self._vi.search(xq, k, allowed=allowed, excluded=excluded)
        D, I = self._vi.search(xq[~on_prefix], k, allowed=allowed, excluded=excluded)  # noqa: E741
        Dp, Ip = self._prefix_vi.search(xq[on_prefix, :p], k, allowed=allowed, excluded=excluded)
        scores = np.empty((xq.shape[0], k), np.float32)
        keys = np.empty((xq.shape[0], k), np.int64)
        scores[~on_prefix], keys[~on_prefix] = D, I
        scores[on_prefix], keys[on_prefix] = Dp, Ip
        return scores, keys

    def page(
        self, after: int, limit: int, where: ProductFilter | None = None
    ) -> list[tuple[int, ProductRecord]]:
        """Live (key, record) pairs after key `after`, in key order (a stable cursor)."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._lock.read():
            self._check_open()
            return self._meta.page(after, limit, where or ProductFilter())

    def categories(self) -> list[str]:
        """Distinct categories of live products, sorted."""
        with self._lock.read():
            self._check_open()
            return self._meta.categories()

    # ------------------------------------------------------------------ persistence
    def record_build(self, info: dict[str, Any]) -> None:
        """Attach build facts (recall@10, timings) to the manifest from the next save() on."""
        self._manifest["build"] = json.loads(json.dumps(info))

    def save(self) -> dict[str, Any]:
        """Snapshot the vectors, then write the manifest; returns the new manifest.

        Holds the read side of the lock: writes wait, searches go on while the file is written.
        """
        with self._save_lock, self._lock.read():
            self._check_open()
            self._meta.checkpoint()
            seq = int(self._manifest.get("save_seq", 0)) + 1
            snapshot = self._snapshot(self._vi, f"vectors.{seq}.faiss")
            prefix = {}
            if self._prefix_vi is not None:
                prefix = {PREFIX: {
                    **self._manifest[PREFIX],
                    "factory": self._prefix_vi.factory,
                    "snapshot": self._snapshot(self._prefix_vi, f"prefix.{seq}.faiss"),
                    "vector_state": self._prefix_vi.state(),
                }}
            info = self._meta.meta()
            manifest = {
                **self._manifest,
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "save_seq": seq,
                "d": self._vi.d,
                "bundle_fingerprint": info["bundle_fingerprint"],
                "requested_factory": info["factory"],
                "factory": self._vi.factory,
                "ntotal": self._vi.ntotal,
                "generation": self._meta.generation(),
                "snapshot": snapshot,
                "vector_state": self._vi.state(),
                **prefix,
                "versions": _versions(),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_atomic(self.directory / MANIFEST, json.dumps(manifest, indent=2).encode())
            self._manifest = manifest
            keep = {s["file"] for s in (snapshot, prefix.get(PREFIX, {}).get("snapshot")) if s}
            self._remove_stale_snapshots(keep)
            return self.manifest

    def _snapshot(self, vi: VectorIndex, name: str) -> dict[str, Any] | None:
        """Write `vi` to `name` atomically: its manifest entry, or None while it is empty."""
        if not vi.factory:
            return None
        with replacing(self.directory / name) as tmp:
            vi.write(tmp)
        path = self.directory / name
        return {"file": name, "sha256": sha256_file(path), "bytes": path.stat().st_size}

    def _remove_stale_snapshots(self, keep: set[str]) -> None:
        for pattern in ("vectors.*.faiss*", "prefix.*.faiss*"):
            for path in self.directory.glob(pattern):
                if path.name not in keep:
                    path.unlink(missing_ok=True)
