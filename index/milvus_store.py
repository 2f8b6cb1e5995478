"""MilvusProductIndex: the ProductIndex contract on a Milvus collection (server or Milvus Lite).

For catalogs past one machine: Milvus shards a collection over query nodes, so the serving index
is no longer bounded by one host's memory. Same calls as `index.store.ProductIndex` (upsert,
delete, get, vector, image_in_use, search with category / attribute filters and excluded ids,
batched queries, page, categories, facet_counts, bundle-fingerprint check on open), so `api`
and `index.build` use either.

Targets are URIs: `milvus://host:port/name` (a server; token from $HUSE_MILVUS_TOKEN) or
`milvus-lite:///path/to/file.db?collection=name` (Milvus Lite, a local in-process server on
127.0.0.1: the test double, not a performance reference). `name` is an alias of a physical
collection `name__<stamp>`: a rebuild fills a new collection and then moves the alias (as the
FAISS store swaps its directory), so a half-built index is never served.

One row per product: id (primary key), vector, title, category, image, attributes (JSON),
`paths` (every whole-level prefix of the category, which category filters match exactly) and
`key` (a stable int64 from the id: the cursor of `page`). Listings (`page`, `categories`,
`facet_counts`) are scans within Milvus' query window of 16,384 rows: larger collections
refuse them with a clear error (a separate facet store would lift this). Collection
properties carry the contract facts (format, d, bundle fingerprint, index type, build facts).
Writes flush before returning; the collection uses Strong consistency, so a read sees every
write that has returned. Index types: FLAT and IVF_FLAT (filtered HNSW search measured recall
0.23 in Milvus Lite, so it is not offered).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from huse_common.categories import join_path, split_path
from index.arrays import as_matrix
from index.errors import IndexMismatchError, IndexStoreError, ProductNotFound
from index.metadata import ProductFilter, ProductRecord, normalize_category
from index.plan import IndexPlan
from index.store import Hit, check_ids, validate_batch

logger = logging.getLogger(__name__)

__all__ = ["MilvusPlan", "MilvusProductIndex", "MilvusTarget", "is_milvus_uri", "parse_milvus_uri"]

FORMAT = "huse-index-milvus"
FORMAT_VERSION = "1"
SCHEMES = ("milvus", "milvus-lite")
TOKEN_ENV = "HUSE_MILVUS_TOKEN"
DEFAULT_COLLECTION = "products"
META_FIELDS = ["id", "title", "category", "image", "attributes"]
KEY_BITS = 63  # cursor keys are non-negative int64
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")
# Milvus string literals accept \" \\ \n \t \r escapes only (json.dumps' \uXXXX is refused).
_UNQUOTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_PROP = "huse."  # prefix of every collection property this module writes
# No keepalive pings to Milvus Lite: its in-process gRPC server keeps gRPC's default ping policy
# (one per 5 min) and drops a pymilvus client (one per 10 s) after ~30 s ("too_many_pings").
LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}


@dataclass(frozen=True)
class MilvusPlan:
    """Index type choice and Milvus' own limits, in one place."""

    flat_max_n: int = IndexPlan().flat_max_n  # exact search up to here, as the FAISS plan does
    ivf_lists_per_sqrt_n: float = 4.0  # Milvus' guide: nlist ~ 4 sqrt(n)
    ivf_max_lists: int = 65_536  # Milvus' nlist limit
    ivf_nprobe: int = 16
    # A filtered IVF search keeps only the matching rows of the lists it probes, so it probes
    # more: at 1/4-1/2 selectivity, recall@10 against exact search went 0.97-0.986 -> 1.0
    # with 4x nprobe (3,000 clustered vectors, 256 lists, Milvus Lite).
    filtered_effort_factor: int = 4
    max_k: int = 16_384  # Milvus' topk limit
    query_batch: int = 1024  # query rows per search call (Milvus allows nq up to 16384)
    ids_per_filter: int = 1000  # ids per `id in [...]` expression
    rows_per_write: int = 2000  # rows per upsert call (gRPC messages stay well under 64 MiB)
    id_max_bytes: int = 1024
    text_max_bytes: int = 65_535  # Milvus' VARCHAR limit (title, category, image, each level)
    max_levels: int = 64  # category depth (array capacity of `paths`)


@dataclass(frozen=True)
class MilvusTarget:
    """Where a Milvus index lives: what MilvusClient connects to and the served name."""

    uri: str  # as given
    client_uri: str  # http://host:port, or the Milvus Lite .db path
    name: str  # the alias searched and served

    @property
    def lite(self) -> bool:
        return not self.client_uri.startswith("http")


