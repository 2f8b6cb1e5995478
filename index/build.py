"""Offline build: create a ProductIndex from a whole catalog and record its measured recall."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from huse_common.atomic import rename
from index.evaluation import (
    exact_knn_scores,
    median_nn_distance,
    perturbed_queries,
    recall_at_k,
    tie_aware_recall_at_k,
)
from index.plan import BuildConfig, IndexPlan
from index.store import ProductIndex, ProductRecord

logger = logging.getLogger(__name__)


QuerySets = Mapping[str, np.ndarray]
PERTURBED = "perturbed"  # the query set every build measures


def _measure(
    store: ProductIndex,
    sets: QuerySets,
    recall_of: Callable[[str, np.ndarray], float],
    positions: dict[str, int],
    k: int,
    timed: int,
) -> dict[str, Any]:
    """recall@k of each query set against its exact neighbours (the lowest is the point's
    recall), and q/s searching the first set's first `timed` queries one at a time."""
    by_set = {}
    for name, xq in sets.items():
        hits = store.search(xq, k)
        found = np.asarray([[positions[h.id] for h in row] + [-1] * (k - len(row))
                            for row in hits])
        by_set[name] = round(recall_of(name, found), 4)
    xq = next(iter(sets.values()))
    timed = min(timed, xq.shape[0])
    t0 = time.perf_counter()
    for i in range(timed):
        store.search(xq[i : i + 1], k)
    seconds = time.perf_counter() - t0
    point: dict[str, Any] = {f"recall_at_{k}": min(by_set.values())}
    if len(by_set) > 1:
        point[f"recall_at_{k}_by_queries"] = by_set
    point["qps_batch1"] = round(timed / seconds, 1) if seconds > 0 else 0.0
    return point


