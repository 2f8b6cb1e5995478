"""VectorIndex against numpy brute force, per index type, with mutations and filters."""

# ruff: noqa: E741  (faiss vocabulary: D, I)

from __future__ import annotations

import numpy as np
import pytest
from index_testdata import D, brute_force, make_vectors

from index.errors import CorruptIndexError, ProductNotFound
from index.plan import IndexPlan, choose_factory
from index.vectors import VectorIndex, gpu_available

IDS_STEP = 7  # ids are not row positions: id = 7 * row + 3


def ids_of(rows: np.ndarray) -> np.ndarray:
    return (np.asarray(rows) * IDS_STEP + 3).astype(np.int64)


def dict_source(xb: np.ndarray):
    """exact_vectors callback over a plain dict, as the store provides from SQLite."""
    table = {int(i): x for i, x in zip(ids_of(np.arange(len(xb))), xb, strict=True)}
    return lambda ids: np.stack([table[int(i)] for i in ids])


def recall(I: np.ndarray, I_ref: np.ndarray) -> float:  # noqa: E741
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(I, I_ref, strict=True)]))


def test_flat_matches_brute_force(xb, xq):
    vi = VectorIndex(D, "Flat", use_gpu=False)
    vi.add(ids_of(np.arange(len(xb))), xb)
    D_, I = vi.search(xq, 10)
    D_ref, I_ref = brute_force(xq, xb, 10)
    np.testing.assert_array_equal(I, ids_of(I_ref))
    np.testing.assert_allclose(D_, D_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("factory", "min_recall"),
    [("Flat", 1.0), ("HNSW16", 0.95), ("IVF8,Flat", 0.9), ("IVF4,PQ4x4", 0.9)],
)
def test_each_type_round_trips(xb, xq, factory, min_recall):
    xb = make_vectors(3000)
    source = dict_source(xb)
    plan = IndexPlan(min_train_points=3000, rerank_factor=30)
    vi = VectorIndex(D, factory, use_gpu=False, exact_vectors=source, plan=plan)
    vi.add(ids_of(np.arange(len(xb))), xb)
    _, I = vi.search(xq, 10)
    _, I_ref = brute_force(xq, xb, 10)
    assert recall(I, ids_of(I_ref)) >= min_recall
    again = VectorIndex.deserialize(
        vi.serialize(), D, vi.state(), exact_vectors=source, use_gpu=False, plan=plan
    )
    assert again.ntotal == len(xb) and again.factory == factory
    np.testing.assert_array_equal(again.search(xq, 10)[1], I)


def test_lossy_factory_needs_exact_source():
    with pytest.raises(ValueError, match="exact_vectors"):
        VectorIndex(D, "IVF4,PQ4")


def test_fp16_codes_need_no_reranking_and_keep_scores_within_1e_3(xq):
    """fp16 centroids and lists (wide rows' large-index plan) are searched without exact
    vectors: the ranking is the exact one but for near ties, the scores within 1e-3."""
    xb = make_vectors(3000)
    vi = VectorIndex(D, "IVF8(SQfp16),SQfp16", use_gpu=False, plan=IndexPlan(ivf_nprobe=8))
    vi.add(ids_of(np.arange(len(xb))), xb)
    D_, I = vi.search(xq, 10)
    D_ref, I_ref = brute_force(xq, xb, 10)
    assert recall(I, ids_of(I_ref)) >= 0.99
    np.testing.assert_allclose(D_, D_ref, atol=1e-3)


@pytest.mark.parametrize("factory", ["Flat", "SQfp16", "HNSW16", "IVF4,Flat"])
def test_upsert_replaces_and_remove_deletes(xb, factory):
    vi = VectorIndex(D, factory, use_gpu=False)
    ids = ids_of(np.arange(len(xb)))
    vi.add(ids, xb)
    new = make_vectors(5, seed=9)
    vi.upsert(ids[:5], new)
    vi.remove(ids[5:10])
    assert vi.ntotal == len(xb) - 5
    np.testing.assert_allclose(vi.vectors(ids[:5]), new, atol=1e-3 if "fp16" in factory else 1e-6)
    _, I = vi.search(new, 1)
    np.testing.assert_array_equal(I[:, 0], ids[:5])  # the new vectors are found under old ids
    _, I = vi.search(xb[5:10], 50)
    assert not np.isin(I, ids[5:10]).any()
    assert 0 < vi.ntotal and ids[5] not in vi and ids[0] in vi
    with pytest.raises(ProductNotFound):
        vi.remove(ids[5:6])