def is_milvus_uri(target: object) -> bool:
    """Whether an index target names Milvus (else it is a FAISS index directory)."""
    return isinstance(target, str) and target.split(":", 1)[0] in SCHEMES


def _check_name(name: str, uri: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"collection name {name!r} in {uri!r} must be letters, digits and _, "
            "not starting with a digit"
        )
    return name


def parse_milvus_uri(uri: str) -> MilvusTarget:
    """`milvus://host:port/name` or `milvus-lite:///path.db[?collection=name]` -> target."""
    parsed = urlparse(uri)
    if parsed.scheme == "milvus":
        name = parsed.path.strip("/")
        if not parsed.hostname or not parsed.port or not name:
            raise ValueError(f"want milvus://host:port/collection, got {uri!r}")
        return MilvusTarget(uri, f"http://{parsed.hostname}:{parsed.port}", _check_name(name, uri))
    if parsed.scheme == "milvus-lite":
        path = parsed.netloc + parsed.path
        if not path.endswith(".db"):
            raise ValueError(f"want milvus-lite:///path/to/file.db[?collection=name], got {uri!r}")
        name = parse_qs(parsed.query).get("collection", [DEFAULT_COLLECTION])[0]
        return MilvusTarget(uri, os.path.abspath(path), _check_name(name, uri))
    raise ValueError(f"not a Milvus URI (schemes {SCHEMES}): {uri!r}")


def _literal(value: str) -> str:
    """A Milvus filter-expression string literal (ValueError where none can spell it)."""
    if _UNQUOTABLE.search(value):
        raise ValueError(f"{value!r:.100} has control characters a Milvus filter cannot spell")
    return json.dumps(value, ensure_ascii=False)


def _quotable(value: str) -> bool:
    return _UNQUOTABLE.search(value) is None


def row_key(product_id: str) -> int:
    """A stable non-negative int64 for an id (sha256 prefix): the page cursor's order."""
    digest = hashlib.sha256(product_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - KEY_BITS)


def where_filter(where: ProductFilter) -> str | None:
    """A Milvus expression for a ProductFilter; None when nothing can match (no categories)."""
    parts = []
    if where.categories is not None:
        if not where.categories:
            return None
        prefixes = ", ".join(_literal(normalize_category(c)) for c in where.categories)
        parts.append(f"array_contains_any(paths, [{prefixes}])")
    for name, value in where.attributes:
        parts.append(f"attributes[{_literal(name)}] == {_literal(str(value))}")
    return " and ".join(parts)


def category_paths(category: str) -> list[str]:
    """Every whole-level prefix of a category: 'A > B' -> ['A', 'A > B']."""
    levels = split_path(category)
    return [join_path(levels[: i + 1]) for i in range(len(levels))]


