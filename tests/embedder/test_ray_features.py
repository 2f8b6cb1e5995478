"""Ray Data batch embedding (`pytest -k ray`): a local Ray cluster embeds 200 products into
feature shards equal to the local path's features within 1e-5, resumes without recomputing what
is written, and fills the feature cache so a local run afterwards computes nothing."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from embedder.catalog import read_catalog
from embedder.features import FeatureCache, extract_image_features, extract_text_features
from embedder.shards import FeatureShards

if importlib.util.find_spec("ray") is None:  # not imported here: see embedder.ray_features
    pytest.skip("the Ray path needs the 'scale' extra", allow_module_level=True)

N_PRODUCTS = 200


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster (127.0.0.1, no usage stats) for the module: start-up costs seconds."""
    from embedder.ray_features import _ray_init

    assert _ray_init(None)
    import ray

    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from train.sample_catalog import write_sample_catalog

    return write_sample_catalog(tmp_path_factory.mktemp("ray_catalog"), N_PRODUCTS, seed=3)


@pytest.fixture(scope="module")
def products(catalog):
    return read_catalog(catalog).products


def test_ray_features_equal_local_resume_and_fill_the_cache(
    ray_cluster, catalog, products, tiny_image_backbone, tiny_text_backbone, tmp_path, monkeypatch
):
    from embedder.ray_features import RayFeaturesConfig, extract_features_ray
    from train.huse import main

    titles = [p.title for p in products]
    with FeatureCache(tmp_path / "local_cache") as cache:
        image = extract_image_features(products, tiny_image_backbone, cache, num_workers=0)
        text = extract_text_features(titles, tiny_text_backbone, cache)

    out, config = tmp_path / "shards", RayFeaturesConfig(shard_size=64)
    specs = (tiny_image_backbone.spec, tiny_text_backbone.spec)
    cli = [
        "features",
        "--catalog",
        str(catalog),
        "--engine",
        "ray",
        "--no-progress",
        "--out-shards",
        str(out),
        "--cache-dir",
        str(tmp_path / "ray_cache"),
        "--set",
        f"image_backbone={specs[0]!r}",
        "--set",
        f"text_backbone={specs[1]!r}",
        "--set",
        "device='cpu'",
        "--set",
        f"streaming.shard_size={config.shard_size}",
    ]
    assert main(cli) == 0
    shards = FeatureShards(out)
    got = shards.arrays()
    assert len(shards) == N_PRODUCTS and len(shards.files) == 4  # 64 + 64 + 64 + 8
    assert got.ids == [p.id for p in products]
    np.testing.assert_allclose(got.image, image, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.text, text, atol=1e-5, rtol=0)

    # the library call resumes what the CLI wrote
    lost = shards.files[2]
    lost.unlink()  # an interrupted run: one shard never written
    kept = {f: f.stat().st_mtime_ns for f in shards.files if f != lost}
    with FeatureCache(tmp_path / "ray_cache") as cache:
        again = extract_features_ray(products, *specs, out, cache, config)
    assert {f: f.stat().st_mtime_ns for f in kept} == kept and lost.is_file()
    np.testing.assert_array_equal(again.arrays().image, got.image)

    def no_compute(*args, **kwargs):
        raise AssertionError("the local run should find every feature in the cache")

    monkeypatch.setattr(tiny_image_backbone, "forward_pixels", no_compute)
    monkeypatch.setattr(tiny_text_backbone, "_encode_batch", no_compute)
    with FeatureCache(tmp_path / "ray_cache") as cache:
        np.testing.assert_array_equal(
            extract_image_features(products, tiny_image_backbone, cache, num_workers=0), got.image
        )
        np.testing.assert_array_equal(
            extract_text_features(titles, tiny_text_backbone, cache), got.text
        )
    assert FeatureShards(out).manifest["image_backbone"]["spec"] == tiny_image_backbone.spec