def test_hnsw_searches_at_the_served_ef_search_floor():
    """Below 2k the store searches HNSW at efSearch 2k; benchmarks search through the same
    served_ef_search, so their curves are what the service runs."""
    import faiss

    from index.strategies import served_ef_search

    xb, xq = make_vectors(5000), make_vectors(200, seed=2)
    vi = VectorIndex(D, "HNSW8", use_gpu=False)
    vi.add(ids_of(np.arange(len(xb))), xb)
    vi.set_search_effort(1)
    assert served_ef_search(1, 10) == 20 and served_ef_search(64, 10) == 64
    found = {ef: ids_of(vi.base.search(xq, 10, params=faiss.SearchParametersHNSW(efSearch=ef))[1])
             for ef in (10, served_ef_search(1, 10))}
    assert not np.array_equal(found[10], found[20])  # the floor changes results here
    np.testing.assert_array_equal(vi.search(xq, 10)[1], found[20])


def test_hnsw_tombstones_then_rebuild(xb, xq):
    vi = VectorIndex(D, "HNSW16", use_gpu=False, plan=IndexPlan(tombstone_rebuild_fraction=0.1))
    ids = ids_of(np.arange(len(xb)))
    vi.add(ids, xb)
    vi.set_search_effort(77)
    vi.remove(ids[:30])  # 5% < 10%: kept as tombstones
    assert vi.n_tombstones == 30
    _, I = vi.search(xq, 10)
    assert not np.isin(I, ids[:30]).any() and (I >= 0).all()
    loaded = VectorIndex.deserialize(vi.serialize(), D, vi.state(), use_gpu=False)
    assert loaded.n_tombstones == 30 and loaded.ntotal == len(xb) - 30
    np.testing.assert_array_equal(loaded.search(xq, 10)[1], I)
    vi.remove(ids[30:70])  # 70 of 600 rows > 10%: rebuilt without tombstones
    assert vi.n_tombstones == 0 and vi.ntotal == len(xb) - 70
    assert vi.search_effort == 77  # a tuned efSearch survives the rebuild
    _, I_ref = brute_force(xq, xb[70:], 10)
    assert recall(vi.search(xq, 10)[1], ids_of(I_ref + 70)) >= 0.95


