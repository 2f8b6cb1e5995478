"""Benchmark the vector index: exact Flat (baseline) versus the auto-chosen index.

A third row per size, "numpy", is exact search as one BLAS matmul: it shows what exact
search costs on this machine independent of how the installed FAISS was compiled.

For each size: build time, memory, recall@10 against exact search, queries/s at batch 1 and
batch 100, on clustered synthetic unit vectors (gaussian clusters on the sphere). Memory is
the serialized index size (what the index holds) and the RSS growth during the build.

    python -m bench.bench_index [--sizes 100000,1000000] [--d 256] [--queries 1000]
"""

from __future__ import annotations

import argparse
import gc
import logging
import time
from typing import Any

import numpy as np

from bench.common import machine_info, print_table, write_results
from huse_common.vectors import l2_normalize
from index.evaluation import exact_knn, recall_at_k
from index.plan import IndexPlan, choose_factory
from index.vectors import VectorIndex

logger = logging.getLogger(__name__)
COLUMNS = ["n", "index", "build_s", "index_mb", "rss_delta_mb", "recall@10", "qps_b1", "qps_b100"]


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def clustered(n: int, d: int, centers: np.ndarray, spread: float, seed: int) -> np.ndarray:
    """n unit vectors around random centers; `spread` is the noise norm before re-normalising."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for i0 in range(0, n, 100_000):
        m = min(100_000, n - i0)
        x = centers[rng.integers(0, centers.shape[0], m)]
        x = x + rng.normal(scale=spread / np.sqrt(d), size=(m, d)).astype(np.float32)
        out[i0 : i0 + m] = l2_normalize(x)
    return out


class NumpyExact:
    """Exact search as one BLAS matmul + top-k in numpy: the reference for FAISS Flat."""

    def __init__(self, xb: np.ndarray) -> None:
        self.xb = xb

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return None, exact_knn(xq, self.xb, k)  # type: ignore[return-value]


def _build(method: str, xb: np.ndarray) -> tuple[Any, int]:
    """(searcher, bytes it holds) for 'numpy' or a FAISS factory string."""
    if method == "numpy":
        return NumpyExact(xb), xb.nbytes
    vi = VectorIndex(xb.shape[1], method, use_gpu="auto")
    vi.add(np.arange(xb.shape[0], dtype=np.int64), xb)
    return vi, vi.serialize().nbytes


def measure(
    method: str, xb: np.ndarray, xq: np.ndarray, ref: np.ndarray, n_single: int
) -> dict[str, Any]:
    """Build `method` over xb and time it on xq (batch 100) and xq[:n_single] (batch 1)."""
    gc.collect()
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    index, index_bytes = _build(method, xb)
    build_s = time.perf_counter() - t0
    rss = _rss_bytes() - rss0
    index.search(xq[:1], 10)  # warm up (thread pool, caches) before timing
    t0 = time.perf_counter()
    found = np.concatenate([index.search(xq[i : i + 100], 10)[1] for i in range(0, len(xq), 100)])
    qps_b100 = len(xq) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(n_single):
        index.search(xq[i : i + 1], 10)
    qps_b1 = n_single / (time.perf_counter() - t0)
    row = {
        "n": xb.shape[0],
        "index": method + (" (gpu)" if getattr(index, "use_gpu", False) else ""),
        "build_s": round(build_s, 2),
        "rss_delta_mb": round(rss / 2**20, 1),
        "index_mb": round(index_bytes / 2**20, 1),
        "recall@10": round(recall_at_k(found, ref, 10), 4),
        "qps_b1": round(qps_b1, 1),
        "qps_b100": round(qps_b100, 1),
    }
    logger.info("%s", row)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated N values")
    parser.add_argument("--d", type=int, default=256, help="embedding dimension")
    parser.add_argument("--queries", type=int, default=1000, help="batch-100 queries (recall)")
    parser.add_argument("--single", type=int, default=200, help="batch-1 queries timed")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.5, help="noise norm around a center")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(args.seed)
    centers = rng.normal(size=(args.clusters, args.d)).astype(np.float32)
    centers = l2_normalize(centers)
    plan = IndexPlan()
    rows = []
    for n in sizes:
        xb = clustered(n, args.d, centers, args.spread, args.seed + 1)
        xq = clustered(args.queries, args.d, centers, args.spread, args.seed + 2)  # held out
        t0 = time.perf_counter()
        ref = exact_knn(xq, xb, 10)
        logger.info("ground truth for n=%d in %.1f s", n, time.perf_counter() - t0)
        auto = choose_factory(n, args.d, None, plan)
        for method in dict.fromkeys(["numpy", "Flat", auto]):
            rows.append(measure(method, xb, xq, ref, min(args.single, args.queries)))
        del xb
    print_table(rows, COLUMNS)
    path = write_results(
        "bench_index",
        {
            "machine": machine_info(),
            "parameters": {**vars(args), "plan": vars(plan)},
            "baseline": "Flat (FAISS exact inner product); numpy: the same as one BLAS matmul",
            "rows": rows,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
