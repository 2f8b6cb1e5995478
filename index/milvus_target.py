"""Where a Milvus index lives and how it is built: target URIs, the plan (index type and
Milvus' limits) and the client connection. `index.milvus_store` holds the store itself,
`index.milvus_collection` its collection."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from index.plan import IndexPlan

SCHEMES = ("milvus", "milvus-lite")
TOKEN_ENV = "HUSE_MILVUS_TOKEN"
DEFAULT_COLLECTION = "products"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")
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


def package_versions() -> dict[str, str]:
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


def connect(target: MilvusTarget) -> Any:
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
