"""FAISS vector index with int64 ids, inner product, mutations and filtered search.

Numpy in, numpy out, faiss vocabulary (xb, xq, d, k, D, I, ids). Ids are the caller's int64
keys, never row positions. A VectorIndex is composed of small strategies (index/strategies.py)
picked from what the FAISS index can do: how ids are kept and removed (mapped, native IVF ids,
or tombstones for HNSW), exact re-ranking of lossy codes, and an optional GPU replica.

Not thread-safe for writes: the owner (index.store.ProductIndex) serialises writers and lets
searches run concurrently, as the FAISS wiki allows for CPU indexes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from index.arrays import as_ids, as_matrix, topk
from index.errors import CorruptIndexError, ProductNotFound
from index.plan import IndexPlan, choose_factory
from index.strategies import (
    ExactReranker,
    ExactVectors,
    GpuReplica,
    MappedIds,
    gpu_available,
    ids_for,
    is_lossy,
    keep_first,
    overfetch,
)

logger = logging.getLogger(__name__)


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """FAISS's OpenMP loops use `n` threads inside the block, on this thread only (OpenMP keeps
    the setting per thread; other threads keep theirs)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class VectorIndex:
    """Inner-product k-NN over int64 ids; see the module docstring for the id strategies."""

    def __init__(
        self,
        d: int,
        factory: str = "auto",
        use_gpu: bool | str = "auto",
        plan: IndexPlan | None = None,
        memory_budget_bytes: int | None = None,
        exact_vectors: ExactVectors | None = None,
    ) -> None:
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        if not isinstance(factory, str) or not factory.strip():
            raise ValueError(f"factory must be 'auto' or a FAISS factory string, got {factory!r}")
        if use_gpu not in ("auto", True, False):
            raise ValueError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
        self.d = int(d)
        self.requested_factory = factory
        self.plan = plan or IndexPlan()
        self.memory_budget_bytes = memory_budget_bytes
        self._exact_source = exact_vectors
        want_gpu = use_gpu is True or use_gpu == "auto"
        self.use_gpu = want_gpu and gpu_available()
        if use_gpu is True and not self.use_gpu:
            logger.warning("use_gpu=True but FAISS sees no GPU; searching on CPU")
        self._gpu: GpuReplica | None = None  # one per index type (_make), when use_gpu
        self.factory = ""  # resolved factory string, "" until data arrives for "auto"
        self._index: Any = None
        self._ids = MappedIds()  # how ids are kept and removed (index.strategies)
        self._reranker: ExactReranker | None = None  # lossy codes only
        self._live = np.empty(0, dtype=np.int64)  # sorted live ids
        self._n_at_plan = 0
        if factory != "auto":
            self._make(factory)

    # ---------------------------------------------------------------- construction
    def _make(self, factory: str) -> None:
        import faiss

        try:
            base = faiss.index_factory(self.d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"bad FAISS factory string {factory!r} for d={self.d}: {e}") from e
        if isinstance(base, faiss.IndexIVF):
            base.nprobe = min(self.plan.ivf_nprobe, base.nlist)
        if isinstance(base, faiss.IndexHNSW):
            base.hnsw.efConstruction = self.plan.hnsw_ef_construction
            base.hnsw.efSearch = self.plan.hnsw_ef_search
        lossy = is_lossy(base)
        if lossy and self._exact_source is None:
            raise ValueError(
                f"factory {factory!r} stores lossy codes; pass exact_vectors= so results "
                "can be re-ranked exactly"
            )
        ids = ids_for(base)
        self.factory, self._index, self._ids = factory, ids.wrap(base), ids
        self._reranker = (ExactReranker(self._exact_source, self.plan.rerank_factor)
                          if lossy else None)
        if self.use_gpu:  # a new index type: FAISS may copy this one to the GPU
            self._gpu = GpuReplica(self.plan.gpu_fp16, self.plan.gpu_max_k)

    def _invalidate_replica(self) -> None:
        if self._gpu is not None:
            self._gpu.invalidate()

    @property
    def base(self) -> Any:
        """The FAISS index that stores the codes (inside any id map)."""
        return self._ids.codes(self._index)

    @property
    def ntotal(self) -> int:
        """Number of live ids (tombstones excluded)."""
        return int(self._live.shape[0])

    @property
    def search_effort(self) -> int | None:
        """nprobe (IVF) or efSearch (HNSW), the knob that trades speed for recall; None when
        the index is exact or still empty."""
        import faiss

        if self._index is None:
            return None
        base = self.base
        if isinstance(base, faiss.IndexIVF):
            return int(base.nprobe)
        if isinstance(base, faiss.IndexHNSW):
            return int(base.hnsw.efSearch)
        return None

    def set_search_effort(self, value: int) -> int:
        """Set nprobe / efSearch (nprobe is capped at nlist); returns the value in effect."""
        import faiss

        if self.search_effort is None:
            raise ValueError(f"index {self.factory!r} has no search effort to set")
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"search effort must be a positive int, got {value!r}")
        base = self.base
        if isinstance(base, faiss.IndexIVF):
            base.nprobe = min(int(value), base.nlist)
        else:
            base.hnsw.efSearch = int(value)
        self._invalidate_replica()  # the replica copied the old setting
        return self.search_effort

    @property
    def n_tombstones(self) -> int:
        return self._ids.n_tombstones

    def __len__(self) -> int:
        return self.ntotal

    def __contains__(self, id_: int) -> bool:
        pos = np.searchsorted(self._live, id_)
        return bool(pos < self._live.shape[0] and self._live[pos] == id_)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._live, ids)
        pos = np.minimum(pos, max(self._live.shape[0] - 1, 0))
        return (self._live[pos] == ids) if self._live.shape[0] else np.zeros(ids.shape, bool)

    def _train_and_add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        if not self._index.is_trained:
            self._train(xb)
        self._index.add_with_ids(xb, ids)
        self._ids.added(ids)
        self._live = np.union1d(self._live, ids)
        self._invalidate_replica()

    def _train(self, xb: np.ndarray) -> None:
        import faiss

        base = self.base
        n_train = max(
            getattr(base, "nlist", 1) * self.plan.ivf_train_points_per_list,
            self.plan.min_train_points,
        )
        rng = np.random.default_rng(0)
        sample = xb if xb.shape[0] <= n_train else xb[rng.choice(xb.shape[0], n_train, False)]
        if isinstance(base, faiss.IndexIVF):
            base.cp.spherical = True  # unit vectors + inner product: spherical k-means
        try:
            self._index.train(sample)
        except RuntimeError as e:
            raise ValueError(
                f"training {self.factory!r} on {sample.shape[0]} vectors failed "
                f"(too few for its clusters?): {e}"
            ) from e

    def _rebuild(self, factory: str, extra_ids: np.ndarray, extra_xb: np.ndarray) -> None:
        """Build `factory` afresh from the live vectors plus (extra_ids, extra_xb)."""
        ids = self._live.copy()
        xb = self._exact(ids) if ids.shape[0] else np.empty((0, self.d), np.float32)
        ids, xb = np.concatenate([ids, extra_ids]), np.concatenate([xb, extra_xb])
        logger.info("building %s over %d vectors (was %r)", factory, ids.shape[0], self.factory)
        effort = self.search_effort if factory == self.factory else None  # keep tuned nprobe/ef
        self._make(factory)
        self._live = np.empty(0, dtype=np.int64)
        if ids.shape[0]:
            self._train_and_add(ids, xb)
        if effort is not None:
            self.set_search_effort(effort)
        self._n_at_plan = ids.shape[0]

    def _replan(self, n: int) -> str | None:
        """For factory='auto': the factory to switch to at n vectors, or None to keep it."""
        if self.requested_factory != "auto":
            return None
        if self._index is not None and n < 2 * max(self._n_at_plan, 1):
            return None
        chosen = choose_factory(n, self.d, self.memory_budget_bytes, self.plan, self.use_gpu)
        return chosen if chosen != self.factory else None

    # ---------------------------------------------------------------- mutations
    def prepare(self, xb: Any) -> None:
        """Train a still-untrained index on xb now (ValueError if it cannot be), so that a
        caller can fail before committing the batch anywhere else."""
        xb = as_matrix(xb, self.d)
        if self._index is None or self._index.is_trained:
            return
        if self._replan(self.ntotal + xb.shape[0]) is None:
            self._train(xb)

    def add(self, ids: Any, xb: Any) -> None:
        """Add new ids; an id already present is an error (use upsert to replace)."""
        xb = as_matrix(xb, self.d)
        ids = as_ids(ids, xb.shape[0])
        present = self._present(ids)
        if present.any():
            raise ValueError(f"ids already in the index (use upsert): {ids[present][:10].tolist()}")
        self._add_new(ids, xb)

    def _add_new(self, ids: np.ndarray, xb: np.ndarray) -> None:
        if ids.shape[0] == 0:
            return
        new_factory = self._replan(self.ntotal + ids.shape[0])
        if new_factory is not None:
            self._rebuild(new_factory, ids, xb)
        else:
            self._train_and_add(ids, xb)

    def upsert(self, ids: Any, xb: Any) -> None:
        """Add ids, replacing the vectors of ids already present."""
        xb = as_matrix(xb, self.d)
        ids = as_ids(ids, xb.shape[0])
        present = self._present(ids)
        if present.any():
            self._remove(ids[present])
        self._add_new(ids, xb)
        self._maybe_compact()

    def remove(self, ids: Any) -> None:
        """Remove ids; all must be present (ProductNotFound names the first missing one)."""
        ids = as_ids(ids)
        present = self._present(ids)
        if not present.all():
            raise ProductNotFound(int(ids[~present][0]))
        self._remove(ids)
        self._maybe_compact()

    def _remove(self, ids: np.ndarray) -> None:
        self._ids.remove(self._index, ids)
        self._live = np.setdiff1d(self._live, ids, assume_unique=True)
        self._invalidate_replica()

    def _maybe_compact(self) -> None:
        dead, rows = self.n_tombstones, self._ids.n_rows
        if dead and dead > self.plan.tombstone_rebuild_fraction * rows:
            logger.info("rebuilding %s: %d tombstones of %d rows", self.factory, dead, rows)
            self._rebuild(self.factory, np.empty(0, np.int64), np.empty((0, self.d), np.float32))

    # ---------------------------------------------------------------- search
    def _exact(self, ids: np.ndarray) -> np.ndarray:
        """Exact vectors of live ids: from the index, or from `exact_vectors` for lossy codes."""
        if self._reranker is not None:
            return self._reranker.vectors(ids)
        if ids.shape[0] == 0:
            return np.empty((0, self.d), np.float32)
        return self._index.reconstruct_batch(ids)

    def vectors(self, ids: Any) -> np.ndarray:
        """Stored vectors of ids (exact); ProductNotFound for an id not present."""
        ids = as_ids(ids)
        present = self._present(ids)
        if not present.all():
            raise ProductNotFound(int(ids[~present][0]))
        return self._exact(ids)

    def _search_live(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search every live id: tombstones skipped, lossy codes re-ranked exactly."""
        rr = self._reranker
        kk = min(k * rr.factor if rr is not None else k, self.ntotal)
        gpu = self._gpu
        found = None
        if gpu is not None and self._ids.gpu_capable and kk <= gpu.max_k:
            found = gpu.search(self._index, xq, kk)
        D, I = found if found is not None else self._ids.search(self._index, xq, kk)  # noqa: E741
        if rr is not None:
            D, I = rr.rerank(xq, I, k)  # noqa: E741
        if D.shape[1] < k:
            pad = k - D.shape[1]
            D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.inf)
            I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)  # noqa: E741
        return D[:, :k], I[:, :k]

    def _search_subset(
        self, xq: np.ndarray, k: int, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search restricted to `ids` (selective filters)."""
        return topk(xq @ self._exact(ids).T, ids, k)

    def _search_excluding(self, xq: np.ndarray, k: int,
                          excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """A few excluded ids (typically a product's own row): search k + their number over the
        whole index and drop them, instead of copying every other vector out for an exact
        subset search. None when that would exceed max_k or a row comes back short (an
        approximate index): the subset path answers then."""
        kk = min(k + excluded.shape[0], self.ntotal)
        if kk > self.plan.max_k:
            return None
        available = self.ntotal - int(self._present(excluded).sum())
        D, I = self._search_live(xq, kk)  # noqa: E741
        keep = (I >= 0) & ~np.isin(I, excluded)
        if (keep.sum(axis=1) < min(k, available)).any():
            return None
        D, I, _ = keep_first(D, I, keep, k)  # noqa: E741
        return D, I

    def _check_k(self, k: Any) -> int:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if not 1 <= k <= self.plan.max_k:
            raise ValueError(f"k must be in [1, {self.plan.max_k}], got {k}")
        return int(k)

    def search(
        self, xq: Any, k: int, allowed: Any = None, excluded: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k-NN by inner product: D, I of shape (nq, k); I == -1 (D == -inf) pads.

        `allowed` restricts results to those ids, `excluded` removes ids. Whenever at least k
        live ids pass the filters, every row holds k results: selective filters are searched
        exactly over their subset; broad ones over-fetch, growing k until k pass. A small
        batch runs on the calling thread alone (IndexPlan.single_thread_max_queries).
        """
        xq = as_matrix(xq, self.d, "xq")
        k = self._check_k(k)
        if xq.shape[0] > self.plan.single_thread_max_queries:
            return self._search(xq, k, allowed, excluded)
        with omp_threads(1):
            return self._search(xq, k, allowed, excluded)

    def _search(
        self, xq: np.ndarray, k: int, allowed: Any, excluded: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        nq = xq.shape[0]
        if self.ntotal == 0:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        if allowed is None and excluded is None:
            D, I = self._search_live(xq, k)  # noqa: E741
            short = ((I >= 0).sum(axis=1) < min(k, self.ntotal)).nonzero()[0]
            if short.shape[0]:  # an approximate index came back short: finish those exactly
                D[short], I[short] = self._search_subset(xq[short], k, self._live)
            return D, I
        if allowed is None:
            found = self._search_excluding(xq, k, np.unique(np.asarray(excluded, np.int64)))
            if found is not None:
                return found
        subset = self._live
        if allowed is not None:
            subset = np.intersect1d(np.asarray(allowed, dtype=np.int64), subset)
        if excluded is not None:
            subset = np.setdiff1d(subset, np.asarray(excluded, dtype=np.int64))
        if subset.shape[0] <= self.plan.exact_subset_max or subset.shape[0] <= k:
            return self._search_subset(xq, k, subset)
        return overfetch(self._search_live, self._search_subset, xq, k, subset, self.ntotal,
                         self.plan.overfetch_growth)

    # ---------------------------------------------------------------- persistence
    def state(self) -> dict[str, Any]:
        """What serialize() leaves out and load needs (goes into the manifest)."""
        return {
            "factory": self.factory,
            "requested_factory": self.requested_factory,
            "kind": self._ids.kind,
            "n_at_plan": self._n_at_plan,
            **self._ids.state(),
        }

    def write(self, path: Any) -> None:
        """Write the CPU index to `path` with faiss.write_index (no copy in memory)."""
        import faiss

        if self._index is None:
            raise ValueError("nothing to write: the index has no vectors yet")
        faiss.write_index(self._index, str(path))

    def serialize(self) -> np.ndarray:
        """The CPU index as FAISS bytes (uint8 array); GPU replicas are never saved."""
        import faiss

        if self._index is None:
            raise ValueError("nothing to serialize: the index has no vectors yet")
        return faiss.serialize_index(self._index)

    @classmethod
    def deserialize(
        cls, data: np.ndarray, d: int, state: dict[str, Any], **kwargs: Any
    ) -> VectorIndex:
        """Inverse of serialize(); CorruptIndexError when the bytes are not this index."""
        import faiss

        return cls._load(
            lambda: faiss.deserialize_index(np.asarray(data, np.uint8)), d, state, **kwargs
        )

    @classmethod
    def read(cls, path: Any, d: int, state: dict[str, Any], **kwargs: Any) -> VectorIndex:
        """Inverse of write(); CorruptIndexError when the file is not this index."""
        import faiss

        return cls._load(lambda: faiss.read_index(str(path)), d, state, **kwargs)

    @classmethod
    def _load(
        cls, load: Callable[[], Any], d: int, state: dict[str, Any], **kwargs: Any
    ) -> VectorIndex:
        vi = cls(d, factory="auto", **kwargs)
        try:
            vi._restore(load(), state)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CorruptIndexError(f"not a readable FAISS index of this store: {e}") from e
        return vi

    def _restore(self, index: Any, state: dict[str, Any]) -> None:
        """Adopt a FAISS index read back from disk, with the state() saved beside it."""
        self.requested_factory = state["requested_factory"]
        self._make(state["factory"])
        if index.d != self.d:
            raise CorruptIndexError(f"FAISS index has d={index.d}, expected {self.d}")
        self._index = index
        self._live = np.unique(self._ids.restore(index, state))
        self._n_at_plan = int(state.get("n_at_plan", self.ntotal))
