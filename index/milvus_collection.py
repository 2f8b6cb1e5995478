"""A Milvus product collection's layout and lifecycle: the schema and the row of a product that
must fit it, the contract properties, and the alias swap. `index.milvus_store` holds the store.

`name` is an alias of a physical collection `name__<stamp>`: a rebuild fills a new collection and
then moves the alias (as the FAISS store swaps its directory), so a half-built index is never
served. Collection properties carry the contract facts (format, d, bundle fingerprint, index
type, build facts), checked on open.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import numpy as np

from index.errors import IndexMismatchError, IndexStoreError
from index.metadata import ProductRecord
from index.milvus_expr import category_paths, literal, row_key
from index.milvus_target import MilvusPlan, MilvusTarget, connect, milvus_index, parse_milvus_uri

logger = logging.getLogger(__name__)

FORMAT = "huse-index-milvus"
FORMAT_VERSION = "1"
META_FIELDS = ["id", "title", "category", "image", "attributes"]
PROP = "huse."  # prefix of every collection property this package writes


def exists(client: Any, name: str) -> bool:
    return bool(client.has_collection(name))


def read_properties(client: Any, collection: str) -> dict[str, str]:
    """The collection's huse properties, without their prefix."""
    props = client.describe_collection(collection).get("properties", {})
    return {k[len(PROP) :]: v for k, v in props.items() if k.startswith(PROP)}


def write_properties(client: Any, collection: str, props: dict[str, str]) -> None:
    client.alter_collection_properties(
        collection, properties={PROP + k: v for k, v in props.items()}
    )


def new_collection(
    uri: str,
    d: int,
    bundle_fingerprint: str,
    factory: str,
    n_hint: int,
    plan: MilvusPlan,
    replace: bool,
) -> tuple[Any, MilvusTarget, str]:
    """(client, target, collection) of a new empty collection for `uri`, not yet served.

    An index already at `uri` is an error unless replace=True."""
    target = parse_milvus_uri(uri)
    if not isinstance(bundle_fingerprint, str) or not bundle_fingerprint:
        raise ValueError(f"bundle_fingerprint must be a non-empty str, got {bundle_fingerprint!r}")
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    index_type, params = milvus_index(factory, n_hint, plan)
    client = connect(target)
    if not replace and exists(client, target.name):
        client.close()
        raise IndexStoreError(f"{uri} already holds an index; use MilvusProductIndex.open")
    collection = f"{target.name}__{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}"
    props = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "d": str(d),
        "bundle_fingerprint": bundle_fingerprint,
        "factory": index_type,
        "index_params": json.dumps(params),
        "search_effort": str(plan.ivf_nprobe) if index_type == "IVF_FLAT" else "",
        "build": "{}",
    }
    _create_collection(client, collection, d, index_type, params, plan, props)
    return client, target, collection


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
        properties={PROP + k: v for k, v in props.items()},
    )


def publish(client: Any, target: MilvusTarget, collection: str) -> None:
    """Point the served name at `collection`; the collection it replaces is dropped."""
    name = target.name
    old = None
    if exists(client, name):
        old = client.describe_collection(name)["collection_name"]
        if old == name:
            raise IndexMismatchError(
                f"{target.uri}: {name!r} is a plain collection, not a huse alias"
            )
        client.alter_alias(collection, name)
    else:
        client.create_alias(collection, name)
    if old is not None and old != collection:
        client.drop_collection(old)
    logger.info("%s now serves collection %s", target.uri, collection)


def discard(client: Any, target: MilvusTarget, collection: str) -> None:
    """Drop `collection` unless it is the served one (a failed staged build)."""
    served = None
    if exists(client, target.name):
        served = client.describe_collection(target.name)["collection_name"]
    if served != collection:
        client.drop_collection(collection)


def open_served(uri: str, expected_fingerprint: str | None) -> tuple[Any, MilvusTarget, str]:
    """(client, target, collection) `uri` serves, loaded; IndexMismatchError for another format
    or bundle."""
    target = parse_milvus_uri(uri)
    client = connect(target)
    try:
        if not exists(client, target.name):
            raise IndexStoreError(f"{uri} holds no index (no collection {target.name!r})")
        info = client.describe_collection(target.name)
        props = info.get("properties", {})
        if props.get(PROP + "format") != FORMAT:
            raise IndexMismatchError(f"{uri}: collection is not a {FORMAT} collection")
        if props.get(PROP + "format_version") != FORMAT_VERSION:
            raise IndexMismatchError(
                f"{uri} has format version {props.get(PROP + 'format_version')!r}, "
                f"this code reads {FORMAT_VERSION}"
            )
        fingerprint = props.get(PROP + "bundle_fingerprint")
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise IndexMismatchError(
                f"index at {uri} was built for bundle {fingerprint!r}, not {expected_fingerprint!r}"
            )
        client.load_collection(info["collection_name"])
    except BaseException:
        client.close()
        raise
    return client, target, info["collection_name"]


def product_row(record: ProductRecord, x: np.ndarray, plan: MilvusPlan) -> dict[str, Any]:
    """The collection row of a product; ValueError where it cannot fit the schema or filters."""
    for name in ("id", "category", "image"):
        literal(getattr(record, name))  # these appear in filters: refuse what cannot
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


def product_record(row: dict[str, Any]) -> ProductRecord:
    """The ProductRecord of a row read with META_FIELDS."""
    return ProductRecord(
        row["id"], row["title"], row["category"], row["image"], dict(row["attributes"])
    )
