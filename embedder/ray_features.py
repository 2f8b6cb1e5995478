"""Batch feature extraction on Ray Data: the catalog's shards as blocks, the backbones in an
actor pool, feature shards (embedder.shards) written by the actors, the feature cache filled.

    shards = extract_features_ray(products, "efficientnet-lite0", "minilm", out_dir, cache)

The validated catalog (embedder.catalog.read_catalog, on the driver) is cut into shards of
`shard_size` rows; each shard is one row of a Ray Dataset, and `map_batches` hands it to an
actor that holds both backbones (one actor per GPU, or per `cpus_per_actor` cores) and writes
its Parquet file. Shards already written with the same digest are skipped, so an interrupted
run resumes. The driver then writes the manifest and puts every vector missing from the
content-hash FeatureCache into it, so a later local run computes nothing.

The actor computes what the local path computes (embedder.features: the same DataLoader over
the same preprocessing, the same text encoder), so features agree within float rounding.
`out_dir` must be on storage every node sees (a shared filesystem) when the cluster has more
than one machine. A local cluster (no address) binds 127.0.0.1 only and sends no usage stats.
Ray's start-up costs seconds and on 2 cores it runs slower than the plain loop: it is for
catalogs and clusters that outgrow one process, never the default.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.catalog import Product
from embedder.features import FeatureCache, encode_image_files, text_key
from embedder.images import DEFAULT_LIMITS, ImageLimits
from embedder.shards import (
    FeatureShards,
    ShardData,
    ShardSpec,
    plan_shards,
    shard_manifest,
    write_manifest,
    write_shard,
)

logger = logging.getLogger(__name__)

__all__ = ["RayFeaturesConfig", "ShardEmbedder", "extract_features_ray"]

# A local test cluster must not phone home or need an auth token (facts found with Ray 2.60).
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


@dataclass(frozen=True)
class RayFeaturesConfig:
    """How the Ray path runs; defaults suit one machine, `address` joins a cluster."""

    address: str | None = None  # None: start a local cluster on 127.0.0.1 (or use a running one)
    shard_size: int = 10_000  # products per shard (one actor call, one Parquet file)
    # Actors in the pool; None = one per GPU, else (CPUs - 1) // cpus_per_actor, at least 1:
    # the dataset's own tasks need a free CPU (a pool of 2 one-CPU actors deadlocked on 2 CPUs).
    actors: int | None = None
    cpus_per_actor: float = 1.0
    image_batch_size: int = 32
    text_batch_size: int = 64
    loader_workers: int = 0  # DataLoader processes inside each actor
    device: str | None = None  # None: the backbone's default (CUDA when the actor has a GPU)
    limits: ImageLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if self.shard_size < 1 or self.cpus_per_actor <= 0:
            raise ValueError(
                f"need shard_size >= 1 and cpus_per_actor > 0, got {self.shard_size}, "
                f"{self.cpus_per_actor}"
            )
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be >= 1 or None, got {self.actors}")


class ShardEmbedder:
    """The actor: both backbones loaded once; each call embeds whole shards and writes them."""

    def __init__(
        self, image_spec: str, text_spec: str, out_dir: str, config: RayFeaturesConfig
    ) -> None:
        from embedder.backbones import load_backbone

        self.image = load_backbone(image_spec, device=config.device)
        self.text = load_backbone(text_spec, device=config.device)
        self.out_dir = Path(out_dir)
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        files, rows, seconds = [], [], []
        for spec_json in batch["spec"]:
            t0 = time.perf_counter()
            spec = json.loads(str(spec_json))
            cfg = self.config
            paths = [Path(p) for p in spec["paths"]]
            image = np.concatenate(
                [
                    vectors
                    for _, vectors in encode_image_files(
                        paths,
                        spec["image_keys"],
                        self.image,
                        cfg.image_batch_size,
                        cfg.loader_workers,
                        cfg.limits,
                    )
                ]
            )
            text = self.text.encode(spec["titles"], batch_size=cfg.text_batch_size)
            data = ShardData(spec["ids"], spec["image_keys"], spec["text_keys"], image, text)
            write_shard(self.out_dir / spec["file"], data)
            files.append(spec["file"])
            rows.append(len(paths))
            seconds.append(time.perf_counter() - t0)
        return {"file": np.asarray(files), "rows": np.asarray(rows), "seconds": np.asarray(seconds)}


def _ray_init(address: str | None) -> bool:
    """Connect to `address`, or start a local cluster bound to 127.0.0.1; True if started here.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported: set to 0, the node address
    is the loopback one and its servers listen there only (else on every interface). So the
    local environment is set before the first `import ray`.
    """
    if address is None:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return False
    if address is None:
        if ray_constants.ENABLE_RAY_CLUSTER:
            logger.warning(
                "ray was imported before the local environment was set: its local "
                "cluster may listen on every interface"
            )
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True


def _pool_size(config: RayFeaturesConfig) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) from the cluster's resources."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return config.actors or gpus, config.cpus_per_actor, 1.0
    cpus = int(resources.get("CPU", 1))
    auto = max(1, int((cpus - 1) // config.cpus_per_actor))
    return config.actors or auto, config.cpus_per_actor, 0.0


def _namespaces(image_spec: str, text_spec: str, device: str | None) -> dict[str, dict]:
    """Spec, dim and cache namespace of both backbones (loaded once on the driver)."""
    from embedder.backbones import load_backbone

    out = {}
    for kind, spec in (("image", image_spec), ("text", text_spec)):
        backbone = load_backbone(spec, device=device)
        out[kind] = {
            "spec": backbone.spec,
            "dim": backbone.dim,
            "namespace": backbone.cache_namespace,
            "engine": backbone.engine,
        }
        del backbone
    return out


def _run_pool(
    specs: list[dict[str, Any]],
    image_spec: str,
    text_spec: str,
    out_dir: Path,
    config: RayFeaturesConfig,
) -> list[dict[str, Any]]:
    import ray

    started = _ray_init(config.address)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        actors, cpus, gpus = _pool_size(config)
        logger.info(
            "Ray: %d shards on %d actors (%.1f CPU, %.1f GPU each)", len(specs), actors, cpus, gpus
        )
        ds = ray.data.from_items(
            [{"spec": json.dumps(s)} for s in specs], override_num_blocks=len(specs)
        )
        return ds.map_batches(
            ShardEmbedder,
            fn_constructor_kwargs={
                "image_spec": image_spec,
                "text_spec": text_spec,
                "out_dir": str(out_dir),
                "config": config,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus,
            num_gpus=gpus,
        ).take_all()
    finally:
        if started:
            ray.shutdown()


def _fill_cache(shards: FeatureShards, backbones: dict[str, dict], cache: FeatureCache) -> int:
    """Put every shard vector the cache lacks into it; returns how many vectors were added."""
    added = 0
    for data in shards:
        for kind, keys, vectors in (
            ("image", data.image_keys, data.image),
            ("text", data.text_keys, data.text),
        ):
            info = backbones[kind]
            found = cache.get(info["namespace"], info["dim"], keys)
            missing = {k: i for i, k in enumerate(keys) if k not in found}
            if missing:
                cache.put(info["namespace"], list(missing), vectors[list(missing.values())])
                added += len(missing)
    return added


def extract_features_ray(
    products: Sequence[Product],
    image_spec: str,
    text_spec: str,
    out_dir: str | Path,
    cache: FeatureCache,
    config: RayFeaturesConfig | None = None,
) -> FeatureShards:
    """Feature shards for `products` (validated, in catalog order) in out_dir; returns them."""
    config = config or RayFeaturesConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    backbones = _namespaces(image_spec, text_spec, config.device)
    ids = [p.id for p in products]
    image_keys = [p.image_sha256 for p in products]
    if not all(image_keys):
        raise ValueError("products need image_sha256 (read them with embedder.catalog)")
    text_keys = [text_key(p.title) for p in products]
    namespaces = [backbones["image"]["namespace"], backbones["text"]["namespace"]]
    plan = plan_shards(ids, image_keys, text_keys, namespaces, config.shard_size)
    todo = [s for s in plan if not (out_dir / s.file).is_file()]
    logger.info("%d products in %d shards, %d to compute", len(ids), len(plan), len(todo))
    if todo:
        results = _run_pool(
            [_spec(s, products, image_keys, text_keys) for s in todo],
            image_spec,
            text_spec,
            out_dir,
            config,
        )
        logger.info(
            "Ray: %d shards (%d products) in %.1f s",
            len(results),
            sum(int(r["rows"]) for r in results),
            time.perf_counter() - t0,
        )
    write_manifest(out_dir, shard_manifest(len(ids), config.shard_size, backbones, plan))
    shards = FeatureShards(out_dir)
    added = _fill_cache(shards, backbones, cache)
    logger.info("feature cache: %d vectors added from the shards", added)
    return shards


def _spec(
    s: ShardSpec, products: Sequence[Product], image_keys: list[str], text_keys: list[str]
) -> dict[str, Any]:
    rows = range(s.start, s.stop)
    return {
        "file": s.file,
        "ids": [products[i].id for i in rows],
        "paths": [str(products[i].image_path) for i in rows],
        "titles": [products[i].title for i in rows],
        "image_keys": [image_keys[i] for i in rows],
        "text_keys": [text_keys[i] for i in rows],
    }
