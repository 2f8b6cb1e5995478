"""Fixtures of the train tests: synthetic features with a learnable class structure, a tiny
bundle trained on synthetic splits (shared by the evaluation and report tests), and the
session's end-to-end pipeline run (tests/conftest.py `pipeline_run`)."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from embedder.bundle import BackboneInfo, Bundle
from embedder.classify import class_centroids
from embedder.towers import HuseModel, Tower
from train.config import TrainConfig
from train.data import LabeledFeatures
from train.loop import CHECKPOINT_NAME, TrainData, train_model
from train.pipeline import CHECKPOINT_DIR

# Leaf classes: path, top-level index. The last one is rare: outside the leaf label space (-1).
LEAVES = [("Apparel > Shirts", 0), ("Apparel > Jeans", 0), ("Footwear > Sandals", 1),
          ("Footwear > Boots", 1), ("Footwear > Clogs", 1)]
RARE = 4
DI, DT = 12, 8


@pytest.fixture()
def synthetic_data() -> TrainData:
    """3 classes, 90 products; image and text features are noisy class prototypes, and each
    product's own detail shows in both (a title describes its photo), as in real catalogs."""
    rng = np.random.default_rng(0)
    n, n_cls = 90, 3
    y = np.arange(n) % n_cls
    protos_i, protos_t = rng.normal(size=(n_cls, 12)), rng.normal(size=(n_cls, 8))
    detail = rng.normal(size=(n, 4))  # per product, seen through both modalities
    to_image, to_text = rng.normal(size=(4, 12)) / 2, rng.normal(size=(4, 8)) / 2
    image = (protos_i[y] + 0.8 * (detail @ to_image + rng.normal(size=(n, 12)) / 2))
    text = (protos_t[y] + 0.8 * (detail @ to_text + rng.normal(size=(n, 8)) / 2))
    image, text = image.astype(np.float32), text.astype(np.float32)
    A = np.array([[0, 0.3, 0.8], [0.3, 0, 0.8], [0.8, 0.8, 0]], np.float32)
    return TrainData(image=image, text=text,
                     y={"level1": (y > 1).astype(np.int64), "level2": y.astype(np.int64)},
                     train_idx=np.arange(0, 70), val_idx=np.arange(70, 90),
                     leaf_head="level2", A=A)


@pytest.fixture()
def tiny_cfg() -> TrainConfig:
    return TrainConfig(embed_dim=8, image_towers=((16, 16),), text_tower=(16,), dropout=0.1,
                       batch_size=32, max_epochs=4, patience=10, lr=3e-3, device="cpu")


def _read_checkpoints(out, towers_only: bool = False) -> list[dict]:
    paths = sorted((Path(out) / CHECKPOINT_DIR).rglob(CHECKPOINT_NAME))
    return [torch.load(p, weights_only=True) for p in paths
            if not (towers_only and "-nce-" in p.parent.name)]


@pytest.fixture()
def read_checkpoints():
    """(out, towers_only=False) -> every candidate's training checkpoint under run directory
    `out` (a config with several candidates keeps one each), in name order; `towers_only`
    leaves out the alternative InfoNCE weights, which train whichever tower was chosen."""
    return _read_checkpoints


@pytest.fixture(scope="session")
def trained_run(pipeline_run):
    """(config, OUT) of the session's one end-to-end pipeline run (read-only: copy to write)."""
    return pipeline_run


@dataclass(frozen=True)
class Case:
    bundle: Bundle
    train: LabeledFeatures
    val: LabeledFeatures
    test: LabeledFeatures
    history: list[dict]
    leaves: list[str]  # the labelled leaf classes, in label order


def _split(rng: np.random.Generator, leaf: np.ndarray, protos_i, protos_t) -> LabeledFeatures:
    n = len(leaf)
    image = protos_i[leaf] + 0.9 * rng.normal(size=(n, DI))
    text = protos_t[leaf] + 0.9 * rng.normal(size=(n, DT))
    top = np.array([LEAVES[i][1] for i in leaf], dtype=np.int64)
    return LabeledFeatures(
        product_ids=[f"p{i}" for i in range(n)],
        titles=[LEAVES[i][0].split(" > ")[1] for i in leaf],
        image=image.astype(np.float32),
        text=text.astype(np.float32),
        labels={"level1": top, "level2": np.where(leaf == RARE, -1, leaf).astype(np.int64)},
        categories=[LEAVES[i][0] for i in leaf],
    )


def make_case(seed: int = 0) -> Case:
    """Seeded synthetic splits and a Bundle trained on them with the trainer's own loop."""
    rng = np.random.default_rng(seed)
    protos_i, protos_t = 2 * rng.normal(size=(5, DI)), 2 * rng.normal(size=(5, DT))
    leaf = {name: np.concatenate([np.repeat(np.arange(4), n), [RARE] * r]).astype(np.int64)
            for name, n, r in (("train", 30, 2), ("val", 6, 0), ("test", 12, 3))}
    train, val, test = (_split(rng, leaf[s], protos_i, protos_t) for s in ("train", "val", "test"))
    heads = {"level1": 2, "level2": 4}
    cfg = TrainConfig(embed_dim=8, batch_size=32, max_epochs=25, patience=25, lr=1e-2,
                      device="cpu", seed=seed)
    model = HuseModel(Tower(DI, (16,), 8, 0.0), Tower(DT, (16,), 8, 0.0), heads,
                      logit_scale=cfg.logit_scale)
    both = [train, val]
    data = TrainData(
        image=np.vstack([s.image for s in both]), text=np.vstack([s.text for s in both]),
        y={h: np.concatenate([s.labels[h] for s in both]) for h in heads},
        train_idx=np.arange(len(train)), val_idx=np.arange(len(train), len(train) + len(val)),
        leaf_head="level2", A=1 - np.eye(4, dtype=np.float32),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster on a busy 2-core machine
    try:
        history = train_model(model, data, cfg, checkpoint_dir=None).history
    finally:
        torch.set_num_threads(threads)
    leaves = [p for p, _ in LEAVES[:4]]
    labels = {"level1": ["Apparel", "Footwear"], "level2": leaves}
    trained = dict(image_backbone=BackboneInfo("synthetic-image", DI),
                   text_backbone=BackboneInfo("synthetic-text", DT), leaf_head="level2",
                   other_threshold=0.5)
    draft = Bundle.from_trained(model, labels, **trained)
    fused = draft.embed_features(train.image, train.text, train.titles)
    centroids = {h: class_centroids(fused, train.labels[h], n) for h, n in heads.items()}
    bundle = Bundle.from_trained(model, labels, **trained, centroids=centroids)
    return Case(bundle, train, val, test, history, leaves)


@pytest.fixture(scope="session")
def case() -> Case:
    """One tiny trained bundle with its synthetic splits (read-only)."""
    return make_case()
