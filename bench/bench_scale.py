"""How cost grows with the catalog: index build, memory, search speed and API latency.

At each size (default 10k, 100k, 1M products) the real product path is built and served:
`index.build.build_product_index` (auto-planned FAISS index + SQLite metadata, recall@10
measured and search effort tuned at build) over real-like vectors (clusters drawn around the
real HUSE embeddings of a built index, as bench.bench_index draws them) with synthetic
metadata (a real title and category of the vector's center, numbered). Then:

- build s, bytes per product on disk (FAISS snapshot + SQLite metadata with the vectors);
- q/s and p50/p99 at batch 1 through `ProductIndex.search` with `--threads` searching threads
  (one FAISS thread each), and recall@10 of those searches against exact search: first with
  all-unique queries (hit records read from SQLite: `hits_distinct_fraction` says how few
  repeat), then the same queries again (`*_repeat`: hit records from the store's cache); beside
  them,
  in the same run, the previous defaults: an OpenMP team per batch-1 search (`*_omp_team`) and
  the previous plan's nprobe 32 (`*_nprobe32`);
- `python -m api` over that index and the bundle the vectors came from: its RSS, and
  text-search p50/p99 from one sequential client with all-unique titles.

Writes bench/results/bench_scale.json and one PNG per curve (bench/results/bench_scale_*.png).

    python -m bench.bench_scale [--sizes 10000,100000,1000000] [--bundle DIR] [--real-index DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.bench_api import Server
from bench.bench_index import DEFAULT_REAL_INDEX, PREVIOUS_NPROBE, K, batch1, dataset
from bench.common import RESULTS_DIR, machine_info, print_table, write_results
from index.evaluation import exact_knn, recall_at_k

logger = logging.getLogger(__name__)
DEFAULT_BUNDLE = DEFAULT_REAL_INDEX.parent / "bundle"
COLUMNS = ["n", "factory", "effort", "build_s", "bytes_per_product", "server_rss_mb",
           "recall@10", "qps_b1", "p50_ms", "p99_ms", "api_p50_ms", "api_p99_ms", "load_avg_1m"]
# curve name -> (y keys, y label); x is n on a log axis
CURVES = {
    "build_s": (("build_s",), "index build (s)"),
    "bytes_per_product": (("bytes_per_product", "vector_bytes_per_product"), "bytes / product"),
    "rss": (("server_rss_mb",), "API server RSS (MB)"),
    "qps": (("qps_b1", "qps_cpu"), "queries/s, batch 1"),
    "latency": (("p50_ms", "p99_ms"), "index search latency (ms)"),
    "recall": (("recall@10",), "recall@10"),
    "api_latency": (("api_p50_ms", "api_p99_ms"), "API text search latency (ms)"),
}


@dataclass(frozen=True)
class ScaleConfig:
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    bundle: str = str(DEFAULT_BUNDLE)
    real_index: str = str(DEFAULT_REAL_INDEX)
    real_spread: float = 1.0  # noise in median nearest-neighbour distances (bench_index)
    queries: int = 1000  # held-out batch-1 queries
    threads: int = 2
    api_requests: int = 200  # sequential all-unique text searches per size
    seed: int = 0


def _titles_and_categories(index_dir: Path) -> tuple[list[str], list[str]]:
    """Titles and categories of the real index's products, in the order of its vectors."""
    from index.metadata import MetadataStore
    from index.store import METADATA

    store = MetadataStore.open(index_dir / METADATA)
    try:
        keys = store.live()[0]
        records = store.records(keys.tolist())
    finally:
        store.close()
    return [records[int(k)].title for k in keys], [records[int(k)].category for k in keys]


def _records(which: np.ndarray, titles: list[str], categories: list[str]) -> list[Any]:
    from index.store import ProductRecord

    return [
        ProductRecord(id=f"p{i}", title=f"{titles[c]} #{i}", category=categories[c])
        for i, c in enumerate(which.tolist())
    ]


