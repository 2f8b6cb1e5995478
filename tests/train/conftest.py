"""Fixtures of the train tests: synthetic features with a learnable class structure."""

import numpy as np
import pytest

from train.config import TrainConfig
from train.loop import TrainData


@pytest.fixture()
def synthetic_data() -> TrainData:
    """3 classes, 90 products; image and text features are noisy class prototypes."""
    rng = np.random.default_rng(0)
    n, n_cls = 90, 3
    y = np.arange(n) % n_cls
    protos_i, protos_t = rng.normal(size=(n_cls, 12)), rng.normal(size=(n_cls, 8))
    image = (protos_i[y] + 0.8 * rng.normal(size=(n, 12))).astype(np.float32)
    text = (protos_t[y] + 0.8 * rng.normal(size=(n, 8))).astype(np.float32)
    A = np.array([[0, 0.3, 0.8], [0.3, 0, 0.8], [0.8, 0.8, 0]], np.float32)
    return TrainData(image=image, text=text,
                     y={"level1": (y > 1).astype(np.int64), "level2": y.astype(np.int64)},
                     train_idx=np.arange(0, 70), val_idx=np.arange(70, 90),
                     leaf_head="level2", A=A)


@pytest.fixture()
def tiny_cfg() -> TrainConfig:
    return TrainConfig(embed_dim=8, image_tower=(16, 16), text_tower=(16,), dropout=0.1,
                       batch_size=32, max_epochs=4, patience=10, lr=3e-3, device="cpu")


@pytest.fixture(scope="session")
def trained_run(sample_catalog, tiny_image_backbone_dir, tiny_text_backbone_dir,
                tmp_path_factory):
    """One short end-to-end pipeline run on the sample catalog with tiny backbones."""
    from train.huse import run

    out = tmp_path_factory.mktemp("huse_run")
    cfg = TrainConfig(catalog=str(sample_catalog), out=str(out / "out"),
                      cache_dir=str(out / "cache"),
                      image_backbone=f"hf:{tiny_image_backbone_dir}",
                      text_backbone=f"hf:{tiny_text_backbone_dir}",
                      embed_dim=16, image_tower=(32, 32), text_tower=(32,), batch_size=32,
                      max_epochs=3, min_per_class=2, attribute_heads=("gender",),
                      tfidf_max_features=200, num_workers=0, device="cpu", index_factory="Flat")
    return cfg, run(cfg)
