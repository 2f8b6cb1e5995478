"""Benchmark the vector index: recall@10 against speed for every candidate index type.

For each data set and size, each candidate of `index.plan.candidates` (IVF-Flat at two list
counts, HNSW at each M, IVF + 4-bit PQ fast-scan re-ranked exactly) is built once and swept
over its search effort (nprobe / efSearch). Every point records recall@10 against exact search
and queries/s at batch 1 with `--threads` searching threads (one FAISS thread each, so a
query never waits for an OpenMP team), with p50/p99 latency; plus build time and size.
`index.plan.pick` then names the fastest point at recall@10 >= `--target`, by CPU time per
query (`qps_cpu` = threads / CPU seconds per query: what the threads sustain on cores of their
own; wall-clock q/s on a shared machine is recorded beside it). The baseline in
the same run: exact search (numpy BLAS) and the plan that was auto-chosen before (IVF-Flat,
nlist ~2 sqrt(n), nprobe 32).

Data sets:
- "real": real-like: clusters drawn around the real HUSE embeddings of a built index
  (`--real-index`, its metadata holds the vectors), each point a real vector plus gaussian
  noise of norm `--real-spread` x the median distance between a real vector and its nearest
  real neighbour, so clusters overlap the way products of one kind do. d is the index's.
- "gaussian": unit vectors around `--clusters` random centers (well separated), d = `--d`.
Queries are held-out draws of the same process; with `--bundle` (the real index's), also the
served query kinds made from them (a title: HUSE block alone; a recognition probe: the visual
block's instance part alone), and a point's recall@10 is the lowest over the draws and kinds.

    python -m bench.bench_index [--sizes 1000000] [--data real,gaussian] [--threads 2]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, print_table, write_results
from huse_common.vectors import l2_normalize
from index.evaluation import (
    exact_knn_scores,
    median_nn_distance,
    recall_at_k,
    tie_aware_recall_at_k,
)
from index.plan import BuildConfig, Candidate, IndexPlan, candidates, choose_factory, pick
from index.strategies import served_ef_search
from index.vectors import omp_threads

logger = logging.getLogger(__name__)
COLUMNS = ["data", "n", "index", "effort", "recall@10", "recall@10 ties", "qps_b1", "qps_cpu",
           "cpu_ms", "p50_ms", "p99_ms", "build_s", "index_mb"]
K = 10
TIE_EPSILON = BuildConfig().recall_tie_epsilon  # tie-aware recall, as index.build measures
DEFAULT_REAL_INDEX = Path("/work/runs/baseline/index")
PREVIOUS_NPROBE = 32  # what the plan used before this benchmark picked the numbers


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _unit(x: np.ndarray) -> np.ndarray:
    return l2_normalize(x).astype(np.float32, copy=False)


def around(n: int, centers: np.ndarray, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors, each a random center plus gaussian noise of norm ~`noise`, and the
    index of its center."""
    rng = np.random.default_rng(seed)
    d = centers.shape[1]
    which = rng.integers(0, centers.shape[0], n)
    out = np.empty((n, d), dtype=np.float32)
    for i0 in range(0, n, 100_000):
        rows = which[i0 : i0 + 100_000]
        noise_rows = rng.normal(scale=noise / np.sqrt(d), size=(rows.shape[0], d))
        out[i0 : i0 + rows.shape[0]] = _unit(centers[rows] + noise_rows)
    return out, which


def real_vectors(index_dir: Path) -> np.ndarray:
    """The live vectors of a built product index (its SQLite metadata stores them)."""
    from index.metadata import MetadataStore
    from index.store import METADATA

    store = MetadataStore.open(index_dir / METADATA)
    try:
        return _unit(store.live()[1])
    finally:
        store.close()


def dataset(name: str, n: int, n_queries: int, args: argparse.Namespace) -> tuple:
    """(xb, xq, description, center of each xb row) of a data set (see the module docstring)."""
    if name == "real":
        real = real_vectors(Path(args.real_index))
        noise = args.real_spread * median_nn_distance(real)
        about = {"centers": int(real.shape[0]), "noise_norm": round(noise, 4),
                 "source": str(args.real_index)}
        centers = real
    else:
        rng = np.random.default_rng(args.seed)
        centers = _unit(rng.normal(size=(args.clusters, args.d)))
        noise = args.spread
        about = {"centers": args.clusters, "noise_norm": noise}
    xb, which = around(n, centers, noise, args.seed + 1)
    xq, _ = around(n_queries, centers, noise, args.seed + 2)
    return xb, xq, {**about, "d": int(centers.shape[1])}, which


def build(factory: str, xb: np.ndarray, plan: IndexPlan) -> Any:
    """A raw FAISS index (inner product) trained as index.vectors trains it, with xb added."""
    import faiss

    index = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.spherical = True
        n_train = max(ivf.nlist * plan.ivf_train_points_per_list, plan.min_train_points)
        rng = np.random.default_rng(0)
        sample = xb if xb.shape[0] <= n_train else xb[rng.choice(xb.shape[0], n_train, False)]
        index.train(sample)
    elif not index.is_trained:
        index.train(xb)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efConstruction = plan.hnsw_ef_construction
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = plan.fastscan_refine_factor
    index.add(xb)
    return index


