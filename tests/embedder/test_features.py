"""embedder.features: the cache answers hits, computes only misses, and survives interruption."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from embedder.catalog import Product, read_catalog
from embedder.errors import CatalogError, FeatureCacheError, ImageError
from embedder.features import (
    FeatureCache,
    default_cache_dir,
    extract_image_features,
    extract_text_features,
    model_calls_for,
    text_key,
    tune_malloc,
)
from embedder.images import load_image


@pytest.fixture(scope="module")
def products(sample_catalog: Path) -> list[Product]:
    return read_catalog(sample_catalog).products[:24]


class Counting:
    """Wraps a backbone method, counting rows it sees; can fail after `fail_after` calls."""

    def __init__(self, fn, fail_after: int | None = None) -> None:
        self.fn, self.fail_after, self.calls, self.rows = fn, fail_after, 0, 0

    def __call__(self, batch, *args, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.rows += len(batch)
        return self.fn(batch, *args, **kwargs)


def test_cache_round_trip_persists_and_separates_namespaces(tmp_path: Path) -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    with FeatureCache(tmp_path) as cache:
        cache.put("bb-a|image|dim=4", ["k1", "k2", "k3"], vectors)
        assert cache.count("bb-a|image|dim=4") == 3
        assert cache.get("bb-b|image|dim=4", 4, ["k1"]) == {}
    reopened = FeatureCache(tmp_path)
    found = reopened.get("bb-a|image|dim=4", 4, ["k3", "nope", "k1", "k1"])
    assert sorted(found) == ["k1", "k3"]
    assert np.array_equal(found["k3"], vectors[2])
    with pytest.raises(FeatureCacheError, match=r"shape \(4,\), want \(5,\)"):
        reopened.get("bb-a|image|dim=4", 5, ["k1"])
    with pytest.raises(ValueError, match=r"2 keys but vectors of shape \(3, 4\)"):
        reopened.put("bb-a|image|dim=4", ["x", "y"], vectors)
    assert reopened.path_for("bb-a|image|dim=4") != reopened.path_for("bb-a|image|dim=8")


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HUSE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HUSE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "huse" / "features"


def test_image_features_hit_miss_and_added_product(
    tmp_path: Path, products, tiny_image_backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FeatureCache(tmp_path)
    counter = Counting(tiny_image_backbone.forward_pixels)
    monkeypatch.setattr(tiny_image_backbone, "forward_pixels", counter)
    first = extract_image_features(
        products[:20], tiny_image_backbone, cache, batch_size=8, num_workers=0
    )
    assert first.shape == (20, 32) and first.dtype == np.float32
    assert counter.rows == 20
    direct = tiny_image_backbone.encode([load_image(p.image_path) for p in products[:3]])
    assert np.allclose(first[:3], direct, atol=1e-5)

    counter.rows = 0
    second = extract_image_features(products[:20], tiny_image_backbone, cache, num_workers=0)
    assert counter.rows == 0  # everything cached
    assert np.array_equal(first, second)

    grown = extract_image_features(products[:21], tiny_image_backbone, cache, num_workers=0)
    assert counter.rows == 1  # only the added product
    assert np.array_equal(grown[:20], first)
    assert extract_image_features([], tiny_image_backbone, cache).shape == (0, 32)


def test_duplicate_images_are_computed_once(
    tmp_path: Path, products, tiny_image_backbone, monkeypatch
) -> None:
    counter = Counting(tiny_image_backbone.forward_pixels)
    monkeypatch.setattr(tiny_image_backbone, "forward_pixels", counter)
    twins = [products[0], dataclasses.replace(products[0], id="twin"), products[1]]
    out = extract_image_features(twins, tiny_image_backbone, FeatureCache(tmp_path), num_workers=0)
    assert counter.rows == 2
    assert np.array_equal(out[0], out[1]) and not np.array_equal(out[0], out[2])


def test_interrupted_run_resumes(
    tmp_path: Path, products, tiny_image_backbone, monkeypatch
) -> None:
    cache = FeatureCache(tmp_path)
    original = tiny_image_backbone.forward_pixels
    monkeypatch.setattr(tiny_image_backbone, "forward_pixels", Counting(original, fail_after=2))
    with pytest.raises(KeyboardInterrupt):
        extract_image_features(products, tiny_image_backbone, cache, batch_size=5, num_workers=0)
    assert cache.count(tiny_image_backbone.cache_namespace) == 10  # two batches committed

    resumed = Counting(original)
    monkeypatch.setattr(tiny_image_backbone, "forward_pixels", resumed)
    out = extract_image_features(products, tiny_image_backbone, cache, batch_size=5, num_workers=0)
    assert resumed.rows == len(products) - 10
    fresh = extract_image_features(
        products, tiny_image_backbone, FeatureCache(tmp_path / "fresh"), num_workers=0
    )
    assert np.allclose(out, fresh, atol=1e-6)


def test_dataloader_workers_give_the_same_features(
    tmp_path: Path, products, tiny_image_backbone
) -> None:
    serial = extract_image_features(
        products[:6], tiny_image_backbone, FeatureCache(tmp_path / "a"), batch_size=4, num_workers=0
    )
    parallel = extract_image_features(
        products[:6], tiny_image_backbone, FeatureCache(tmp_path / "b"), batch_size=4, num_workers=2
    )
    assert np.allclose(serial, parallel, atol=1e-6)


def test_image_changed_since_catalog_read_is_an_error(
    tmp_path: Path, products, tiny_image_backbone
) -> None:
    moved = tmp_path / "changed.jpg"
    shutil.copy(products[1].image_path, moved)
    stale = dataclasses.replace(products[0], image_path=moved)  # hash of product 0, bytes of 1
    with pytest.raises(CatalogError, match="changed since the catalog was read"):
        extract_image_features([stale], tiny_image_backbone, FeatureCache(tmp_path), num_workers=0)


@pytest.fixture(scope="module")
def lite0_engines() -> dict:
    import torch

    from embedder.backbones import load_backbone

    torch.set_num_threads(1)  # the suite shares 2 cores
    return {e: load_backbone("efficientnet-lite0", device="cpu", engine=e)
            for e in ("torch", "onnx")}


def test_onnx_extraction_decodes_on_threads_and_equals_torch(
    tmp_path: Path, products, lite0_engines, monkeypatch
) -> None:
    """The ONNX path (decode threads, reused buffer, one model call at a time) gives the torch
    DataLoader path's features, in catalog order, over a last batch that is not full."""
    onnx_bb = lite0_engines["onnx"]
    batches = Counting(onnx_bb.forward_pixels)
    monkeypatch.setattr(onnx_bb, "forward_pixels", batches)
    got = extract_image_features(products[:11], onnx_bb, FeatureCache(tmp_path / "onnx"),
                                 batch_size=4, num_workers=2, model_calls=1)
    assert (batches.calls, batches.rows) == (3, 11)
    expected = extract_image_features(products[:11], lite0_engines["torch"],
                                      FeatureCache(tmp_path / "torch"), batch_size=4,
                                      num_workers=0)
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected,
                                                                                   axis=1)
    assert cosine.min() > 1 - 1e-4


