"""Feature shards: frozen features as Parquet files plus a manifest, for catalogs past memory.

The Ray path (embedder.ray_features) writes them; the streaming trainer reads them one shard at
a time. Layout of a shard directory:

- `manifest.json`: format, both backbones (spec, dim, cache namespace), n_products, shard_size,
  and per shard its file, catalog rows [start, stop) and digest;
- `features-<i>-<digest>.parquet`: columns id, image_sha256, text_key, image (dim float32),
  text (dim float32), for the validated catalog's rows start..stop.

A shard's digest hashes its ids, content keys and both cache namespaces, so a shard is reused
on resume only when it holds exactly what would be computed again. Files are written to a temp
name and renamed, so a shard either exists whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import FeatureCacheError
from huse_common.atomic import replacing, write_atomic

FORMAT = "huse-feature-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardSpec:
    """Rows [start, stop) of the validated catalog, and the digest of what they hold."""

    index: int
    start: int
    stop: int
    digest: str

    @property
    def file(self) -> str:
        return f"features-{self.index:05d}-{self.digest}.parquet"


@dataclass
class ShardData:
    """One shard's rows, aligned."""

    ids: list[str]
    image_keys: list[str]
    text_keys: list[str]
    image: np.ndarray  # (n, image dim) float32
    text: np.ndarray  # (n, text dim) float32


def plan_shards(
    ids: Sequence[str],
    image_keys: Sequence[str],
    text_keys: Sequence[str],
    namespaces: Sequence[str],
    shard_size: int,
) -> list[ShardSpec]:
    """Contiguous shards of `shard_size` rows, each named by the digest of its contents."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    specs = []
    for index, start in enumerate(range(0, len(ids), shard_size)):
        stop = min(start + shard_size, len(ids))
        digest = hashlib.sha256("\0".join(namespaces).encode())
        for i in range(start, stop):
            digest.update(f"\0{ids[i]}\0{image_keys[i]}\0{text_keys[i]}".encode())
        specs.append(ShardSpec(index, start, stop, digest.hexdigest()[:16]))
    return specs


def _vectors(x: np.ndarray) -> Any:
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def write_shard(path: Path, data: ShardData) -> None:
    """One shard as Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(data.ids)
    if not (len(data.image_keys) == len(data.text_keys) == len(data.image) == len(data.text) == n):
        raise ValueError(
            f"shard rows disagree: {n} ids, {len(data.image_keys)} image keys, "
            f"{len(data.text_keys)} text keys, image {data.image.shape}, text {data.text.shape}"
        )
    table = pa.table(
        {
            "id": pa.array(data.ids, pa.string()),
            "image_sha256": pa.array(data.image_keys, pa.string()),
            "text_key": pa.array(data.text_keys, pa.string()),
            "image": _vectors(data.image),
            "text": _vectors(data.text),
        }
    )
    with replacing(Path(path)) as tmp:
        pq.write_table(table, tmp)


def _matrix(column: Any) -> np.ndarray:
    flat = column.combine_chunks()
    dim = flat.type.list_size
    return flat.flatten().to_numpy().astype(np.float32, copy=False).reshape(-1, dim)


def read_shard(path: Path) -> ShardData:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) or OSError
        raise FeatureCacheError(f"feature shard {path} is unreadable: {e}") from e
    return ShardData(
        ids=table.column("id").to_pylist(),
        image_keys=table.column("image_sha256").to_pylist(),
        text_keys=table.column("text_key").to_pylist(),
        image=_matrix(table.column("image")),
        text=_matrix(table.column("text")),
    )


def shard_manifest(n_products: int, shard_size: int, backbones: dict[str, dict],
                   plan: Sequence[ShardSpec]) -> dict[str, Any]:
    """The manifest body: `backbones` maps "image"/"text" to {spec, dim, namespace}."""
    return {
        "n_products": n_products,
        "shard_size": shard_size,
        "image_backbone": backbones["image"],
        "text_backbone": backbones["text"],
        "shards": [{"file": s.file, "start": s.start, "stop": s.stop, "digest": s.digest}
                   for s in plan],
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = Path(directory) / MANIFEST
    body = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}, indent=2)
    write_atomic(path, body.encode())
    return path


class FeatureShards:
    """A shard directory written by the Ray path: the manifest and one shard at a time."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise FeatureCacheError(f"{self.directory} holds no feature shards (no {MANIFEST})")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise FeatureCacheError(f"{path} is not a {FORMAT} v{FORMAT_VERSION} manifest")
        self.manifest = manifest

    def __len__(self) -> int:
        return int(self.manifest["n_products"])

    @property
    def files(self) -> list[Path]:
        return [self.directory / s["file"] for s in self.manifest["shards"]]

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """Catalog rows [start, stop) of each shard."""
        return [(int(s["start"]), int(s["stop"])) for s in self.manifest["shards"]]

    def read(self, i: int) -> ShardData:
        """Shard i's rows (its catalog rows are ranges[i])."""
        return read_shard(self.files[i])

    def __iter__(self) -> Iterator[ShardData]:
        for path in self.files:
            yield read_shard(path)

    def arrays(self) -> ShardData:
        """Every shard concatenated (for catalogs that fit in memory, and for checks)."""
        parts = list(self)
        return ShardData(
            ids=[i for p in parts for i in p.ids],
            image_keys=[k for p in parts for k in p.image_keys],
            text_keys=[k for p in parts for k in p.text_keys],
            image=np.concatenate([p.image for p in parts]),
            text=np.concatenate([p.text for p in parts]),
        )