def set_effort(index: Any, effort: int) -> None:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = effort
    else:
        faiss.downcast_index(index).hnsw.efSearch = served_ef_search(effort, K)


def batch1(
    search: Any, xq: np.ndarray, threads: int
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Every query alone (batch 1), `threads` callers at once with one FAISS thread each:
    (ids found, queries/s, per-query wall seconds, per-query CPU seconds of its thread)."""
    found = np.empty((xq.shape[0], K), np.int64)
    took = np.empty(xq.shape[0])
    cpu = np.empty(xq.shape[0])

    def run(rows: np.ndarray) -> None:
        with omp_threads(1):  # OpenMP keeps this per thread: set it in each searching thread
            for i in rows:
                c0, t0 = time.thread_time(), time.perf_counter()
                found[i] = search(xq[i : i + 1], K)[1][0]
                took[i], cpu[i] = time.perf_counter() - t0, time.thread_time() - c0

    run(np.arange(1))  # warm up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, np.array_split(np.arange(xq.shape[0]), threads)))
    qps = xq.shape[0] / (time.perf_counter() - t0)
    return found, qps, took, cpu


def _recalls(found: np.ndarray, xq: np.ndarray, xb: np.ndarray,
             ref: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """(recall@K by id, tie-aware recall@K as index.build measures it) against `ref`, the exact
    (scores, ids)."""
    ties = tie_aware_recall_at_k(found, xq, xb, ref[0], K, TIE_EPSILON)
    return round(recall_at_k(found, ref[1], K), 4), round(ties, 4)


def _point(data: str, n: int, name: str, effort: Any, found: np.ndarray, timing: tuple,
           recalls: tuple[float, float], threads: int) -> dict[str, Any]:
    """One curve point. `qps_cpu` = threads / mean CPU seconds per query: the rate `threads`
    cores would sustain if they were ours alone (wall `qps` on a shared machine is lower)."""
    qps, took, cpu = timing
    return {
        "data": data,
        "n": n,
        "index": name,
        "effort": effort,
        "recall_at_10": recalls[0],
        "recall_at_10_ties": recalls[1],
        "qps": round(qps, 1),
        "cpu_ms": round(float(cpu.mean()) * 1e3, 4),
        "qps_cpu": round(threads / float(cpu.mean()), 1),
        "p50_ms": round(float(np.percentile(took, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(took, 99)) * 1e3, 3),
        "load_avg_1m": os.getloadavg()[0],
    }


def served_kinds(bundle_dir: str, xq: np.ndarray,
                 xb: np.ndarray) -> tuple[dict[str, tuple], int | None]:
    """(name -> (queries, exact neighbours) of the served query kinds a bundle adds to the
    held-out draws (embedder.visual.ServedSpace.probe_queries: titles, recognition probes),
    the index's prefix columns that titles search: index.store's prefix index)."""
    if not bundle_dir:
        return {}, None
    from embedder.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    kinds = bundle.served_probe_queries(xq)
    found = {name: (q, exact_knn_scores(q, xb, K)) for name, q in kinds.items() if len(q)}
    return found, bundle.served_prefix_dims


def sweep(cand: Candidate, xb: np.ndarray, xq: np.ndarray, ref: tuple, data: str,
          threads: int, plan: IndexPlan, target: float,
          kinds: dict[str, tuple] | None = None) -> list[dict[str, Any]]:
    """Build one candidate and measure it at each effort; stops once recall passes 0.999 or
    the target is met and speed only falls from there. With `kinds` (served_kinds), a point's
    recall is the lowest over the draws and each kind (all listed), its speed the draws'."""
    import faiss

    gc.collect()
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    index = build(cand.factory, xb, plan)
    build_s = time.perf_counter() - t0
    size_mb = faiss.serialize_index(index).nbytes / 2**20
    rss_mb = (_rss_bytes() - rss0) / 2**20
    logger.info("%s %s built in %.1f s (%.0f MB)", data, cand.factory, build_s, size_mb)
    points = []
    for effort in cand.efforts:
        set_effort(index, effort)
        found, *timing = batch1(index.search, xq, threads)
        point = _point(data, xb.shape[0], cand.factory, effort, found, tuple(timing),
                       _recalls(found, xq, xb, ref), threads)
        if kinds:
            by_kind = {"draws": point["recall_at_10"]}
            ties = {"draws": point["recall_at_10_ties"]}
            with omp_threads(threads):
                for name, (q, truth) in kinds.items():
                    by_kind[name], ties[name] = _recalls(index.search(q, K)[1], q, xb, truth)
            point.update(recall_at_10=min(by_kind.values()), recall_at_10_by_queries=by_kind,
                         recall_at_10_ties=min(ties.values()),
                         recall_at_10_ties_by_queries=ties)
        point.update(build_s=round(build_s, 1), index_mb=round(size_mb, 1),
                     rss_delta_mb=round(rss_mb, 1))
        logger.info("%s", point)
        points.append(point)
        if point["recall_at_10"] >= 0.999 or (point["recall_at_10"] >= target and effort >= 64):
            break
    del index
    return points


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000", help="comma-separated N values")
    parser.add_argument("--data", default="real,gaussian", help="real and/or gaussian")
    parser.add_argument("--real-index", default=str(DEFAULT_REAL_INDEX))
    parser.add_argument("--bundle", default="",
                        help="the real index's bundle: also measure its served query kinds "
                        "(titles, recognition probes) made from the held-out draws")
    parser.add_argument("--skip-prefix", action="store_true",
                        help="with --bundle: leave out the prefix index's candidates (titles)")
    parser.add_argument("--real-spread", type=float, default=1.0,
                        help="noise norm in median nearest-neighbour distances")
    parser.add_argument("--d", type=int, default=256, help="dimension of the gaussian data")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.5, help="gaussian noise norm")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--threads", type=int, default=2, help="searching threads, batch 1")
    parser.add_argument("--target", type=float, default=0.95, help="recall@10 to reach")
    parser.add_argument("--only", default="", help="factories to measure, separated by ;")
    parser.add_argument("--only-prefix", default="",
                        help="prefix index (titles) factories to measure, separated by ;")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_index", help="results name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    plan = IndexPlan()
    load_start = os.getloadavg()
    curve: list[dict[str, Any]] = []
    picked: list[dict[str, Any]] = []
    datasets: dict[str, Any] = {}
    for data in args.data.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            xb, xq, about, _ = dataset(data, n, args.queries, args)
            datasets[f"{data}/{n}"] = about
            t0 = time.perf_counter()
            ref = exact_knn_scores(xq, xb, K)
            exact_qps = xq.shape[0] / (time.perf_counter() - t0)
            curve.append({"data": data, "n": n, "index": "exact (numpy, batch 1000)",
                          "effort": None, "recall_at_10": 1.0, "qps": round(exact_qps, 1),
                          "load_avg_1m": os.getloadavg()[0]})
            d = xb.shape[1]
            previous = f"IVF{_previous_nlist(n)},Flat"
            todo = candidates(n, d, plan)
            if args.only:
                todo = [c for c in todo if c.factory in args.only.split(";")]
            if n >= 50_000 and previous not in {c.factory for c in todo}:
                todo.insert(0, Candidate(previous, (PREVIOUS_NPROBE,)))
            kinds, prefix = served_kinds(args.bundle, xq, xb) if data == "real" else ({}, None)
            for cand in todo:
                points = sweep(cand, xb, xq, ref, data, args.threads, plan, args.target, kinds)
                if cand.factory == previous and n >= 50_000:
                    for p in points:
                        if p["effort"] == PREVIOUS_NPROBE:
                            p["baseline"] = "previous auto plan"
                curve += points
            if prefix is not None and "title" in kinds and not args.skip_prefix:
                # titles on the prefix index (index.store): its own candidates over P columns
                titles, truth = kinds["title"]
                head = np.ascontiguousarray(xb[:, :prefix])
                for cand in candidates(n, prefix, plan):
                    if args.only_prefix and cand.factory not in args.only_prefix.split(";"):
                        continue
                    if "PQ" not in cand.factory:  # (PQ fails on this data, see above)
                        points = sweep(cand, head, np.ascontiguousarray(titles[:, :prefix]),
                                       truth, data, args.threads, plan, args.target)
                        curve += [{**p, "index": f"{p['index']} on the first {prefix} "
                                   "columns (prefix index: titles)"} for p in points]
                del head
            best = pick([p for p in curve if p["data"] == data and p["n"] == n
                         and p["effort"] is not None], args.target, speed_key="qps_cpu")
            picked.append({"data": data, "n": n, "d": d, "best": best,
                           "auto_factory": choose_factory(n, d, None, plan)})
            del xb, xq
    rows = [{**p, "recall@10": p["recall_at_10"], "recall@10 ties": p.get("recall_at_10_ties"),
             "qps_b1": p["qps"]} for p in curve]
    print_table(rows, COLUMNS)
    for p in picked:
        print(f"\n{p['data']} n={p['n']}: best at recall@10 >= {args.target}: {p['best']}")
    path = write_results(
        args.out,
        {
            "machine": machine_info(),
            "load_average_at_start": load_start,
            "load_average_at_end": os.getloadavg(),
            "parameters": {**vars(args), "plan": vars(plan)},
            "datasets": datasets,
            "baseline": "exact search (numpy) and the previous auto plan (IVF ~2 sqrt(n) lists, "
            "nprobe 32), same run, same queries",
            "curve": curve,
            "picked": picked,
        },
    )
    print(f"\nwrote {path}")


def _previous_nlist(n: int) -> int:
    from index.plan import _nlist

    return _nlist(n, IndexPlan(ivf_lists_per_sqrt_n=2.0))


if __name__ == "__main__":
    main()