def test_onnx_extraction_runs_single_threaded_calls_side_by_side(
    tmp_path: Path, products, lite0_engines, monkeypatch
) -> None:
    """model_calls > 1: that many calls at once on a one-thread session, each batch's pixels
    kept intact while its call runs (a ring of buffers), features equal to one call at a time
    and in catalog order."""
    onnx_bb = lite0_engines["onnx"]
    one_at_a_time = extract_image_features(products[:11], onnx_bb, FeatureCache(tmp_path / "a"),
                                           batch_size=2, num_workers=2, model_calls=1)
    runner = onnx_bb.single_threaded()
    assert runner is onnx_bb.single_threaded() and runner is not onnx_bb
    assert runner.model.get_session_options().intra_op_num_threads == 1
    running, most, lock = [0], [0], threading.Lock()
    forward = runner.forward_pixels

    def slow_forward(pixels):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)  # the next batches are decoded into the ring meanwhile
        try:
            return forward(pixels)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(runner, "forward_pixels", slow_forward)
    side_by_side = extract_image_features(products[:11], onnx_bb, FeatureCache(tmp_path / "b"),
                                          batch_size=2, num_workers=2, model_calls=3)
    assert most[0] == 3
    np.testing.assert_allclose(side_by_side, one_at_a_time, rtol=0, atol=1e-5)