def milvus_index(factory: str, n: int, plan: MilvusPlan) -> tuple[str, dict[str, int]]:
    """(index_type, params) for n vectors from 'auto', a Milvus type or a FAISS Flat/IVF name."""
    spec = factory.strip()
    ivf = re.fullmatch(r"IVF(\d+),Flat", spec)
    if spec == "auto":
        spec = "FLAT" if n <= plan.flat_max_n else "IVF_FLAT"
    if spec in ("FLAT", "Flat"):
        return "FLAT", {}
    if spec == "IVF_FLAT" or ivf:
        auto = 2 ** round(math.log2(max(1.0, plan.ivf_lists_per_sqrt_n * math.sqrt(max(n, 1)))))
        nlist = int(ivf.group(1)) if ivf else auto
        return "IVF_FLAT", {"nlist": max(1, min(nlist, plan.ivf_max_lists))}
    raise ValueError(
        f"Milvus index type {factory!r}: use 'auto', 'FLAT', 'IVF_FLAT' or 'IVF<nlist>,Flat'"
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("pymilvus", "milvus-lite"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def _unimplemented_rpc(record: logging.LogRecord) -> bool:
    """Milvus Lite logs a traceback for each RPC it lacks that pymilvus then works around."""
    return "Method not implemented" not in record.getMessage()


def _connect(target: MilvusTarget) -> Any:
    from pymilvus import MilvusClient

    if target.lite:
        grpc_server = logging.getLogger("grpc._server")
        if _unimplemented_rpc not in grpc_server.filters:
            grpc_server.addFilter(_unimplemented_rpc)
    kwargs: dict[str, Any] = {}
    if (
        target.lite
    ):  # its gRPC server answers a client's 10 s keepalive pings with GOAWAY after 30 s
        kwargs["grpc_options"] = dict(LITE_GRPC_OPTIONS)
    token = os.environ.get(TOKEN_ENV, "")
    if token:
        kwargs["token"] = token
    return MilvusClient(target.client_uri, **kwargs)


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


class MilvusProductIndex:
    """Products with metadata and vectors in one Milvus collection; k-NN with filters."""

    def __init__(
        self, client: Any, target: MilvusTarget, collection: str, plan: MilvusPlan
    ) -> None:
        """Use create() or open(); this only wires a client to a verified collection."""
        self._client = client
        self.target = target
        self.collection = collection
        self.plan = plan
        props = client.describe_collection(collection).get("properties", {})
        self._props = {k[len(_PROP) :]: v for k, v in props.items() if k.startswith(_PROP)}
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
        target = parse_milvus_uri(uri)
        if not isinstance(bundle_fingerprint, str) or not bundle_fingerprint:
            raise ValueError(
                f"bundle_fingerprint must be a non-empty str, got {bundle_fingerprint!r}"
            )
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        index_type, params = milvus_index(factory, n_hint, plan)
        client = _connect(target)
        if not replace and cls._exists(client, target.name):
            client.close()
            raise IndexStoreError(f"{uri} already holds an index; use MilvusProductIndex.open")
        collection = f"{target.name}__{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}"
        cls._create_collection(
            client,
            collection,
            d,
            index_type,
            params,
            plan,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "d": str(d),
                "bundle_fingerprint": bundle_fingerprint,
                "factory": index_type,
                "index_params": json.dumps(params),
                "search_effort": str(plan.ivf_nprobe) if index_type == "IVF_FLAT" else "",
                "build": "{}",
            },
        )
        store = cls(client, target, collection, plan)
        if not staged:
            store.publish()
        return store

    @staticmethod
    def _exists(client: Any, name: str) -> bool:
        return bool(client.has_collection(name))

    @staticmethod
    def _create_collection(
        client: Any,
        collection: str,
        d: int,
        index_type: str,
        params: dict[str, int],
        plan: MilvusPlan,
        props: dict[str, str],
    ) -> None:
        from pymilvus import DataType

        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=plan.id_max_bytes)
        schema.add_field("key", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=d)
        for name in ("title", "category", "image"):
            schema.add_field(name, DataType.VARCHAR, max_length=plan.text_max_bytes)
        schema.add_field("attributes", DataType.JSON)
        schema.add_field(
            "paths",
            DataType.ARRAY,
            element_type=DataType.VARCHAR,
            max_capacity=plan.max_levels,
            max_length=plan.text_max_bytes,
        )
        index_params = client.prepare_index_params()
        index_params.add_index("vector", index_type=index_type, metric_type="IP", params=params)
        client.create_collection(
            collection,
            schema=schema,
            index_params=index_params,
            consistency_level="Strong",
            properties={_PROP + k: v for k, v in props.items()},
        )

    def publish(self) -> None:
        """Point the served name at this collection; the collection it replaces is dropped."""
        name = self.target.name
        old = None
        if self._exists(self._client, name):
            old = self._client.describe_collection(name)["collection_name"]
            if old == name:
                raise IndexMismatchError(
                    f"{self.target.uri}: {name!r} is a plain collection, not a huse alias"
                )
            self._client.alter_alias(self.collection, name)
        else:
            self._client.create_alias(self.collection, name)
        if old is not None and old != self.collection:
            self._client.drop_collection(old)
        logger.info("%s now serves collection %s", self.target.uri, self.collection)

    def discard(self) -> None:
        """Drop this collection unless it is the served one (a failed staged build)."""
        served = None
        if self._exists(self._client, self.target.name):
            served = self._client.describe_collection(self.target.name)["collection_name"]
        if served != self.collection:
            self._client.drop_collection(self.collection)

    @classmethod
    def open(
        cls, uri: str, expected_fingerprint: str | None = None, plan: MilvusPlan | None = None
    ) -> MilvusProductIndex:
        """Open the collection `uri` serves; IndexMismatchError for another format or bundle."""
        target = parse_milvus_uri(uri)
        client = _connect(target)
        try:
            if not cls._exists(client, target.name):
                raise IndexStoreError(f"{uri} holds no index (no collection {target.name!r})")
            info = client.describe_collection(target.name)
            props = info.get("properties", {})
            if props.get(_PROP + "format") != FORMAT:
                raise IndexMismatchError(f"{uri}: collection is not a {FORMAT} collection")
            if props.get(_PROP + "format_version") != FORMAT_VERSION:
                raise IndexMismatchError(
                    f"{uri} has format version {props.get(_PROP + 'format_version')!r}, "
                    f"this code reads {FORMAT_VERSION}"
                )
            fingerprint = props.get(_PROP + "bundle_fingerprint")
            if expected_fingerprint is not None and fingerprint != expected_fingerprint:
                raise IndexMismatchError(
                    f"index at {uri} was built for bundle {fingerprint!r}, "
                    f"not {expected_fingerprint!r}"
                )
            client.load_collection(info["collection_name"])
        except BaseException:
            client.close()
            raise
        return cls(client, target, info["collection_name"], plan or MilvusPlan())

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
    def _row(self, record: ProductRecord, x: np.ndarray) -> dict[str, Any]:
        plan = self.plan
        for name in ("id", "category", "image"):
            _literal(getattr(record, name))  # these appear in filters: refuse what cannot
        sizes = {
            "id": (record.id, plan.id_max_bytes),
            "title": (record.title, plan.text_max_bytes),
            "category": (record.category, plan.text_max_bytes),
            "image": (record.image, plan.text_max_bytes),
        }
        for name, (value, limit) in sizes.items():
            if len(value.encode()) > limit:
                raise ValueError(f"{name} of {record.id!r:.100} is over {limit} bytes")
        paths = category_paths(record.category)
        if len(paths) > plan.max_levels:
            raise ValueError(f"category of {record.id!r} has over {plan.max_levels} levels")
        return {
            "id": record.id,
            "key": row_key(record.id),
            "vector": x.tolist(),
            "title": record.title,
            "category": record.category,
            "image": record.image,
            "attributes": record.attributes,
            "paths": paths,
        }

    def upsert(self, records: Sequence[ProductRecord], xb: Any) -> None:
        """Insert or replace products (metadata and vector in one row); flushed on return.

        Every row is checked before the first is written; a batch over plan.rows_per_write is
        written in parts, so a failure mid-way (a lost server) can leave a prefix written.
        """
        checked, xb = validate_batch(records, xb, self.d)
        rows = [self._row(r, x) for r, x in zip(checked, xb, strict=True)]
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
        return f"id {'not in' if negate else 'in'} [{', '.join(_literal(i) for i in ids)}]"

    def _rows_for(self, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        """Live rows of the ids that exist (ids no filter can spell cannot exist)."""
        spellable = [i for i in ids if _quotable(i)]
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

    @staticmethod
    def _record(row: dict[str, Any]) -> ProductRecord:
        return ProductRecord(
            row["id"], row["title"], row["category"], row["image"], dict(row["attributes"])
        )

    def get(self, product_id: str) -> ProductRecord:
        return self._record(self._one(product_id, META_FIELDS))

    def vector(self, product_id: str) -> np.ndarray:
        return np.asarray(self._one(product_id, ["vector"])["vector"], dtype=np.float32)

    def image_in_use(self, image: str) -> bool:
        """Whether any live product records `image` (the API deletes unreferenced uploads)."""
        self._check_open()
        if not _quotable(image):
            return False
        rows = self._client.query(
            self.collection, filter=f"image == {_literal(image)}", output_fields=["id"], limit=1
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
    ) -> list[list[Hit]]:
        """k nearest products per query row, best first; fewer only if fewer match.

        `category_prefix` and `where` (categories, attribute equality) both restrict hits."""
        xq = as_matrix(xq, self.d, "xq")
        if (
            isinstance(k, bool)
            or not isinstance(k, int | np.integer)
            or not (1 <= k <= self.plan.max_k)
        ):
            raise ValueError(f"k must be in [1, {self.plan.max_k}], got {k!r}")
        excluded = [i for i in check_ids(exclude_ids) if _quotable(i)] if exclude_ids else []
        filters = []
        if category_prefix is not None:
            prefix = _literal(normalize_category(category_prefix))
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
                    Hit(h["entity"]["id"], float(h["distance"]), self._record(h["entity"]))
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
        return [(int(r["key"]), self._record(r)) for r in rows[:limit]]

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
            "versions": _versions(),
        }

    def save(self) -> dict[str, Any]:
        """Flush, and store the search effort and build facts with the collection."""
        with self._write_lock:
            self._check_open()
            self._client.flush(self.collection)
            if self.search_effort is not None:
                self._props["search_effort"] = str(self.search_effort)
            self._client.alter_collection_properties(
                self.collection,
                properties={_PROP + k: self._props[k] for k in ("search_effort", "build")},
            )
        return self.manifest
