"""Batched backbone feature extraction with a persistent, content-addressed cache.

Vectors are stored per backbone namespace (spec, kind, dim, preprocessing version) keyed by the
sha256 of the content (image bytes, or the title's UTF-8), one SQLite file per namespace. Each
batch is committed in its own transaction, so an interrupted run keeps what it computed and the
next run resumes; a second run over the same catalog computes nothing.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from embedder.backbone_types import Backbone, ImageBackbone, TextBackbone
from embedder.catalog import Product
from embedder.errors import CatalogError, FeatureCacheError
from embedder.images import DEFAULT_LIMITS, ImageLimits, load_image, read_image_bytes, sha256_bytes

logger = logging.getLogger(__name__)

_SQLITE_MAX_VARS = 900  # stay under SQLite's bound-parameter limit on old builds
_PREFETCH_BATCHES = 2  # decoded batches kept ready ahead of the model
# glibc mallopt parameters and values (see tune_malloc)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum: a 32-image 224 px batch (19 MB) fits under
_TRIM_THRESHOLD_BYTES = 128 << 20


def tune_malloc() -> bool:
    """Keep large freed blocks in glibc's heap instead of unmapping them (the malloc churn trap).

    By default glibc serves blocks over a dynamic threshold with mmap and returns them with
    munmap, so each per-image array and each batch is page-faulted in afresh (about 150 minor
    faults per 600 kB image). Raising the mmap and trim thresholds lets freed blocks be reused.
    Does nothing where MALLOC_MMAP_THRESHOLD_ is set (the user chose) or libc is not glibc.
    Returns whether the thresholds were set.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    )


