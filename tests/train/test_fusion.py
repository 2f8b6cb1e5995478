"""train.fusion: the fused embedding leans on the modality that carries the class."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from embedder.bundle import BackboneInfo, Bundle
from embedder.towers import HuseModel, Tower
from train.config import TrainConfig
from train.fusion import PLAIN_SUM, choose_fusion_weight
from train.loop import TrainData, train_model

DI, DT, N_CLS = 12, 8, 4
GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@pytest.fixture(scope="module")
def trained():
    """A bundle trained on features where both modalities carry the class."""
    rng = np.random.default_rng(0)
    y = np.arange(160) % N_CLS
    protos_i, protos_t = 2 * rng.normal(size=(N_CLS, DI)), 2 * rng.normal(size=(N_CLS, DT))
    image = (protos_i[y] + rng.normal(size=(160, DI))).astype(np.float32)
    text = (protos_t[y] + rng.normal(size=(160, DT))).astype(np.float32)
    torch.manual_seed(0)
    model = HuseModel(Tower(DI, (16,), 8, 0.0), Tower(DT, (16,), 8, 0.0), {"level1": N_CLS},
                      logit_scale=16.0)
    data = TrainData(image=image, text=text, y={"level1": y.astype(np.int64)},
                     train_idx=np.arange(120), val_idx=np.arange(120, 160), leaf_head="level1",
                     A=1 - np.eye(N_CLS, dtype=np.float32))
    cfg = TrainConfig(embed_dim=8, batch_size=32, max_epochs=15, patience=15, lr=1e-2,
                      device="cpu")
    train_model(model, data, cfg, checkpoint_dir=None)
    bundle = Bundle.from_trained(model, {"level1": [f"c{i}" for i in range(N_CLS)]},
                                 image_backbone=BackboneInfo("synthetic-image", DI),
                                 text_backbone=BackboneInfo("synthetic-text", DT),
                                 leaf_head="level1", other_threshold=0.5)
    return bundle, image[120:], text[120:], y[120:].astype(np.int64)


def test_weight_moves_toward_the_informative_modality(trained):
    bundle, image, text, y = trained
    titles = [""] * len(y)
    # Titles that say nothing of the class (noise): the image must carry the fused vector,
    # and the reverse.
    rng = np.random.default_rng(1)
    noise_text = (3 * rng.normal(size=text.shape)).astype(np.float32)
    noise_image = (3 * rng.normal(size=image.shape)).astype(np.float32)
    blank_text = choose_fusion_weight(bundle, image, noise_text, titles, y, GRID)
    blank_image = choose_fusion_weight(bundle, noise_image, text, titles, y, GRID)
    assert blank_text.image_weight > PLAIN_SUM > blank_image.image_weight
    for choice in (blank_text, blank_image):
        scores = choice.val_top1_by_weight
        assert set(scores) == set(GRID)
        assert scores[choice.image_weight] == max(scores.values())
        assert scores[choice.image_weight] > scores[PLAIN_SUM]


def test_ties_and_empty_validation_keep_the_plain_sum(trained):
    bundle, image, text, y = trained
    titles = [""] * len(y)
    assert choose_fusion_weight(bundle, image, text, titles, np.full_like(y, -1),
                                GRID).image_weight == PLAIN_SUM
    # Informative modalities both ways: every weight classifies the easy val split perfectly.
    both = choose_fusion_weight(bundle, image, text, titles, y, GRID)
    best = max(both.val_top1_by_weight.values())
    tied = [w for w, s in both.val_top1_by_weight.items() if s == best]
    assert both.image_weight == min(tied, key=lambda w: abs(w - PLAIN_SUM))


def test_bundle_fuses_with_its_weight_and_keeps_it_on_save(trained, tmp_path):
    bundle, image, text, _ = trained
    e_img = bundle.embed_features(image_feats=image)
    e_txt = bundle.embed_features(text_feats=text)
    assert np.allclose(bundle.fuse_embeddings(e_img, e_txt, 1.0), e_img, atol=1e-6)
    assert np.allclose(bundle.fuse_embeddings(e_img, e_txt, 0.0), e_txt, atol=1e-6)
    plain = e_img + e_txt
    plain /= np.linalg.norm(plain, axis=1, keepdims=True)
    assert np.allclose(bundle.embed_features(image, text), plain, atol=1e-6)  # default 0.5
    leaning = Bundle(replace(bundle.config, fusion_image_weight=0.7), bundle.model, bundle.labels)
    leaning.save(tmp_path)
    loaded = Bundle.load(tmp_path)
    assert loaded.fusion_image_weight == 0.7 and loaded.fingerprint == leaning.fingerprint
    assert loaded.fingerprint != bundle.fingerprint and bundle.fusion_image_weight == PLAIN_SUM
    assert np.allclose(loaded.embed_features(image, text),
                       bundle.fuse_embeddings(e_img, e_txt, 0.7), atol=1e-6)


def test_config_rejects_weights_outside_0_1():
    with pytest.raises(ValueError, match="fusion"):
        TrainConfig(fusion_image_weight=1.5).validate()
    with pytest.raises(ValueError, match="fusion"):
        TrainConfig(fusion_grid=()).validate()
