"""MilvusProductIndex: the ProductIndex contract on a Milvus collection (server or Milvus Lite).

For catalogs past one machine: Milvus shards a collection over query nodes, so the serving index
is no longer bounded by one host's memory. Same calls as `index.store.ProductIndex` (upsert,
delete, get, vector, image_in_use, search with category / attribute filters and excluded ids,
batched queries, page, categories, facet_counts, bundle-fingerprint check on open), so `api`
and `index.build` use either.

Targets are URIs: `milvus://host:port/name` (a server; token from $HUSE_MILVUS_TOKEN) or
`milvus-lite:///path/to/file.db?collection=name` (Milvus Lite, a local in-process server on
127.0.0.1: the test double, not a performance reference). `index.milvus_collection` holds the
collection's schema, contract properties and alias swap (a half-built index is never served).

One row per product: id (primary key), vector, title, category, image, attributes (JSON),
`paths` (every whole-level prefix of the category, which category filters match exactly) and
`key` (a stable int64 from the id: the cursor of `page`). Listings (`page`, `categories`,
`facet_counts`) are scans within Milvus' query window of 16,384 rows: larger collections
refuse them with a clear error (a separate facet store would lift this). Writes flush before
returning; the collection uses Strong consistency, so a read sees every write that has
returned. Index types: FLAT and IVF_FLAT (filtered HNSW search measured recall 0.23 in Milvus
Lite, so it is not offered).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from index import milvus_collection
from index.arrays import as_matrix
from index.errors import IndexStoreError, ProductNotFound
from index.metadata import ProductFilter, ProductRecord, normalize_category
from index.milvus_collection import FORMAT, FORMAT_VERSION, META_FIELDS, product_record
from index.milvus_expr import literal, quotable, where_filter
from index.milvus_target import MilvusPlan, MilvusTarget, package_versions
from index.store import Hit, check_ids, validate_batch

__all__ = ["MilvusProductIndex"]


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


class MilvusProductIndex:
    """Products with metadata and vectors in one Milvus collection; k-NN with filters."""

    nonblocking_reads = False  # every read is a network call: never on an event loop

    def __init__(
        self, client: Any, target: MilvusTarget, collection: str, plan: MilvusPlan
    ) -> None:
        """Use create() or open(); this only wires a client to a verified collection."""
        self._client = client
        self.target = target
        self.collection = collection
        self.plan = plan
        self._props = milvus_collection.read_properties(client, collection)
        self.d = int(self._props["d"])
        self._index_params = json.loads(self._props["index_params"])
        self._nprobe = int(self._props.get("search_effort") or plan.ivf_nprobe)
        self._write_lock = threading.Lock()  # one writer: delete checks, then deletes
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        uri: str,
        d: int,
        bundle_fingerprint: str,
        factory: str = "auto",
        n_hint: int = 0,
        plan: MilvusPlan | None = None,
        replace: bool = False,
        staged: bool = False,
    ) -> MilvusProductIndex:
        """A new empty collection for `uri` (n_hint: the expected size, for the index type).

        It is served at once, or with staged=True only once publish() is called (a build fills
        it first). An index already at `uri` is an error unless replace=True; it is dropped by
        publish(), so until then it keeps serving.
        """
        plan = plan or MilvusPlan()
        client, target, collection = milvus_collection.new_collection(
            uri, d, bundle_fingerprint, factory, n_hint, plan, replace
        )
        store = cls(client, target, collection, plan)
        if not staged:
            store.publish()
        return store

    def publish(self) -> None:
        """Point the served name at this collection; the collection it replaces is dropped."""
        milvus_collection.publish(self._client, self.target, self.collection)

    def discard(self) -> None:
        """Drop this collection unless it is the served one (a failed staged build)."""
        milvus_collection.discard(self._client, self.target, self.collection)

    @classmethod
    def open(
        cls, uri: str, expected_fingerprint: str | None = None, plan: MilvusPlan | None = None
    ) -> MilvusProductIndex:
        """Open the collection `uri` serves; IndexMismatchError for another format or bundle."""
        client, target, collection = milvus_collection.open_served(uri, expected_fingerprint)
        return cls(client, target, collection, plan or MilvusPlan())

    def close(self) -> None:
        """Drop the connection (writes are flushed already)."""
        with self._write_lock:
            if not self._closed:
                self._client.close()
                self._closed = True

    def __enter__(self) -> MilvusProductIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise IndexStoreError(f"index at {self.target.uri} is closed")

    # ------------------------------------------------------------------ writes
    def upsert(self, records: Sequence[ProductRecord], xb: Any) -> None:
        """Insert or replace products (metadata and vector in one row); flushed on return.

        Every row is checked before the first is written; a batch over plan.rows_per_write is
        written in parts, so a failure mid-way (a lost server) can leave a prefix written.
        """
        checked, xb = validate_batch(records, xb, self.d)
        rows = [
            milvus_collection.product_row(r, x, self.plan) for r, x in zip(checked, xb, strict=True)
        ]
        if not rows:
            return
        with self._write_lock:
            self._check_open()
            for part in _chunks(rows, self.plan.rows_per_write):
                self._client.upsert(self.collection, list(part))
            self._client.flush(self.collection)

    def delete(self, product_ids: Sequence[str]) -> None:
        """Delete products; ProductNotFound (nothing deleted) if any id is not live."""
        ids = check_ids(product_ids)
        if not ids:
            return
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate product ids within one batch: {sorted(ids)[:10]}")
        with self._write_lock:
            self._check_open()
            live = {row["id"] for row in self._rows_for(ids, ["id"])}
            missing = [i for i in ids if i not in live]
            if missing:
                raise ProductNotFound(missing[0])
            for part in _chunks(ids, self.plan.ids_per_filter):
                self._client.delete(self.collection, filter=self._id_filter(part))
            self._client.flush(self.collection)

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _id_filter(ids: Sequence[str], negate: bool = False) -> str:
        return f"id {'not in' if negate else 'in'} [{', '.join(literal(i) for i in ids)}]"

    def _rows_for(self, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        """Live rows of the ids that exist (ids no filter can spell cannot exist)."""
        spellable = [i for i in ids if quotable(i)]
        out: list[dict[str, Any]] = []
        for part in _chunks(spellable, self.plan.ids_per_filter):
            out.extend(
                self._client.query(
                    self.collection, filter=self._id_filter(part), output_fields=fields
                )
            )
        return out

    def _one(self, product_id: str, fields: list[str]) -> dict[str, Any]:
        check_ids([product_id])
        self._check_open()
        rows = self._rows_for([product_id], fields)
        if not rows:
            raise ProductNotFound(product_id)
        return rows[0]

    def get(self, product_id: str) -> ProductRecord:
        return product_record(self._one(product_id, META_FIELDS))

    def vector(self, product_id: str, wait: bool = True) -> np.ndarray:
        """`wait` as ProductIndex's; a network read is never tried without waiting
        (nonblocking_reads), so it is ignored."""
        return np.asarray(self._one(product_id, ["vector"])["vector"], dtype=np.float32)

    def image_in_use(self, image: str) -> bool:
        """Whether any live product records `image` (the API deletes unreferenced uploads)."""
        self._check_open()
        if not quotable(image):
            return False
        rows = self._client.query(
            self.collection, filter=f"image == {literal(image)}", output_fields=["id"], limit=1
        )
        return bool(rows)

    def __len__(self) -> int:
        self._check_open()
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    @property
    def factory(self) -> str:
        return self._props["factory"]

    @property
    def search_effort(self) -> int | None:
        """nprobe for IVF_FLAT; None for FLAT (exact)."""
        return self._nprobe if self.factory == "IVF_FLAT" else None

    def set_search_effort(self, value: int) -> int:
        """Trade speed for recall (IVF nprobe, saved with the next save()); returns it."""
        if self.factory != "IVF_FLAT":
            raise ValueError(f"index {self.factory!r} has no search effort to set")
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"search effort must be a positive int, got {value!r}")
        self._nprobe = min(int(value), int(self._index_params["nlist"]))
        return self._nprobe

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
        `wait` as ProductIndex's, ignored (nonblocking_reads)."""
        xq = as_matrix(xq, self.d, "xq")
        if (
            isinstance(k, bool)
            or not isinstance(k, int | np.integer)
            or not (1 <= k <= self.plan.max_k)
        ):
            raise ValueError(f"k must be in [1, {self.plan.max_k}], got {k!r}")
        excluded = [i for i in check_ids(exclude_ids) if quotable(i)] if exclude_ids else []
        filters = []
        if category_prefix is not None:
            prefix = literal(normalize_category(category_prefix))
            filters.append(f"array_contains(paths, {prefix})")
        if excluded:
            filters.append(self._id_filter(excluded, negate=True))
        if where is not None:
            matching = where_filter(where)
            if matching is None:
                return [[] for _ in xq]
            filters.append(matching)
        filters = [f for f in filters if f]
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.search_effort is not None:
            filtered = category_prefix is not None or where is not None
            factor = self.plan.filtered_effort_factor if filtered else 1
            nprobe = min(self.search_effort * factor, int(self._index_params["nlist"]))
            params["params"] = {"nprobe": nprobe}
        self._check_open()
        out: list[list[Hit]] = []
        for part in _chunks(xq, self.plan.query_batch):
            results = self._client.search(
                self.collection,
                data=part.tolist(),
                limit=int(k),
                filter=" and ".join(filters),
                output_fields=META_FIELDS,
                search_params=params,
            )
            for row in results:
                hits = [
                    Hit(h["entity"]["id"], float(h["distance"]), product_record(h["entity"]))
                    for h in row
                ]
                out.append(sorted(hits, key=lambda h: -h.score))
        return out

    def _scan(self, fields: list[str], expr: str = "") -> list[dict[str, Any]]:
        """Every live row matching `expr`, within Milvus' query window (refused past it)."""
        self._check_open()
        rows = self._client.query(
            self.collection, filter=expr, output_fields=fields, limit=self.plan.max_k
        )
        if len(rows) >= self.plan.max_k:
            raise IndexStoreError(
                f"{self.target.uri}: listing over {self.plan.max_k} products is not supported "
                "on Milvus yet (search is)"
            )
        return rows

    def page(
        self, after: int, limit: int, where: ProductFilter | None = None
    ) -> list[tuple[int, ProductRecord]]:
        """Live (key, record) pairs after key `after`, in key order (a stable cursor)."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        matching = where_filter(where) if where is not None else ""
        if matching is None:
            return []
        expr = " and ".join(e for e in (f"key > {int(after)}", matching) if e)
        rows = sorted(self._scan(["key", *META_FIELDS], expr), key=lambda r: r["key"])
        return [(int(r["key"]), product_record(r)) for r in rows[:limit]]

    def categories(self) -> list[str]:
        """Distinct categories of live products, sorted."""
        return sorted({r["category"] for r in self._scan(["category"])})

    def facet_counts(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """(products per category path, {attribute: {value: products}}) over live products;
        nested attribute values (objects, arrays) and nulls are not counted."""
        categories: dict[str, int] = {}
        attributes: dict[str, dict[str, int]] = {}
        for row in self._scan(["category", "attributes"]):
            categories[row["category"]] = categories.get(row["category"], 0) + 1
            for name, value in (row["attributes"] or {}).items():
                if value is None or isinstance(value, dict | list):
                    continue
                counts = attributes.setdefault(name, {})
                counts[str(value)] = counts.get(str(value), 0) + 1
        return categories, attributes

    # ------------------------------------------------------------------ persistence
    def record_build(self, info: dict[str, Any]) -> None:
        """Attach build facts (recall@10, timings) to the collection from the next save() on."""
        self._props["build"] = json.dumps(info)

    @property
    def manifest(self) -> dict[str, Any]:
        """What the collection records about itself (the FAISS store's manifest keys)."""
        return {
            "format": FORMAT,
            "format_version": int(FORMAT_VERSION),
            "uri": self.target.uri,
            "collection": self.collection,
            "d": self.d,
            "bundle_fingerprint": self._props["bundle_fingerprint"],
            "factory": self.factory,
            "index_params": self._index_params,
            "search_effort": self.search_effort,
            "ntotal": len(self),
            "build": json.loads(self._props.get("build") or "{}"),
            "versions": package_versions(),
        }

    def save(self) -> dict[str, Any]:
        """Flush, and store the search effort and build facts with the collection."""
        with self._write_lock:
            self._check_open()
            self._client.flush(self.collection)
            if self.search_effort is not None:
                self._props["search_effort"] = str(self.search_effort)
            milvus_collection.write_properties(
                self._client,
                self.collection,
                {k: self._props[k] for k in ("search_effort", "build")},
            )
        return self.manifest
