"""Offline build: create a ProductIndex from a whole catalog and record its measured recall."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from huse_common.atomic import rename
from index.evaluation import exact_knn, median_nn_distance, perturbed_queries, recall_at_k
from index.plan import BuildConfig, IndexPlan
from index.store import ProductIndex, ProductRecord

logger = logging.getLogger(__name__)


def _measure(
    store: ProductIndex,
    xq: np.ndarray,
    ref: np.ndarray,
    positions: dict[str, int],
    k: int,
    timed: int,
) -> dict[str, float]:
    """recall@k of xq against `ref`, and q/s searching xq[:timed] one query at a time."""
    hits = store.search(xq, k)
    found = np.asarray([[positions[h.id] for h in row] + [-1] * (k - len(row)) for row in hits])
    timed = min(timed, xq.shape[0])
    t0 = time.perf_counter()
    for i in range(timed):
        store.search(xq[i : i + 1], k)
    seconds = time.perf_counter() - t0
    return {
        f"recall_at_{k}": recall_at_k(found, ref, k),
        "qps_batch1": round(timed / seconds, 1) if seconds > 0 else 0.0,
    }


def _measure_past(store: Any, chosen: int, config: BuildConfig, curve: list[dict[str, Any]],
                  measure: Any) -> None:
    """Extend the tuning curve past the chosen effort (doubling), then restore the choice."""
    effort = chosen
    for _ in range(config.curve_points_past_target):
        new = store.set_search_effort(min(2 * effort, config.max_search_effort))
        if new == effort:
            break
        effort = new
        curve.append({"search_effort": effort, **measure(), "past_target": True})
    store.set_search_effort(chosen)


def _fill_and_measure(
    store: Any, records: Sequence[ProductRecord], xb: np.ndarray, config: BuildConfig, t0: float
) -> dict[str, Any]:
    """Upsert everything, tune the search effort to the target recall, save; -> manifest.

    `store` is either implementation (index.store.ProductIndex, MilvusProductIndex).
    """
    store.upsert(records, xb)
    build_s = time.perf_counter() - t0
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    noise = config.query_noise
    if noise is None:
        noise = median_nn_distance(xb, config.n_eval_queries, config.seed)
    xq = perturbed_queries(xb, config.n_eval_queries, noise, config.seed)
    k = min(config.k, len(records))
    ref = exact_knn(xq, xb, k)
    positions = {r.id: i for i, r in enumerate(records)}
    effort = store.search_effort
    if effort is not None:
        effort = store.set_search_effort(config.min_search_effort)
    point = _measure(store, xq, ref, positions, k, config.timed_queries)
    curve = [{"search_effort": effort, **point}]
    while (
        effort is not None
        and point[f"recall_at_{k}"] < config.target_recall
        and effort < config.max_search_effort
    ):
        new = store.set_search_effort(min(2 * effort, config.max_search_effort))
        if new == effort:  # IVF: every list is probed already
            break
        effort, point = new, _measure(store, xq, ref, positions, k, config.timed_queries)
        curve.append({"search_effort": effort, **point})
    recall = point[f"recall_at_{k}"]
    if effort is not None:
        _measure_past(store, effort, config, curve, lambda: _measure(
            store, xq, ref, positions, k, config.timed_queries))
    logger.info(
        "built %s over %d products in %.1f s, recall@%d %.4f (effort %s)",
        store.factory,
        len(records),
        build_s,
        k,
        recall,
        effort,
    )
    store.record_build(
        {
            f"recall_at_{k}": recall,
            "recall_method": "perturbed database vectors vs exact inner product",
            "query_noise_norm": round(noise, 5),
            "search_effort": effort,
            "tuning": curve,  # recall and batch-1 q/s at each effort tried
            "eval": asdict(config),
            "build_seconds": round(build_s, 3),
        }
    )
    return store.save()


def build_milvus_index(
    uri: str,
    records: Sequence[ProductRecord],
    xb: np.ndarray,
    bundle_fingerprint: str,
    factory: str = "auto",
    config: BuildConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """build_product_index for a Milvus URI: a new collection is filled, measured, flushed,
    and only then served under the URI's name (the one it replaces is dropped)."""
    from index.milvus_store import MilvusProductIndex

    t0 = time.perf_counter()
    store = MilvusProductIndex.create(
        uri,
        d=int(np.asarray(xb).shape[-1]),
        bundle_fingerprint=bundle_fingerprint,
        factory=factory,
        n_hint=len(records),
        replace=overwrite,
        staged=True,
    )
    try:
        manifest = _fill_and_measure(store, records, xb, config or BuildConfig(), t0)
        store.publish()
        return manifest
    except BaseException:
        store.discard()
        raise
    finally:
        store.close()


def build_product_index(
    directory: str | Path,
    records: Sequence[ProductRecord],
    xb: np.ndarray,
    bundle_fingerprint: str,
    factory: str = "auto",
    memory_budget_bytes: int | None = None,
    use_gpu: bool | str = "auto",
    plan: IndexPlan | None = None,
    config: BuildConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Create, fill, measure recall@k against exact search, save; returns the manifest.

    Held-out queries are perturbed copies of database vectors (see perturbed_queries); the
    truth is exact inner product over all of xb, so a Flat index scores 1.0. For IVF/HNSW the
    search effort doubles until config.target_recall is met; the same queries tune and
    report, so the recorded recall is slightly optimistic.

    overwrite=True replaces an index already in `directory`: the new one is built beside it
    and swapped in only once saved, so a failed build leaves the old index serving.
    A Milvus URI as `directory` builds there instead (build_milvus_index).
    """
    from index.milvus_target import is_milvus_uri

    if is_milvus_uri(directory):
        return build_milvus_index(
            str(directory), records, xb, bundle_fingerprint, factory, config, overwrite
        )
    directory = Path(directory)
    if overwrite and directory.exists():
        staging = directory.with_name(directory.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        manifest = build_product_index(
            staging,
            records,
            xb,
            bundle_fingerprint,
            factory,
            memory_budget_bytes,
            use_gpu,
            plan,
            config,
        )
        retired = directory.with_name(directory.name + ".old")
        shutil.rmtree(retired, ignore_errors=True)
        rename(directory, retired)
        rename(staging, directory)
        shutil.rmtree(retired)
        return manifest
    config = config or BuildConfig()
    t0 = time.perf_counter()
    store = ProductIndex.create(
        directory,
        d=int(np.asarray(xb).shape[-1]),
        bundle_fingerprint=bundle_fingerprint,
        factory=factory,
        memory_budget_bytes=memory_budget_bytes,
        use_gpu=use_gpu,
        plan=plan,
    )
    try:
        return _fill_and_measure(store, records, xb, config, t0)
    finally:
        store.close()
