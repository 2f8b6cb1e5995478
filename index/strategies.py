"""The parts a VectorIndex is composed of, chosen by its plan from what the FAISS index can do.

Id handling and deletion (one per FAISS family, `ids_for(base)`):
- `MappedIds` ("idmap"): IndexIDMap2 over an index that can remove rows (Flat, flat codes);
- `NativeIds` ("ivf"): the IVF index's own ids, with a hash-table direct map for remove and
  reconstruct;
- `Tombstones` ("tomb"): IndexIDMap2 over an index that cannot remove (HNSW): removed rows are
  skipped at search and the index is rebuilt when they pile up.
Re-ranking: `ExactReranker` re-scores lossy codes (PQ) with exact vectors from the caller.
GPU: `GpuReplica`, a replica of the CPU index rebuilt lazily after writes.
Filtered search of a broad filter: `overfetch`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

ExactVectors = Callable[[np.ndarray], np.ndarray]
"""Returns the exact float32 vectors (n, d) of int64 ids (n,), in order (for re-ranking)."""

logger = logging.getLogger(__name__)


class MappedIds:
    """Caller ids kept by an IndexIDMap2; removal removes the rows."""

    kind = "idmap"
    gpu_capable = True  # searches may go to a GPU replica

    def wrap(self, base: Any) -> Any:
        import faiss

        return faiss.IndexIDMap2(base)

    def codes(self, index: Any) -> Any:
        """The FAISS index that stores the codes (inside any id map)."""
        import faiss

        return faiss.downcast_index(index.index)

    @property
    def n_tombstones(self) -> int:
        return 0

    @property
    def n_rows(self) -> int:
        return 0

    def added(self, ids: np.ndarray) -> None:
        """Rows were appended for `ids`."""

    def remove(self, index: Any, ids: np.ndarray) -> None:
        import faiss

        index.remove_ids(faiss.IDSelectorArray(ids))

    def search(self, index: Any, xq: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        return index.search(xq, kk)

    def state(self) -> dict[str, Any]:
        return {"tombstone_rows": []}

    def restore(self, index: Any, state: dict[str, Any]) -> np.ndarray:
        """Ids held by a freshly read index (live ones only)."""
        import faiss

        return faiss.vector_to_array(index.id_map).astype(np.int64)


class NativeIds(MappedIds):
    """An IVF index keeps ids itself; a hash-table direct map serves remove/reconstruct."""

    kind = "ivf"

    def wrap(self, base: Any) -> Any:
        import faiss

        base.set_direct_map_type(faiss.DirectMap.Hashtable)
        return base

    def codes(self, index: Any) -> Any:
        return index

    def restore(self, index: Any, state: dict[str, Any]) -> np.ndarray:
        import faiss

        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        lists = []
        for no in range(index.nlist):
            size = index.invlists.list_size(no)
            if size:
                lists.append(faiss.rev_swig_ptr(index.invlists.get_ids(no), size).copy())
        return np.concatenate(lists) if lists else np.empty(0, np.int64)


HNSW_EF_PER_K = 2  # an HNSW search of k results runs at efSearch >= 2k whatever the setting


def served_ef_search(ef_search: int, k: int) -> int:
    """The efSearch an HNSW search of k results runs at (HNSW_EF_PER_K): what benchmarks
    must search at to measure what the service serves."""
    return max(ef_search, HNSW_EF_PER_K * k)


class Tombstones(MappedIds):
    """For indexes that cannot remove rows (HNSW): removed rows become tombstones, skipped while
    searching (an IDSelectorBitmap over live rows); HNSW searches at served_ef_search."""

    kind = "tomb"
    gpu_capable = False  # HNSW always searches on CPU

    def __init__(self) -> None:
        self.row_ids = np.empty(0, dtype=np.int64)  # row -> id
        self.dead = np.empty(0, dtype=bool)  # row is a tombstone

    @property
    def n_tombstones(self) -> int:
        return int(self.dead.sum())

    @property
    def n_rows(self) -> int:
        return int(self.dead.shape[0])

    def added(self, ids: np.ndarray) -> None:
        self.row_ids = np.concatenate([self.row_ids, ids])
        self.dead = np.concatenate([self.dead, np.zeros(ids.shape[0], bool)])

    def remove(self, index: Any, ids: np.ndarray) -> None:
        rows = np.flatnonzero(np.isin(self.row_ids, ids) & ~self.dead)
        self.dead[rows] = True

    def _params(self, base: Any, kk: int) -> Any:
        import faiss

        params = faiss.SearchParameters()
        if isinstance(base, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(efSearch=served_ef_search(base.hnsw.efSearch, kk))
        if self.n_tombstones:
            bits = np.packbits(~self.dead, bitorder="little")
            sel = faiss.IDSelectorBitmap(self.dead.shape[0], faiss.swig_ptr(bits))
            params.sel = sel
            params.referenced_objects = [bits, sel]  # FAISS holds raw pointers to both
        return params

    def search(self, index: Any, xq: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        D, rows = index.index.search(xq, kk, params=self._params(self.codes(index), kk))
        return D, np.where(rows >= 0, self.row_ids[np.maximum(rows, 0)], -1)

    def state(self) -> dict[str, Any]:
        return {"tombstone_rows": np.flatnonzero(self.dead).tolist()}

    def restore(self, index: Any, state: dict[str, Any]) -> np.ndarray:
        self.row_ids = super().restore(index, state)
        self.dead = np.zeros(self.row_ids.shape[0], bool)
        self.dead[np.asarray(state["tombstone_rows"], dtype=np.int64)] = True
        return self.row_ids[~self.dead]


def ids_for(base: Any) -> MappedIds:
    """The id strategy a FAISS index needs: native (IVF), mapped (removable) or tombstones."""
    import faiss

    if isinstance(base, faiss.IndexIVF):
        return NativeIds()
    return MappedIds() if isinstance(base, faiss.IndexFlatCodes) else Tombstones()


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def is_lossy(base: Any) -> bool:
    """True when the FAISS index stores compressed codes (results need exact re-ranking).
    fp16 scalar codes are not: unit vectors' inner products move by < 1e-3 (IndexPlan's
    half_precision_min_d), and re-ranking would read k x rerank_factor vectors from disk."""
    import faiss

    if isinstance(base, (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexHNSWFlat)):
        return False
    sq = getattr(faiss.downcast_index(base), "sq", None)
    return sq is None or sq.qtype != faiss.ScalarQuantizer.QT_fp16


class ExactReranker:
    """Lossy codes rank candidates; their exact vectors (from the caller) order the top k."""

    def __init__(self, source: ExactVectors, factor: int) -> None:
        self.source = source
        self.factor = factor  # candidates fetched per result

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.source(ids), dtype=np.float32)

    def rerank(self, xq: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: E741
        cand = np.unique(I[I >= 0])
        xb = self.vectors(cand)
        pos = np.searchsorted(cand, np.maximum(I, 0))
        scores = np.full(I.shape, -np.inf, dtype=np.float32)
        if cand.shape[0]:
            for q in range(I.shape[0]):  # row by row: (nq, k', d) at once can be huge
                scores[q] = xb[pos[q]] @ xq[q]
        scores = np.where(I >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return (
            np.take_along_axis(scores, order, 1).astype(np.float32),
            np.take_along_axis(I, order, 1),
        )


class GpuReplica:
    """A GPU copy of the CPU index for searches, rebuilt on the first search after a write.
    GPU indexes are not thread-safe (FAISS wiki), so searches hold a lock. An index FAISS cannot
    copy to the GPU (FAISS versions differ on IVF indexes whose coarse quantizer is not flat) is
    searched on the CPU: one replica per index type."""

    def __init__(self, fp16: bool, max_k: int) -> None:
        self.fp16 = fp16
        self.max_k = max_k  # FAISS GPU k-selection limit; larger k searches on CPU
        self._lock = threading.Lock()
        self._res: Any = None
        self._replica: Any = None
        self.unsupported: str | None = None  # why this index stays on the CPU

    def invalidate(self) -> None:
        self._replica = None

    def search(self, index: Any, xq: np.ndarray, kk: int
               ) -> tuple[np.ndarray, np.ndarray] | None:
        """Search the GPU copy of `index` (made on first use); None where FAISS cannot copy it
        (the caller searches on the CPU)."""
        import faiss

        with self._lock:
            if self._replica is None and self.unsupported is None:
                if self._res is None:
                    self._res = faiss.StandardGpuResources()
                co = faiss.GpuClonerOptions()
                co.useFloat16 = self.fp16
                try:
                    self._replica = faiss.index_cpu_to_gpu(self._res, 0, index, co)
                except RuntimeError as e:  # FAISS's C++ exceptions arrive as RuntimeError
                    self.unsupported = str(e).splitlines()[0] if str(e) else type(e).__name__
                    logger.warning("FAISS cannot copy this index to the GPU (%s): searching "
                                   "on the CPU", self.unsupported)
            return None if self._replica is None else self._replica.search(xq, kk)


Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def keep_first(D: np.ndarray, I: np.ndarray, keep: np.ndarray,  # noqa: E741
               k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first k kept results of each row, in rank order, then -inf / -1 padding; also the
    kept mask of what is returned."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    keep = np.take_along_axis(keep, order, 1)
    D = np.where(keep, np.take_along_axis(D, order, 1), -np.inf).astype(np.float32)
    I = np.where(keep, np.take_along_axis(I, order, 1), -1)  # noqa: E741
    return D, I, keep


def overfetch(search_live: Search, search_subset: Callable[..., tuple[np.ndarray, np.ndarray]],
              xq: np.ndarray, k: int, subset: np.ndarray, ntotal: int,
              growth: int) -> tuple[np.ndarray, np.ndarray]:
    """Filtered search of a broad filter: search every live id, keep those in `subset`
    (sorted), grow k' by `growth` until k pass or all were searched; rows an approximate
    index still left short are finished exactly over the subset."""
    kk = min(ntotal, math.ceil(1.5 * k * ntotal / subset.shape[0]))
    while True:
        D, I = search_live(xq, kk)  # noqa: E741
        pos = np.minimum(np.searchsorted(subset, I), subset.shape[0] - 1)
        keep = (I >= 0) & (subset[pos] == I)
        if (keep.sum(axis=1) >= k).all() or kk >= ntotal:
            break
        kk = min(ntotal, kk * growth)
    D, I, keep = keep_first(D, I, keep, k)  # noqa: E741
    short = (keep.sum(axis=1) < k).nonzero()[0]
    if short.shape[0]:
        D[short], I[short] = search_subset(xq[short], k, subset)
    return D, I