def _dir_bytes(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in path.rglob("*"):
        if f.is_file():
            kind = "metadata" if f.name.startswith("meta.sqlite") else "faiss" if (
                f.suffix in (".faiss", ".index", ".bin")) else "other"
            out[kind] = out.get(kind, 0) + f.stat().st_size
    return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _api_latency(url: str, titles: list[str]) -> dict[str, float]:
    took = []
    with httpx.Client(base_url=url, timeout=120) as client:
        client.post("/v1/search", data={"title": "warm up", "k": str(K)}).raise_for_status()
        for title in titles:
            t0 = time.perf_counter()
            r = client.post("/v1/search", data={"title": title, "k": str(K)})
            took.append(time.perf_counter() - t0)
            r.raise_for_status()
    ms = np.asarray(took) * 1e3
    return {"api_p50_ms": round(float(np.percentile(ms, 50)), 2),
            "api_p99_ms": round(float(np.percentile(ms, 99)), 2)}


def measure_size(n: int, cfg: ScaleConfig, fingerprint: str, work: Path) -> dict[str, Any]:
    """Build, measure and serve one catalog size; the index directory is removed after."""
    from index.build import build_product_index
    from index.store import ProductIndex

    args = argparse.Namespace(real_index=cfg.real_index, real_spread=cfg.real_spread,
                              seed=cfg.seed)
    xb, xq, about, which = dataset("real", n, cfg.queries, args)
    titles, categories = _titles_and_categories(Path(cfg.real_index))
    records = _records(which, titles, categories)
    ref = exact_knn(xq, xb, K)
    out = work / f"index-{n}"
    t0 = time.perf_counter()
    manifest = build_product_index(out, records, xb, fingerprint)
    build_s = time.perf_counter() - t0
    del records
    sizes = _dir_bytes(out)
    row: dict[str, Any] = {"n": n, "d": int(xb.shape[1]), "build_s": round(build_s, 1),
                           "bytes_per_product": round(sum(sizes.values()) / n),
                           "vector_bytes_per_product": 4 * int(xb.shape[1]),
                           "bytes_by_file": sizes, "data": about}
    del xb
    build = manifest.get("build", {})
    row.update(build_recall_at_10=build.get("recall_at_10"),
               build_query_noise=build.get("query_noise_norm"),
               build_tuning=build.get("tuning"))  # the manifest's recall/speed curve
    position = {f"p{i}": i for i in range(n)}
    for label, plan, effort in _store_arms(manifest):
        store = ProductIndex.open(out, expected_fingerprint=fingerprint, plan=plan)
        try:
            if effort is not None:
                store.set_search_effort(effort)
            row.setdefault("factory", store.factory)
            row.setdefault("effort", store.search_effort)

            def search(q: np.ndarray, k: int, store: Any = store) -> tuple[None, np.ndarray]:
                hits = store.search(q, k)[0]
                return None, np.asarray([[position[h.id] for h in hits] + [-1] * (k - len(hits))])

            passes = [(label, batch1(search, xq, cfg.threads))]
            if not label:  # the same queries again: hit records now come from the cache
                passes.append(("_repeat", batch1(search, xq, cfg.threads)))
        finally:
            store.close()
        for suffix, (found, qps, took, cpu) in passes:
            row.update({f"{key}{suffix}": value for key, value in {
                "recall@10": round(recall_at_k(found, ref, K), 4),
                "qps_b1": round(qps, 1),
                "qps_cpu": round(cfg.threads / float(cpu.mean()), 1),
                "cpu_ms": round(float(cpu.mean()) * 1e3, 4),
                "p50_ms": round(float(np.percentile(took, 50)) * 1e3, 3),
                "p99_ms": round(float(np.percentile(took, 99)) * 1e3, 3),
                "load_avg_1m": os.getloadavg()[0],
            }.items()})
        if not label:  # distinct products among the first pass's hits: ~1 = all cache misses
            first = passes[0][1][0]
            row["hits_distinct_fraction"] = round(np.unique(first).size / first.size, 3)
    rng = np.random.default_rng(cfg.seed)
    unique = [f"{titles[i]} {j}" for j, i in enumerate(
        rng.choice(len(titles), cfg.api_requests, replace=len(titles) < cfg.api_requests))]
    server = Server(None, True, _server_config(), work / f"server-{n}.log",
                    extra=["--bundle", cfg.bundle, "--index", str(out)])
    try:
        row.update(_api_latency(server.url, unique))
        row["server_rss_mb"] = round(_rss_mb(server.proc.pid), 1)
    finally:
        server.stop()
    row["load_avg_1m"] = os.getloadavg()[0]
    shutil.rmtree(out)
    logger.info("%s", row)
    return row


def _store_arms(manifest: dict[str, Any]) -> list[tuple[str, Any, int | None]]:
    """(column suffix, plan, search effort) of each way the store is searched: as built, then
    the previous defaults in the same run (an OpenMP team per batch-1 search; nprobe 32)."""
    from index.plan import IndexPlan

    arms: list[tuple[str, Any, int | None]] = [("", None, None)]
    arms.append(("_omp_team", IndexPlan(single_thread_max_queries=0), None))
    effort = manifest.get("build", {}).get("search_effort")
    if effort is not None and effort != PREVIOUS_NPROBE and "IVF" in manifest["factory"]:
        arms.append((f"_nprobe{PREVIOUS_NPROBE}", None, PREVIOUS_NPROBE))
    return arms


def _server_config() -> Any:
    from bench.bench_api import BenchConfig

    return BenchConfig(image_engine="auto")


def plot(rows: list[dict[str, Any]], results_dir: Path) -> list[Path]:
    """One PNG per curve against n (log-log where the values span decades)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ns = [r["n"] for r in rows]
    for name, (keys, label) in CURVES.items():
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for key in keys:
            ys = [r.get(key) for r in rows]
            if all(y is not None for y in ys):
                ax.plot(ns, ys, marker="o", label=key)
        ax.set_xscale("log")
        if name not in ("recall",):
            ax.set_yscale("log")
        ax.set_xlabel("products (n)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = results_dir / f"bench_scale_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(map(str, ScaleConfig.sizes)))
    p.add_argument("--bundle", default=ScaleConfig.bundle)
    p.add_argument("--real-index", default=ScaleConfig.real_index)
    p.add_argument("--queries", type=int, default=ScaleConfig.queries)
    p.add_argument("--threads", type=int, default=ScaleConfig.threads)
    p.add_argument("--api-requests", type=int, default=ScaleConfig.api_requests)
    p.add_argument("--out", default="bench_scale", help="results name (bench/results/NAME.json)")
    a = p.parse_args(argv)
    cfg = ScaleConfig(sizes=tuple(int(s) for s in a.sizes.split(",")), bundle=a.bundle,
                      real_index=a.real_index, queries=a.queries, threads=a.threads,
                      api_requests=a.api_requests)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from embedder.bundle import Bundle

    fingerprint = Bundle.load(cfg.bundle).fingerprint
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        rows = [measure_size(n, cfg, fingerprint, Path(tmp)) for n in cfg.sizes]
    print_table(rows, COLUMNS)
    plots = plot(rows, RESULTS_DIR) if a.out == "bench_scale" else []
    path = write_results(a.out, {
        "machine": machine_info(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "parameters": {**vars(a)},
        "baseline": "each size against the others (a growth curve); index search against "
        "exact search (recall@10)",
        "rows": rows,
        "plots": [str(x.name) for x in plots],
    })
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