def test_model_calls_are_one_per_core_for_onnx_and_one_for_torch(lite0_engines) -> None:
    assert model_calls_for(lite0_engines["onnx"], 0) == (os.cpu_count() or 1)
    assert model_calls_for(lite0_engines["onnx"], 3) == 3
    assert model_calls_for(lite0_engines["torch"], 0) == 1
    assert lite0_engines["torch"].single_threaded() is lite0_engines["torch"]


def test_onnx_extraction_reports_decode_errors_and_changes(
    tmp_path: Path, products, lite0_engines
) -> None:
    moved = tmp_path / "changed.jpg"
    shutil.copy(products[1].image_path, moved)
    stale = dataclasses.replace(products[0], image_path=moved)
    with pytest.raises(CatalogError, match="changed since the catalog was read"):
        extract_image_features([products[2], stale], lite0_engines["onnx"],
                               FeatureCache(tmp_path), batch_size=4, num_workers=2)
    gone = dataclasses.replace(products[3], image_path=tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="missing_file"):
        extract_image_features([gone], lite0_engines["onnx"], FeatureCache(tmp_path / "b"),
                               num_workers=2)


def test_tune_malloc_sets_glibc_thresholds(monkeypatch) -> None:
    assert tune_malloc() is True  # glibc here
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert tune_malloc() is False  # the user's choice wins


def test_text_features_cached_and_aligned(tmp_path: Path, tiny_text_backbone, monkeypatch) -> None:
    cache = FeatureCache(tmp_path)
    counter = Counting(tiny_text_backbone.encode)
    monkeypatch.setattr(tiny_text_backbone, "encode", counter)
    titles = ["red shirt", "blue jeans for men", "red shirt", "mug"]
    out = extract_text_features(titles, tiny_text_backbone, cache, batch_size=2)
    assert out.shape == (4, 32) and counter.rows == 3
    assert np.array_equal(out[0], out[2])
    assert np.allclose(out[1], counter.fn(["blue jeans for men"])[0], atol=1e-5)
    counter.rows = 0
    again = extract_text_features(["mug", "red shirt", "pink skirt"], tiny_text_backbone, cache)
    assert counter.rows == 1
    assert np.array_equal(again[0], out[3])
    db = sqlite3.connect(cache.path_for(tiny_text_backbone.cache_namespace))
    keys = {k for (k,) in db.execute("SELECT key FROM vectors")}
    assert text_key("pink skirt") in keys and len(keys) == 4
    assert extract_text_features([], tiny_text_backbone, cache).shape == (0, 32)


def test_wrong_backbone_kind_is_a_type_error(
    tmp_path: Path, products, tiny_image_backbone, tiny_text_backbone
) -> None:
    with pytest.raises(TypeError, match="needs a ImageBackbone"):
        extract_image_features(products[:1], tiny_text_backbone, FeatureCache(tmp_path))
    with pytest.raises(TypeError, match="needs a TextBackbone"):
        extract_text_features(["x"], tiny_image_backbone, FeatureCache(tmp_path))


def test_cache_is_usable_from_several_threads(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache = FeatureCache(tmp_path)

    def write_then_read(i: int) -> bool:
        cache.put("ns", [f"k{i}"], np.full((1, 3), i, dtype=np.float32))
        return float(cache.get("ns", 3, [f"k{i}"])[f"k{i}"][0]) == i

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(write_then_read, range(40)))
    assert cache.count("ns") == 40
