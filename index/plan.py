"""Choosing an index type from the data: every threshold in one IndexPlan, pure functions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from typing import Any

from huse_common.limits import MAX_INDEX_K


@dataclass(frozen=True)
class IndexPlan:
    """Every threshold behind the choice and tuning of an index type, in one place."""

    flat_max_n: int = 50_000  # exact search is fast enough up to here
    hnsw_max_n: int = 300_000  # HNSW build time grows past a few minutes on 2 cores beyond
    # The prefix index (titles; index.store) stays HNSW further: a title's nearest products are
    # near-ties in its class, which IVF lists scatter. 1M x 256 on 2 cores: HNSW32 efSearch 64
    # recall@10 0.967 at 5,010 q/s (129 s build) vs IVF2048 nprobe 64 0.926 at 728 q/s
    # (bench/results/bench_index_1m_d1344_prefix.json).
    prefix_hnsw_max_n: int = 2_000_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 128
    ivf_lists_per_sqrt_n: float = 2.0  # nlist ~ 2 sqrt(n), rounded to a power of two
    ivf_min_points_per_list: int = 39  # k-means needs ~39 points per centroid
    ivf_train_points_per_list: int = 64  # training sample size per list
    min_train_points: int = 20_000  # PQ codebooks need many points even with few lists
    ivf_nprobe: int = 32
    pq_dims_per_byte: int = 4  # PQ m = d / 4 one-byte codes: 16x smaller than float32
    pq_bits: int = 8  # bits per PQ code (fewer: faster training, lower recall before re-rank)
    rerank_factor: int = 10  # lossy codes: fetch k * factor candidates, re-rank exactly
    tombstone_rebuild_fraction: float = 0.2
    exact_subset_max: int = 20_000  # filters this selective are searched exactly
    # Batches up to this many queries search on the calling thread alone (one OpenMP thread):
    # concurrent callers are the parallelism, and a team of OpenMP threads per batch-1 search
    # spin-waits on the other cores (at 4k products: 2 ms of CPU per query instead of 0.1 ms).
    single_thread_max_queries: int = 16
    overfetch_growth: int = 4
    max_k: int = MAX_INDEX_K  # results one search may return (huse_common.limits)
    gpu_max_k: int = 2048  # FAISS GPU k-selection limit; larger k searches on CPU
    gpu_fp16: bool = True  # fp16 storage on the GPU halves memory; IP error ~1e-3
    # Candidates measured side by side (bench.bench_index) to pick the numbers above.
    candidate_lists_per_sqrt_n: tuple[float, ...] = (2.0, 4.0)  # 8+: k-means too slow here
    candidate_hnsw_m: tuple[int, ...] = (16, 32)
    candidate_efforts: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # IVF nprobe
    # efSearch; the service searches at >= 2k (index.strategies.served_ef_search)
    candidate_hnsw_efforts: tuple[int, ...] = (20, 32, 64, 128, 256)
    fastscan_dims_per_code: int = 4  # PQ fast-scan: 4-bit codes over d/4 sub-vectors
    fastscan_refine_factor: int = 8  # k * factor fast-scan candidates re-ranked exactly in RAM
    hnsw_quantizer_min_d: int = 512  # from here IVF with an HNSW coarse quantizer is a candidate
    # From this width an exact index keeps its rows in fp16 ("SQfp16": 1,344-d, one thread,
    # batch 1: 0.35 ms against 0.55 at 4k rows, 2.8 against 6.4 at 20k), and an IVF index its
    # coarse centroids and its lists: a batch-1 search reads the centroids and the probed
    # lists, so half the bytes is ~2x the speed, at half the memory. Inner products of unit
    # vectors move by < 1e-3, below the gaps that order neighbours. 1M x 1,344 real-like
    # rows, 2 threads: nprobe 2 photos 0.999 and recognition probes 0.982 at 5,251 q/s
    # (float32 IVF2048,Flat, same run: 2,352), 2.6 GB instead of 5.1
    # (bench/results/bench_index_1m_d1344_plan.json).
    half_precision_min_d: int = 512


def prefix_plan(plan: IndexPlan | None) -> IndexPlan:
    """The plan of a prefix index: `plan` with HNSW kept up to prefix_hnsw_max_n vectors."""
    plan = plan or IndexPlan()
    return dataclass_replace(plan, hnsw_max_n=max(plan.hnsw_max_n, plan.prefix_hnsw_max_n))


@dataclass(frozen=True)
class BuildConfig:
    """How recall is measured (and search effort tuned) at build time; lands in the manifest."""

    n_eval_queries: int = 1000
    # Norm of the perturbation added to sampled database vectors to make held-out queries.
    # None: the median distance between neighbouring products (sampled), so queries land as
    # near their products as the products lie to each other, as bench_index's real-like queries
    # do. A fixed 0.1 (4x that distance on the real catalog) stopped the 1M tuning at nprobe 32
    # where real-like queries had recall@10 0.99 at nprobe 4.
    query_noise: float | None = None
    k: int = 10
    seed: int = 0
    target_recall: float = 0.95  # double nprobe / efSearch until recall@k reaches this
    # Tuning starts this low, so the lowest effort that reaches the target is kept. Real-like
    # data at 1M, IVF2048 (bench/results/bench_index.json): nprobe 1 recall@10 0.969 at 0.09 ms
    # of CPU per query, 2: 0.989 at 0.16 ms, 4: 0.991 at 0.22 ms, 32: 0.992 at 1.2 ms. Not 1:
    # one probed list leaves a query near a list boundary half its neighbours, and real
    # queries (text, photos) lie farther from their products than these perturbations.
    min_search_effort: int = 2
    max_search_effort: int = 1024
    timed_queries: int = 200  # searched one at a time per tuning point: the q/s in the curve
    # Efforts measured past the chosen one (doubling), so the manifest's curve shows what more
    # effort would buy; the chosen effort is kept.
    curve_points_past_target: int = 2
    # Halvings of the gap between the last effort below the target and the first above it,
    # keeping the lowest that reaches it: doubling alone overshoots by up to 2x. 1M titles on
    # an HNSW32 prefix index: efSearch 32 0.940, 40 0.953 at 5,835 q/s, 64 0.967 at 3,905
    # (bench/results/bench_index_1m_titles_efsearch.json).
    effort_refine_steps: int = 2
    # A result counts when its exact inner product is within this of the exact k-th best
    # (ann-benchmarks' recall; index.evaluation.tie_aware_recall_at_k). 0: id recall, under
    # which near-tied products cap what any effort reaches: 400k real-like rows, titles on an
    # HNSW32 prefix stayed at 0.893 from efSearch 2 to 16 and the tuning chose 128
    # (bench/results/bench_build_400k_d1344.json).
    recall_tie_epsilon: float = 1e-3


def _power_of_two(x: float) -> int:
    return 1 << max(0, round(math.log2(max(x, 1.0))))


def _nlist(n: int, plan: IndexPlan) -> int:
    nlist = _power_of_two(plan.ivf_lists_per_sqrt_n * math.sqrt(n))
    while nlist > 1 and n < nlist * plan.ivf_min_points_per_list:
        nlist //= 2
    return nlist


def _pq_m(d: int, plan: IndexPlan) -> int:
    m = max(1, d // plan.pq_dims_per_byte)
    while d % m:
        m -= 1
    return m


def estimate_bytes(n: int, d: int, factory: str, plan: IndexPlan | None = None) -> int:
    """Rough resident size of an index (vectors + ids + graph or codes) for planning."""
    plan = plan or IndexPlan()
    if "PQ" in factory:
        return n * (math.ceil(_pq_m(d, plan) * plan.pq_bits / 8) + 8)
    if factory.endswith("SQfp16"):
        return n * (2 * d + 8)
    if factory.startswith("HNSW"):
        return n * (4 * d + 8 + 2 * 4 * plan.hnsw_m)
    return n * (4 * d + 8)


def choose_factory(
    n: int, d: int, memory_budget_bytes: int | None = None, plan: IndexPlan | None = None,
    gpu: bool = False,
) -> str:
    """Pick a FAISS factory string for n vectors of dimension d.

    Exact Flat while small; HNSW for mid sizes; IVF-Flat when large; from
    `half_precision_min_d`, the flat rows, the IVF centroids and lists in fp16; IVF-PQ
    (re-ranked exactly from stored vectors) when those exceed the memory budget and there are
    enough vectors to train PQ codebooks. `gpu`: exact search stays Flat, which FAISS copies to
    the GPU (in fp16 with `gpu_fp16`); it copies no flat fp16 index.
    """
    plan = plan or IndexPlan()
    if n < 0 or d < 1:
        raise ValueError(f"choose_factory needs n >= 0 and d >= 1, got n={n}, d={d}")
    large = (f"IVF{_nlist(n, plan)}(SQfp16),SQfp16" if d >= plan.half_precision_min_d
             else f"IVF{_nlist(n, plan)},Flat")
    over_budget = (
        memory_budget_bytes is not None and estimate_bytes(n, d, large, plan) > memory_budget_bytes
    )
    if over_budget and n >= 2**plan.pq_bits:  # PQ codebooks need >= 2**bits training points
        return f"IVF{_nlist(n, plan)},PQ{_pq_m(d, plan)}x{plan.pq_bits}"
    if n <= plan.flat_max_n:
        return "SQfp16" if d >= plan.half_precision_min_d and not gpu else "Flat"
    hnsw = f"HNSW{plan.hnsw_m}"
    fits = memory_budget_bytes is None or estimate_bytes(n, d, hnsw, plan) <= memory_budget_bytes
    if n <= plan.hnsw_max_n and fits:
        return hnsw
    return large


@dataclass(frozen=True)
class Candidate:
    """One index type to measure: a FAISS factory string and the search efforts to sweep
    (nprobe for IVF, efSearch for HNSW)."""

    factory: str
    efforts: tuple[int, ...]


def candidates(n: int, d: int, plan: IndexPlan | None = None) -> list[Candidate]:
    """The index types worth comparing at n vectors of dimension d: IVF-Flat at two list
    counts, HNSW at each M, and IVF with 4-bit PQ fast-scan codes re-ranked exactly (RFlat)."""
    plan = plan or IndexPlan()
    if n < 1 or d < 1:
        raise ValueError(f"candidates needs n >= 1 and d >= 1, got n={n}, d={d}")
    out: list[Candidate] = []
    lists = sorted({_nlist(n, dataclass_replace(plan, ivf_lists_per_sqrt_n=c))
                    for c in plan.candidate_lists_per_sqrt_n})
    for nlist in lists:
        efforts = tuple(e for e in plan.candidate_efforts if e <= nlist)
        out.append(Candidate(f"IVF{nlist},Flat", efforts))
    if d >= plan.hnsw_quantizer_min_d:  # the coarse scan costs nlist x d per query
        for nlist in lists:
            efforts = tuple(e for e in plan.candidate_efforts if e <= nlist)
            out.append(Candidate(f"IVF{nlist}_HNSW{plan.hnsw_m},Flat", efforts))
            out.append(Candidate(f"IVF{nlist}(SQfp16),Flat", efforts))  # half the coarse bytes
            out.append(Candidate(f"IVF{nlist}(SQfp16),SQfp16", efforts))  # and half the lists'
    out += [Candidate(f"HNSW{m}", plan.candidate_hnsw_efforts) for m in plan.candidate_hnsw_m]
    m = _fastscan_m(d, plan)
    if m:
        nlist = lists[0]
        efforts = tuple(e for e in plan.candidate_efforts if e <= nlist)
        out.append(Candidate(f"IVF{nlist},PQ{m}x4fs,RFlat", efforts))
    return out


def _fastscan_m(d: int, plan: IndexPlan) -> int:
    """Sub-quantizers for PQ fast-scan (an even count dividing d), 0 when none fits."""
    m = max(2, d // plan.fastscan_dims_per_code)
    while m >= 2 and (d % m or m % 2):
        m -= 1
    return m if m >= 2 else 0


def pick(curve: Sequence[Mapping[str, Any]], target_recall: float,
         recall_key: str = "recall_at_10", speed_key: str = "qps") -> Mapping[str, Any] | None:
    """The measured point with recall >= target at the highest speed (None if none reaches
    it): how the plan's index type and search effort are chosen from a recall/speed curve."""
    ok = [p for p in curve if p[recall_key] >= target_recall]
    return max(ok, key=lambda p: p[speed_key]) if ok else None
