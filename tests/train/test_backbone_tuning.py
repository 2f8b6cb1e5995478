"""train.backbone_tuning: the image backbone's last blocks train on the catalog, travel in the
bundle, and serve: the API embeds with the tuned model, the baselines stay on the packaged one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from train.backbone_tuning import skip_reason
from train.config import BackboneTuning, ConfigError, TrainConfig

TUNING = BackboneTuning(min_train_products=1, epochs=2, calibration_images=8)


@pytest.fixture(scope="module")
def tuned_run(sample_catalog, tiny_text_backbone_dir, tmp_path_factory):
    """One pipeline run on the sample catalog with the packaged Lite0 (+colour) tuned from
    block 13 (2 epochs) and a tiny text backbone."""
    import torch

    from train.pipeline import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite shares 2 cores; restored below
    out = tmp_path_factory.mktemp("tuned_run")
    cfg = TrainConfig(catalog=str(sample_catalog), out=str(out / "model"),
                      cache_dir=str(out / "cache"), image_backbone="efficientnet-lite0+colour",
                      text_backbone=f"hf:{tiny_text_backbone_dir}", backbone_tuning=TUNING,
                      embed_dim=16, image_towers=((32,),), text_tower=(32,), batch_size=32,
                      max_epochs=2, min_per_class=1, tfidf_max_features=200, num_workers=0,
                      device="cpu", index_factory="Flat", photo_visual_dims=(16,))
    try:
        return cfg, Path(run(cfg))
    finally:
        torch.set_num_threads(threads)


def test_skip_reasons():
    cfg = TrainConfig(backbone_tuning=BackboneTuning(min_train_products=100))
    assert skip_reason(cfg, 100, streamed=False) == ""
    assert "min_train_products" in skip_reason(cfg, 99, streamed=False)
    assert "streams" in skip_reason(cfg, 100, streamed=True)
    assert "distributed" in skip_reason(cfg, 100, streamed=False, parallel=True)
    off = TrainConfig(backbone_tuning=BackboneTuning(first_block=0))
    assert "first_block=0" in skip_reason(off, 10**6, streamed=False)
    hf = TrainConfig(image_backbone="hf:/some/vit+colour")
    assert "not an EfficientNet" in skip_reason(hf, 10**6, streamed=False)
    with pytest.raises(ConfigError):
        BackboneTuning(epochs=0)


def test_the_bundle_carries_the_tail_and_serves_with_it(tuned_run):
    from embedder.backbone_tail import TAIL_RANGES_FILE, TAIL_WEIGHTS_FILE
    from embedder.bundle import Bundle

    cfg, out = tuned_run
    bundle = Bundle.load(out / "bundle")
    assert bundle.config.image_backbone.tuned_from == 13
    assert (out / "bundle" / TAIL_WEIGHTS_FILE).is_file()
    assert (out / "bundle" / TAIL_RANGES_FILE).is_file()  # int8 on this CPU: ranges fit
    manifest = json.loads((out / "index" / "manifest.json").read_text())
    assert manifest["bundle_fingerprint"] == bundle.fingerprint
    image = bundle.backbone("image")
    assert image.tail_digest == bundle.image_tail.weights_digest
    assert image.engine == "onnx-int8"
    assert image.quantisation == "static-" + bundle.image_tail.ranges_digest
    report = json.loads((out / "bundle" / "report.json").read_text())
    tuning = report["training"]["backbone_tuning"]
    assert tuning["first_block"] == 13 and len(tuning["curve"]) == 2
    assert 0 <= tuning["best_epoch"] < 2


def test_baselines_run_on_the_packaged_backbone(tuned_run):
    """The frozen-backbone baselines of a tuned bundle still read the packaged model's
    features: re-evaluating them from the packaged features gives the report's numbers."""
    from embedder.bundle import Bundle
    from train.data import bundle_data
    from train.evaluate import _retrieval_classes, knn_baseline

    cfg, out = tuned_run
    bundle = Bundle.load(out / "bundle")
    eval_cfg, data = bundle_data(bundle, cfg.catalog, cache_dir=cfg.cache_dir)
    test = data.test
    assert test.frozen_image is not None
    assert not np.allclose(test.image[:, :1280], test.frozen_image[:, :1280], atol=1e-3)
    assert np.array_equal(test.image[:, 1280:], test.frozen_image[:, 1280:])  # colour: same
    report = json.loads((out / "bundle" / "report.json").read_text())
    leaf = bundle.leaf_head
    classes = len(bundle.labels[leaf])
    knn = knn_baseline(data.train, test, leaf, classes, eval_cfg.eval_config(),
                       _retrieval_classes(test, leaf))
    reported = report["evaluation"]["baselines"]["knn"]
    assert knn["top1"] == pytest.approx(reported["top1"])
    assert knn["retrieval"] == reported["retrieval"]


def test_api_embeds_photos_with_the_tuned_backbone(tuned_run, tmp_path):
    """A product's own photo through POST /v1/search comes back first: the index rows and the
    query went through the same tuned model."""
    import shutil

    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings
    from embedder.catalog import read_catalog

    cfg, out = tuned_run
    model = shutil.copytree(out, tmp_path / "model")
    products = read_catalog(cfg.catalog).products[:6]
    with TestClient(create_app(Settings(model_dir=model, api_key="k" * 20))) as client:
        health = client.get("/healthz").json()
        assert health["model"]["image_engine"] == "onnx-int8"
        for product in products:
            r = client.post("/v1/search", data={"k": "3"},
                            files={"image": ("p.jpg", Path(product.image_path).read_bytes())})
            assert r.status_code == 200, r.text
            assert r.json()["hits"][0]["id"] == product.id


def test_build_index_embeds_with_the_bundles_tuned_backbone(tuned_run, tmp_path):
    """The nightly rebuild (`train.huse build-index`) must give the rows the training run
    indexed: the tuned backbone's, not the packaged one's."""
    from index.store import ProductIndex
    from train.build_index import build_index

    cfg, out = tuned_run
    rebuilt = build_index(out / "bundle", cfg.catalog, tmp_path / "idx", factory="Flat",
                          cache_dir=cfg.cache_dir)
    with ProductIndex.open(out / "index") as trained, ProductIndex.open(rebuilt) as again:
        ids, vectors = trained.live_vectors()
        ids_again, vectors_again = again.live_vectors()
    order = np.argsort(ids_again)
    assert sorted(ids) == list(np.array(ids_again)[order])
    assert np.allclose(vectors[np.argsort(ids)], vectors_again[order], atol=1e-5)
