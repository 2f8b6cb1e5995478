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
