"""Opening an index directory: the manifest checks, the FAISS snapshot (verified by size and
sha256) and the replay of SQLite rows newer than it; a lost or damaged snapshot is rebuilt from
SQLite. Saving is index.store.ProductIndex.save."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from huse_common.atomic import sha256_file
from index.errors import CorruptIndexError, IndexMismatchError, IndexStoreError
from index.metadata import MetadataStore
from index.plan import IndexPlan, prefix_plan
from index.vectors import VectorIndex

logger = logging.getLogger(__name__)

FORMAT = "huse-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
METADATA = "meta.sqlite"


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexStoreError(f"{directory} is not an index directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptIndexError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexMismatchError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{path} has format version {manifest.get('format_version')!r}, "
            f"this code reads {FORMAT_VERSION}"
        )
    return manifest

PREFIX = "prefix"  # manifest entry of the prefix index (ProductIndex.create(prefix_dims=...))


def load_vectors(
    directory: Path,
    manifest: dict[str, Any],
    meta: MetadataStore,
    rebuild_if_corrupt: bool,
    use_gpu: bool | str,
    plan: IndexPlan | None,
    prefix_dims: int | None = None,
) -> VectorIndex:
    """The vector index of an index directory: its snapshot plus the rows written after it
    (or, with `prefix_dims`, the prefix index over the stored rows' first prefix_dims columns,
    from the manifest's "prefix" entry); rebuilt from SQLite when its snapshot is lost."""
    info = meta.meta()
    d = int(info["d"])
    for key, value in (("d", d), ("bundle_fingerprint", info["bundle_fingerprint"])):
        if manifest.get(key) != value:
            raise IndexMismatchError(
                f"{MANIFEST} says {key}={manifest.get(key)!r} but {METADATA} says {value!r}"
            )
    budget = json.loads(info["memory_budget_bytes"])
    part, width, factory, exact = manifest, d, info["factory"], meta.vectors
    if prefix_dims is not None:
        part, width = manifest.get(PREFIX) or {}, prefix_dims
        factory = part.get("requested_factory", "auto")
        plan = prefix_plan(plan)

        def exact(keys: Any) -> Any:
            return meta.vectors(keys)[:, :prefix_dims]

    kwargs = {
        "memory_budget_bytes": budget,
        "exact_vectors": exact,
        "use_gpu": use_gpu,
        "plan": plan,
    }
    snapshot = part.get("snapshot")
    try:
        if snapshot is None:
            vi = VectorIndex(width, factory, **kwargs)
            since = 0
        else:
            vi = _read_snapshot(directory, snapshot, width, part["vector_state"], kwargs)
            since = int(manifest["generation"])
        replay(vi, meta, since, prefix_dims)
    except CorruptIndexError as e:
        if not rebuild_if_corrupt:
            raise
        logger.warning("%s; rebuilding the vector index from %s", e, METADATA)
        vi = VectorIndex(width, factory, **kwargs)
        replay(vi, meta, 0, prefix_dims)
    return vi


def _read_snapshot(
    directory: Path,
    snapshot: dict[str, Any],
    d: int,
    state: dict[str, Any],
    kwargs: dict[str, Any],
) -> VectorIndex:
    path = directory / snapshot["file"]
    if not path.is_file():
        raise CorruptIndexError(f"snapshot {path} is missing")
    if path.stat().st_size != snapshot["bytes"] or sha256_file(path) != snapshot["sha256"]:
        raise CorruptIndexError(f"snapshot {path} does not match its checksum (truncated?)")
    return VectorIndex.read(path, d, state, **kwargs)


def replay(vi: VectorIndex, meta: MetadataStore, since: int,
           prefix_dims: int | None = None) -> None:
    """Apply SQLite's rows newer than `since` to `vi` (their first prefix_dims columns)."""
    keys, xb, deleted = meta.changes_since(since)
    gone = deleted[[int(k) in vi for k in deleted]] if deleted.shape[0] else deleted
    if gone.shape[0]:
        vi.remove(gone)
    if keys.shape[0]:
        vi.upsert(keys, xb if prefix_dims is None else xb[:, :prefix_dims])
    if vi.ntotal != meta.live_count():
        raise CorruptIndexError(
            f"vector index holds {vi.ntotal} products after replay, SQLite {meta.live_count()}"
        )
    if since or keys.shape[0]:
        logger.info(
            "replayed %d upserts and %d deletes after generation %d",
            keys.shape[0],
            gone.shape[0],
            since,
        )