def default_cache_dir() -> Path:
    """$HUSE_CACHE_DIR, else ~/.cache/huse/features."""
    env = os.environ.get("HUSE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "huse" / "features"


class FeatureCache:
    """On-disk store of float32 vectors: namespace -> {content sha256 -> vector}."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self._connections: dict[str, sqlite3.Connection] = {}
        self._lock = threading.RLock()  # one cache may be shared by threads (e.g. an API)

    def path_for(self, namespace: str) -> Path:
        """One SQLite file per namespace: a readable prefix plus a hash of the full namespace."""
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", namespace.split("|")[0])[:60]
        digest = hashlib.sha256(namespace.encode()).hexdigest()[:16]
        return self.root / f"{readable}-{digest}.sqlite"

    def _db(self, namespace: str) -> sqlite3.Connection:
        db = self._connections.get(namespace)
        if db is None:
            db = sqlite3.connect(self.path_for(namespace), timeout=60, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB)")
            with db:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('namespace', ?)", (namespace,))
            stored = db.execute("SELECT value FROM meta WHERE key='namespace'").fetchone()[0]
            if stored != namespace:
                raise FeatureCacheError(f"{self.path_for(namespace)} holds namespace {stored!r}")
            self._connections[namespace] = db
        return db

    def get(self, namespace: str, dim: int, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Vectors for the keys present (missing keys are simply absent from the result)."""
        keys = list(dict.fromkeys(keys))
        rows: list[tuple[str, bytes]] = []
        with self._lock:
            db = self._db(namespace)
            for i in range(0, len(keys), _SQLITE_MAX_VARS):
                chunk = keys[i : i + _SQLITE_MAX_VARS]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key, vec FROM vectors WHERE key IN ({marks})"
                rows.extend(db.execute(query, chunk))
        found: dict[str, np.ndarray] = {}
        for key, blob in rows:
            vec = np.frombuffer(blob, dtype=np.float32)
            if vec.shape != (dim,):
                raise FeatureCacheError(
                    f"cached vector {key} in {namespace!r} has shape {vec.shape}, want ({dim},)"
                )
            found[key] = vec
        return found

    def put(self, namespace: str, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store one batch in one transaction (so a crash loses at most the current batch)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError(f"put: {len(keys)} keys but vectors of shape {vectors.shape}")
        rows = [(k, v.tobytes()) for k, v in zip(keys, vectors, strict=True)]
        with self._lock:
            db = self._db(namespace)
            with db:
                db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)

    def count(self, namespace: str) -> int:
        with self._lock:
            return self._db(namespace).execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for db in self._connections.values():
                db.close()
            self._connections.clear()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ImageDataset:
    """Map-style dataset for DataLoader workers: path -> (preprocessed tensor, sha256 of bytes)."""

    def __init__(self, paths: list[Path], preprocess: Any, limits: ImageLimits) -> None:
        self.paths, self.preprocess, self.limits = paths, preprocess, limits

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        data = read_image_bytes(self.paths[i], self.limits)
        return self.preprocess(load_image(data, self.limits)), sha256_bytes(data)


def _prefetched(fn: Callable[[Any], Any], items: Sequence[Any], workers: int,
                depth: int) -> Iterator[Any]:
    """fn(item) for each item in order, computed by `workers` threads at most `depth` ahead
    (Pillow decodes and resizes without the GIL, so this overlaps the model's run)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future] = deque()
        ahead = iter(items)
        try:
            for item in ahead:
                pending.append(pool.submit(fn, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _overlapped_batches(
    dataset: _ImageDataset, batch_size: int, workers: int, buffers: int = 1
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(pixels, sha256s) batches decoded by threads while the caller runs the model on earlier
    ones. `pixels` is a view of one of `buffers` reused arrays (in turn), so it stays valid
    until `buffers` more batches have been taken."""
    ring: list[np.ndarray] = []
    batch = 0
    shas: list[str] = []
    for pixels, sha in _prefetched(dataset.__getitem__, range(len(dataset)), workers,
                                   _PREFETCH_BATCHES * batch_size):
        if len(ring) < buffers and not shas:
            ring.append(np.empty((batch_size, *np.shape(pixels)), np.float32))
        buffer = ring[batch % buffers]
        buffer[len(shas)] = pixels
        shas.append(sha)
        if len(shas) == batch_size:
            yield buffer, shas
            shas, batch = [], batch + 1
    if shas:
        yield ring[batch % buffers][: len(shas)], shas


def _image_batches(
    dataset: _ImageDataset, backbone: ImageBackbone, batch_size: int, num_workers: int,
    buffers: int = 1,
) -> Iterable[tuple[Any, list[str]]]:
    """ONNX Runtime (CPU): decode threads + `buffers` reused batch arrays, with glibc's malloc
    tuned. torch: a DataLoader with worker processes (decode scales past one core for a GPU)."""
    if backbone.onnx:
        tune_malloc()
        return _overlapped_batches(dataset, batch_size, max(1, num_workers), buffers)
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    return ((pixels, list(got)) for pixels, got in loader)


def model_calls_for(backbone: ImageBackbone, model_calls: int) -> int:
    """How many model calls extraction runs side by side: ONNX Runtime only (`model_calls`, 0:
    one per core, each on a single-threaded session); torch always one."""
    if not backbone.onnx or backbone.session_factory is None:
        return 1
    return model_calls or os.cpu_count() or 1


def _features_in_order(
    backbone: ImageBackbone, batches: Iterable[tuple[Any, list[str]]], calls: int
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(features, sha256s) per batch, in order; with calls > 1, that many single-threaded model
    calls run at once (each batch's pixels must stay valid for `calls` batches)."""
    if calls <= 1:
        for pixels, got in batches:
            yield backbone.forward_pixels(pixels), got
        return
    runner = backbone.single_threaded()
    with ThreadPoolExecutor(max_workers=calls, thread_name_prefix="model") as pool:
        running: deque[tuple[Future, list[str]]] = deque()
        for pixels, got in batches:
            running.append((pool.submit(runner.forward_pixels, pixels), got))
            if len(running) == calls:
                future, done = running.popleft()
                yield future.result(), done
        while running:
            future, done = running.popleft()
            yield future.result(), done


def _progress(total: int, show: bool, unit: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show, unit=unit, smoothing=0.1, dynamic_ncols=True)


def _gather(found: dict[str, np.ndarray], keys: list[str], dim: int) -> np.ndarray:
    out = np.empty((len(keys), dim), np.float32)
    for i, key in enumerate(keys):
        out[i] = found[key]
    return out


def _check_kind(backbone: Backbone, kind: type, fn: str) -> None:
    if not isinstance(backbone, kind):
        raise TypeError(f"{fn} needs a {kind.__name__}, got {backbone!r}")


def encode_image_files(
    paths: Sequence[Path],
    keys: Sequence[str],
    backbone: ImageBackbone,
    batch_size: int = 32,
    num_workers: int = 2,
    limits: ImageLimits = DEFAULT_LIMITS,
    model_calls: int = 1,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Batches of (content keys, features) for image files whose sha256 must equal `keys`
    (the local path and the Ray actors both run this); CatalogError when a file changed since
    its key was taken (the features would belong to other bytes). `model_calls`: see
    model_calls_for."""
    calls = model_calls_for(backbone, model_calls)
    dataset = _ImageDataset(list(paths), backbone.preprocess, limits)
    batches = _image_batches(dataset, backbone, batch_size, num_workers, buffers=calls + 1)
    expected, done = list(keys), 0
    for vectors, got in _features_in_order(backbone, batches, calls):
        want = expected[done : done + len(got)]
        if got != want:
            pairs = enumerate(zip(want, got, strict=True))
            changed = [str(paths[done + i]) for i, (k, g) in pairs if k != g]
            raise CatalogError(f"images changed since the catalog was read: {changed[:5]}")
        yield want, vectors
        done += len(got)


def extract_image_features(
    products: Sequence[Product],
    backbone: ImageBackbone,
    cache: FeatureCache,
    batch_size: int = 32,
    num_workers: int = 2,
    show_progress: bool = False,
    limits: ImageLimits = DEFAULT_LIMITS,
    model_calls: int = 0,
) -> np.ndarray:
    """(n, dim) float32 image features aligned with `products`; only cache misses are decoded.

    `num_workers`: decode threads (ONNX Runtime engine) or DataLoader processes (torch).
    `model_calls`: ONNX Runtime calls run side by side (0: one per core; model_calls_for).
    """
    _check_kind(backbone, ImageBackbone, "extract_image_features")
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"need batch_size >= 1, num_workers >= 0; got {batch_size}, {num_workers}")
    keys = [
        p.image_sha256 or sha256_bytes(read_image_bytes(p.image_path, limits)) for p in products
    ]
    namespace = backbone.cache_namespace
    found = cache.get(namespace, backbone.dim, keys)
    todo = {k: p.image_path for k, p in zip(keys, products, strict=True) if k not in found}
    logger.info(
        "%s image features: %d products, %d distinct images, %d to compute",
        backbone.spec,
        len(keys),
        len(set(keys)),
        len(todo),
    )
    if todo:
        start = time.perf_counter()
        with _progress(len(todo), show_progress, "img") as bar:
            for want, vectors in encode_image_files(
                list(todo.values()), list(todo), backbone, batch_size, num_workers, limits,
                model_calls,
            ):
                cache.put(namespace, want, vectors)
                found.update(zip(want, vectors, strict=True))
                bar.update(len(want))
        logger.info(
            "%s: computed %d image features in %.1f s",
            backbone.spec,
            len(todo),
            time.perf_counter() - start,
        )
    return _gather(found, keys, backbone.dim)


def text_key(text: str) -> str:
    """Cache key of a text: sha256 of its UTF-8 bytes."""
    return sha256_bytes(text.encode("utf-8"))


def extract_text_features(
    titles: Sequence[str],
    backbone: TextBackbone,
    cache: FeatureCache,
    batch_size: int = 64,
    show_progress: bool = False,
) -> np.ndarray:
    """(n, dim) float32 text features aligned with `titles`; only cache misses are encoded."""
    _check_kind(backbone, TextBackbone, "extract_text_features")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = [text_key(t) for t in titles]
    namespace = backbone.cache_namespace
    found = cache.get(namespace, backbone.dim, keys)
    todo = {k: t for k, t in zip(keys, titles, strict=True) if k not in found}
    logger.info(
        "%s text features: %d titles, %d distinct, %d to compute",
        backbone.spec,
        len(keys),
        len(set(keys)),
        len(todo),
    )
    # Sort by length so each batch pads little; each batch is committed as soon as it is done.
    pending = sorted(todo, key=lambda k: len(todo[k]))
    start = time.perf_counter()
    with _progress(len(pending), show_progress, "title") as bar:
        for i in range(0, len(pending), batch_size):
            batch = pending[i : i + batch_size]
            vectors = backbone.encode([todo[k] for k in batch], batch_size=batch_size)
            cache.put(namespace, batch, vectors)
            found.update(zip(batch, vectors, strict=True))
            bar.update(len(batch))
    if pending:
        logger.info(
            "%s: computed %d text features in %.1f s",
            backbone.spec,
            len(pending),
            time.perf_counter() - start,
        )
    return _gather(found, keys, backbone.dim)