def _tune(store: Any, part: str, config: BuildConfig, k: int,
          measure: Callable[[], dict[str, Any]]) -> tuple[int | None, list[dict[str, Any]]]:
    """Double one part's search effort ("main", or "prefix": ProductIndex's prefix index)
    from config.min_search_effort until `measure`'s recall reaches the target, narrow the last
    doubling down (config.effort_refine_steps bisections, keeping the lowest effort that reaches
    it), then measure config.curve_points_past_target more efforts and restore the chosen one;
    -> (effort, curve of recall and batch-1 q/s at each effort tried)."""

    def set_effort(value: int) -> int:
        return (store.set_search_effort(value) if part == "main"
                else store.set_search_effort(value, part=part))

    effort = store.search_effort if part == "main" else store.prefix_search_effort
    if effort is not None:
        effort = set_effort(config.min_search_effort)
    point = measure()
    curve = [{"search_effort": effort, **point}]
    while (
        effort is not None
        and point[f"recall_at_{k}"] < config.target_recall
        and effort < config.max_search_effort
    ):
        new = set_effort(min(2 * effort, config.max_search_effort))
        if new == effort:  # IVF: every list is probed already
            break
        effort, point = new, measure()
        curve.append({"search_effort": effort, **point})
    if effort is None:
        return effort, curve
    past = effort  # the points past the target continue from the last doubling
    below = [p["search_effort"] for p in curve if p[f"recall_at_{k}"] < config.target_recall]
    if point[f"recall_at_{k}"] >= config.target_recall and below:
        low = max(below)
        for _ in range(config.effort_refine_steps):
            mid = set_effort((low + effort) // 2)
            if mid in (low, effort):
                break
            found = measure()
            curve.append({"search_effort": mid, **found})
            if found[f"recall_at_{k}"] >= config.target_recall:
                effort = mid
            else:
                low = mid
    for _ in range(config.curve_points_past_target):
        new = set_effort(min(2 * past, config.max_search_effort))
        if new == past:
            break
        past = new
        curve.append({"search_effort": past, **measure(), "past_target": True})
    set_effort(effort)
    return effort, sorted(curve, key=lambda p: p["search_effort"])


def _fill_and_measure(
    store: Any, records: Sequence[ProductRecord], xb: np.ndarray, config: BuildConfig, t0: float,
    query_sets: QuerySets | None = None,
) -> dict[str, Any]:
    """Upsert everything, tune the search effort to the target recall, save; -> manifest.

    `store` is either implementation (index.store.ProductIndex, MilvusProductIndex).
    `query_sets`: more held-out queries (name -> rows), such as the served query kinds
    (embedder.visual.ServedSpace.probe_queries); the effort is tuned until every set reaches
    the target. With a prefix index, the sets it answers (rows zero past its columns) tune its
    own effort, the others the main index's.
    """
    store.upsert(records, xb)
    build_s = time.perf_counter() - t0
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    noise = config.query_noise
    if noise is None:
        noise = median_nn_distance(xb, config.n_eval_queries, config.seed)
    sets = {PERTURBED: perturbed_queries(xb, config.n_eval_queries, noise, config.seed)}
    for name, xq in (query_sets or {}).items():
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != xb.shape[1]:
            raise ValueError(f"query set {name!r} has shape {xq.shape}, not (n, {xb.shape[1]})")
        if len(xq):
            sets[name] = xq[: config.n_eval_queries]
    k = min(config.k, len(records))
    refs = {name: exact_knn_scores(xq, xb, k) for name, xq in sets.items()}
    epsilon = config.recall_tie_epsilon

    def recall_of(name: str, found: np.ndarray) -> float:
        scores, ids = refs[name]
        if epsilon > 0:
            return tie_aware_recall_at_k(found, sets[name], xb, scores, k, epsilon)
        return recall_at_k(found, ids, k)

    positions = {r.id: i for i, r in enumerate(records)}
    answered_by_prefix = getattr(store, "on_prefix", None)  # Milvus stores have no prefix index
    on_prefix = {name for name, xq in sets.items()
                 if answered_by_prefix is not None and answered_by_prefix(xq).all()}
    parts = {"main": [name for name in sets if name not in on_prefix]}
    if on_prefix:
        parts["prefix"] = [name for name in sets if name in on_prefix]
    tuned = {}
    for part, names in parts.items():
        part_sets = {name: sets[name] for name in names}
        tuned[part] = _tune(store, part, config, k, lambda s=part_sets: _measure(
            store, s, recall_of, positions, k, config.timed_queries))
    final = _measure(store, sets, recall_of, positions, k, 0)
    recall = final[f"recall_at_{k}"]
    by_queries = final.get(f"recall_at_{k}_by_queries", {PERTURBED: recall})
    effort, curve = tuned["main"]
    logger.info(
        "built %s over %d products in %.1f s, recall@%d %.4f (effort %s%s; %s)",
        store.factory,
        len(records),
        build_s,
        k,
        recall,
        effort,
        f", prefix index effort {tuned['prefix'][0]}" if "prefix" in tuned else "",
        by_queries,
    )
    store.record_build(
        {
            f"recall_at_{k}": recall,
            f"recall_at_{k}_by_queries": by_queries,
            "recall_method": "exact inner product neighbours of held-out queries: perturbed "
            "database vectors, and the query kinds named in recall_at_k_by_queries; the "
            "lowest of them; "
            + (f"a result counts when its exact score is within {epsilon:g} of the exact k-th "
               "best (ann-benchmarks)" if epsilon > 0 else "by id"),
            "query_noise_norm": round(noise, 5),
            "search_effort": effort,
            "tuning": curve,  # recall and batch-1 q/s at each effort tried
            **({"prefix": {"search_effort": tuned["prefix"][0], "queries": parts["prefix"],
                           "tuning": tuned["prefix"][1]}} if "prefix" in tuned else {}),
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
    query_sets: QuerySets | None = None,
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
        manifest = _fill_and_measure(store, records, xb, config or BuildConfig(), t0,
                                     query_sets)
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
    query_sets: QuerySets | None = None,
    prefix_dims: int | None = None,
) -> dict[str, Any]:
    """Create, fill, measure recall@k against exact search, save; returns the manifest.

    Held-out queries are perturbed copies of database vectors (see perturbed_queries) and
    each of `query_sets` (name -> rows: the kinds of query the service sends); the truth is
    exact inner product over all of xb, so a Flat index scores 1.0. For IVF/HNSW the search
    effort doubles (then narrows: BuildConfig.effort_refine_steps) until every set reaches
    config.target_recall; the same queries tune and
    report, so the recorded recall is slightly optimistic.

    `prefix_dims`: a prefix index too (index.store; the served space's titles search it).
    overwrite=True replaces an index already in `directory`: the new one is built beside it
    and swapped in only once saved, so a failed build leaves the old index serving.
    A Milvus URI as `directory` builds there instead (build_milvus_index, without a prefix
    index).
    """
    from index.milvus_target import is_milvus_uri

    if is_milvus_uri(directory):
        return build_milvus_index(
            str(directory), records, xb, bundle_fingerprint, factory, config, overwrite,
            query_sets,
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
            query_sets=query_sets,
            prefix_dims=prefix_dims,
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
        prefix_dims=prefix_dims,
    )
    try:
        return _fill_and_measure(store, records, xb, config, t0, query_sets)
    finally:
        store.close()
