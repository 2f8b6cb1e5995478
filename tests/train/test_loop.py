"""The training loop on synthetic features: it learns, logs, checkpoints and resumes exactly."""

import dataclasses
import logging

import torch

from embedder.towers import HuseModel, Tower
from train.loop import CHECKPOINT_NAME, train_model


def make_model(data, cfg):
    torch.manual_seed(cfg.seed)
    return HuseModel(Tower(data.image.shape[1], cfg.image_towers[0], cfg.embed_dim, cfg.dropout),
                     Tower(data.text.shape[1], cfg.text_tower, cfg.embed_dim, cfg.dropout),
                     {h: int(y.max()) + 1 for h, y in data.y.items()})


def test_training_learns_and_logs_parseable_lines(synthetic_data, tiny_cfg, tmp_path, caplog):
    cfg = dataclasses.replace(tiny_cfg, max_epochs=25)
    model = make_model(synthetic_data, cfg)
    with caplog.at_level(logging.INFO, logger="train.loop"):
        result = train_model(model, synthetic_data, cfg, tmp_path / "ckpt")
    hist = result.history
    assert [h["epoch"] for h in hist] == list(range(1, len(hist) + 1))
    assert set(hist[0]) == {"epoch", "step", "train_loss", "val_loss", "train_cls",
                            "train_graph", "train_gap", "train_nce", "val_top1"}
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert max(h["val_top1"] for h in hist) >= 0.9
    assert result.best_epoch == max(hist, key=lambda h: (h["val_top1"], -h["val_loss"]))["epoch"]
    assert (tmp_path / "ckpt" / CHECKPOINT_NAME).exists()
    assert any(r.getMessage().startswith("epoch 3 step 9: train loss ") and "val top1" in
               r.getMessage() for r in caplog.records)


def test_early_stopping_stops_after_patience(synthetic_data, tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, max_epochs=50, patience=2, lr=0.0)
    result = train_model(make_model(synthetic_data, cfg), synthetic_data, cfg, None)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_resumed_run_equals_uninterrupted_run(synthetic_data, tiny_cfg, tmp_path):
    straight = make_model(synthetic_data, tiny_cfg)
    r_straight = train_model(straight, synthetic_data, tiny_cfg, tmp_path / "a")

    first = make_model(synthetic_data, tiny_cfg)
    train_model(first, synthetic_data, dataclasses.replace(tiny_cfg, max_epochs=2), tmp_path / "b")
    torch.manual_seed(123)  # a fresh process: different global RNG, fresh weights
    resumed = make_model(synthetic_data, dataclasses.replace(tiny_cfg, seed=99))
    r_resumed = train_model(resumed, synthetic_data, dataclasses.replace(tiny_cfg, resume=True),
                            tmp_path / "b")
    assert [h["epoch"] for h in r_resumed.history] == [1, 2, 3, 4]
    assert r_resumed.history == r_straight.history
    resumed_state = resumed.state_dict()
    for k, a in straight.state_dict().items():
        assert torch.allclose(a, resumed_state[k], atol=1e-6), k