def test_filters_return_k_when_enough_match(xb, xq):
    ids = ids_of(np.arange(len(xb)))
    plan = IndexPlan(exact_subset_max=50)  # force over-fetch for the broad filter below
    vi = VectorIndex(D, "HNSW16", use_gpu=False, plan=plan)
    vi.add(ids, xb)
    selective, broad = ids[::40], ids[: len(ids) // 2]
    for allowed in (selective, broad):
        _, I = vi.search(xq, 10, allowed=allowed)
        assert (I >= 0).all() and np.isin(I, allowed).all()
        _, I_ref = brute_force(xq, xb[np.isin(ids, allowed)], 10)
        assert recall(I, allowed[I_ref]) >= 0.9
    _, I = vi.search(xq, 10, allowed=ids[:4])
    assert ((I >= 0).sum(axis=1) == 4).all()  # fewer match than k: all of them, then -1
    _, I = vi.search(xq, 10, excluded=ids[:300])
    assert (I >= 0).all() and not np.isin(I, ids[:300]).any()


def test_excluding_a_few_ids_equals_exact_search_without_them(xb, xq, monkeypatch):
    ids = ids_of(np.arange(len(xb)))
    vi = VectorIndex(D, "Flat", use_gpu=False)
    vi.add(ids, xb)
    _, nearest = vi.search(xq, 3)
    # each query's own nearest ids (a product excluding itself), plus ids not in the index
    for excluded in (nearest[:, 0], nearest[:, :3].ravel(), np.array([1, 2, int(ids[5])])):
        D_, I = vi.search(xq, 10, excluded=excluded)
        keep = ~np.isin(ids, excluded)
        D_ref, I_ref = brute_force(xq, xb[keep], 10)
        np.testing.assert_array_equal(I, ids[keep][I_ref])
        np.testing.assert_allclose(D_, D_ref, rtol=1e-5, atol=1e-5)
    # the whole-index search answered: no vector was copied out for a subset search
    monkeypatch.setattr(vi, "_search_subset", None)
    assert not np.isin(vi.search(xq, 5, excluded=nearest[:, 0])[1], nearest[:, 0]).any()
    D_, I = vi.search(xq[:1], 10, excluded=ids[: len(ids) - 4])  # fewer left than k
    assert list(I[0, 4:]) == [-1] * 6 and np.isinf(D_[0, 4:]).all()
    assert set(I[0, :4]) == set(ids[len(ids) - 4:])


def test_auto_switches_type_as_data_grows():
    plan = IndexPlan(flat_max_n=100, hnsw_max_n=10_000)
    vi = VectorIndex(D, "auto", use_gpu=False, plan=plan)
    vi.add(np.arange(50), make_vectors(50))
    assert vi.factory == "Flat"
    vi.add(np.arange(50, 400), make_vectors(350, seed=2))
    assert vi.factory == "HNSW32" and vi.ntotal == 400


def test_choose_factory_thresholds():
    plan = IndexPlan()
    assert choose_factory(1_000, 256) == "Flat"
    assert choose_factory(100_000, 256) == f"HNSW{plan.hnsw_m}"
    assert choose_factory(1_000_000, 256) == "IVF2048,Flat"
    assert choose_factory(1_000_000, 256, memory_budget_bytes=200 * 2**20) == "IVF2048,PQ64x8"
    assert choose_factory(100, 256, memory_budget_bytes=1000) == "Flat"  # too few for PQ
    # wide rows (the served vector): fp16 rows, centroids and lists, PQ only past their budget
    wide = plan.half_precision_min_d
    assert choose_factory(1_000, wide) == "SQfp16"  # exact, over fp16 rows
    assert choose_factory(1_000, wide, gpu=True) == "Flat"  # FAISS copies Flat to a GPU
    assert choose_factory(1_000_000, wide) == "IVF2048(SQfp16),SQfp16"
    assert choose_factory(1_000_000, wide, memory_budget_bytes=wide * 2 * 2**20) == (
        "IVF2048(SQfp16),SQfp16")
    over = choose_factory(1_000_000, wide, memory_budget_bytes=wide * 2**20)  # fp16 needs 2x
    assert over.startswith("IVF2048,PQ")
    with pytest.raises(ValueError, match="n=-1"):
        choose_factory(-1, 256)


BAD_VECTORS = {
    "wrong dimension": np.ones((2, D + 1), np.float32),
    "nan": np.where(np.eye(2, D) > 0, np.nan, 0.5).astype(np.float32),
    "inf": np.full((2, D), np.inf, np.float32),
    "zero row": np.vstack([np.ones(D), np.zeros(D)]).astype(np.float32),
}


@pytest.mark.parametrize("name", BAD_VECTORS)
def test_bad_vectors_raise_and_change_nothing(xb, name):
    vi = VectorIndex(D, "Flat", use_gpu=False)
    vi.add(ids_of(np.arange(len(xb))), xb)
    before = vi.search(xb[:3], 5)
    with pytest.raises(ValueError):
        vi.upsert(np.array([1, 2]), BAD_VECTORS[name])
    with pytest.raises(ValueError):
        vi.search(BAD_VECTORS[name], 5)
    assert vi.ntotal == len(xb)
    np.testing.assert_array_equal(vi.search(xb[:3], 5)[1], before[1])


def test_bad_ids_and_k_raise(xb):
    vi = VectorIndex(D, "Flat", use_gpu=False)
    with pytest.raises(ValueError, match="duplicate"):
        vi.add(np.array([1, 1]), xb[:2])
    with pytest.raises(ValueError, match=">= 0"):
        vi.add(np.array([-1, 2]), xb[:2])
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        vi.add(np.array([1, 2]), xb[:3])
    vi.add(np.array([1, 2]), xb[:2])
    with pytest.raises(ValueError, match="already"):
        vi.add(np.array([2, 3]), xb[:2])
    assert vi.ntotal == 2
    for k in (0, -1, 10**6):
        with pytest.raises(ValueError, match="k must be in"):
            vi.search(xb[:1], k)
    with pytest.raises(TypeError):
        vi.search(xb[:1], 2.5)
    with pytest.raises(ValueError, match="shape"):
        VectorIndex(D, "Flat").search(np.ones((1, 3, D)), 1)


def test_garbage_bytes_are_corrupt():
    with pytest.raises(CorruptIndexError):
        VectorIndex.deserialize(
            np.frombuffer(b"not a faiss index", np.uint8),
            D,
            {"factory": "Flat", "requested_factory": "Flat"},
        )


@pytest.mark.skipif(not gpu_available(), reason="FAISS sees no GPU")
def test_gpu_matches_cpu(xb, xq):
    ids = ids_of(np.arange(len(xb)))
    cpu, gpu = VectorIndex(D, "Flat", use_gpu=False), VectorIndex(D, "Flat", use_gpu=True)
    cpu.add(ids, xb)
    gpu.add(ids, xb)
    assert gpu.use_gpu
    D_cpu, I_cpu = cpu.search(xq, 10)
    D_gpu, I_gpu = gpu.search(xq, 10)
    np.testing.assert_allclose(D_gpu, D_cpu, atol=2e-3)  # fp16 storage
    assert recall(I_gpu, I_cpu) >= 0.98


def test_use_gpu_true_falls_back_to_cpu_without_gpu(xb):
    vi = VectorIndex(D, "Flat", use_gpu=True)
    vi.add(ids_of(np.arange(len(xb))), xb)
    assert vi.use_gpu == gpu_available()
    assert vi.search(xb[:2], 1)[1][:, 0].tolist() == ids_of(np.arange(2)).tolist()


def test_an_index_faiss_cannot_copy_to_the_gpu_is_searched_on_the_cpu(monkeypatch, xb, xq):
    """Some indexes have no GPU twin (an IVF with a PCA coarse quantizer): the GPU path must
    answer from the CPU index, not fail every search."""
    import types

    import faiss

    import index.vectors

    ids = ids_of(np.arange(len(xb)))
    cpu = VectorIndex(D, "Flat", use_gpu=False)
    cpu.add(ids, xb)
    tries = []

    def refuse(*args: object) -> None:
        tries.append(args)
        raise RuntimeError("Error in index_cpu_to_gpu: this quantizer has no GPU version\nmore")

    monkeypatch.setattr(index.vectors, "gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", types.SimpleNamespace, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse, raising=False)
    vi = VectorIndex(D, "Flat", use_gpu=True)
    vi.add(ids, xb)
    assert vi.use_gpu
    for _ in range(2):
        D_, I = vi.search(xq, 10)
        np.testing.assert_array_equal(I, cpu.search(xq, 10)[1])
    assert len(tries) == 1  # refused once, then not asked again


@pytest.mark.parametrize(
    ("factory", "plan"),
    [("HNSW16", IndexPlan(hnsw_ef_search=16)), ("IVF16,Flat", IndexPlan(ivf_nprobe=1))],
)
def test_approximate_index_still_returns_k(xq, factory, plan):
    xb = make_vectors(1000)
    vi = VectorIndex(D, factory, use_gpu=False, plan=plan)
    vi.add(ids_of(np.arange(len(xb))), xb)
    _, I = vi.search(xq, 300)  # far beyond efSearch / one probed list
    assert (I >= 0).all() and all(len(set(row)) == 300 for row in I)


def test_omp_threads_is_per_thread_and_restored() -> None:
    """Small-batch searches pin FAISS to one OpenMP thread on the calling thread only."""
    import threading

    import faiss

    from index.vectors import omp_threads

    def in_other_thread() -> int:
        seen: list[int] = []
        other = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))
        other.start()
        other.join()
        return seen[0]

    before, elsewhere = faiss.omp_get_max_threads(), in_other_thread()
    with omp_threads(1):
        assert faiss.omp_get_max_threads() == 1
        assert in_other_thread() == elsewhere
    assert faiss.omp_get_max_threads() == before
