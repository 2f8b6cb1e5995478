"""train.tower_search: the image-tower candidates scored on validation and the choice, alone and
through the session's pipeline run (two candidates)."""

import json
import math

import numpy as np
import pytest
import torch

from embedder.bundle import Bundle
from embedder.towers import HuseModel, Tower
from train.config import ConfigError, TrainConfig
from train.loop import _validate, train_model
from train.pipeline import BUNDLE_DIR, CHECKPOINT_DIR
from train.tower_search import TowerScore, choose_image_tower, validation_scores


def _score(top1: float, i2t: float, t2i: float, hidden=(8,)) -> TowerScore:
    return TowerScore(hidden, 0.5, 1, top1, i2t, t2i)


def test_choice_takes_best_cross_modal_within_the_top1_band():
    scores = [_score(0.96, 0.80, 0.85), _score(0.955, 0.84, 0.90), _score(0.94, 0.95, 0.99)]
    # the third is outside the 1-point band; inside it the second has the better mean R@1
    assert choose_image_tower(scores, tolerance=0.01) == 1
    assert choose_image_tower(scores, tolerance=0.0) == 0
    assert choose_image_tower(scores, tolerance=0.05) == 2


def test_choice_ties_go_to_the_earlier_candidate_and_nan_to_the_first():
    assert choose_image_tower([_score(0.9, 0.8, 0.8), _score(0.9, 0.8, 0.8)], 0.01) == 0
    nan = float("nan")
    assert choose_image_tower([_score(nan, nan, nan), _score(nan, nan, nan)], 0.01) == 0


def test_validation_scores_match_the_training_loops_validation(synthetic_data, tiny_cfg):
    torch.manual_seed(0)
    d = synthetic_data
    model = HuseModel(Tower(d.image.shape[1], (16,), tiny_cfg.embed_dim),
                      Tower(d.text.shape[1], (16,), tiny_cfg.embed_dim), {"level1": 2, "level2": 3})
    result = train_model(model, d, tiny_cfg, None)
    image, text, y = d.validation()
    score = validation_scores(model, image, text, y["level2"], "level2", result.best_epoch, (16,),
                              tiny_cfg.w_nce)
    A = torch.from_numpy(d.A)
    _, top1 = _validate(model, d, A, tiny_cfg, torch.device("cpu"))
    assert math.isclose(score.fused_top1, top1, abs_tol=1e-6)
    assert model.training  # left as found
    # cross-modal recall by hand: each image's nearest title has the image's class
    with torch.no_grad():
        model.eval()
        e_img, e_txt = (e.numpy() for e in model(torch.from_numpy(image), torch.from_numpy(text)))
    yv = y["level2"]
    assert math.isclose(score.image_to_text_r1, np.mean(yv[(e_img @ e_txt.T).argmax(1)] == yv))
    assert math.isclose(score.text_to_image_r1, np.mean(yv[(e_txt @ e_img.T).argmax(1)] == yv))
    assert score.hidden == (16,) and score.best_epoch == result.best_epoch
    assert score.w_nce == tiny_cfg.w_nce


def test_pipeline_trains_every_candidate_and_keeps_the_chosen_one(trained_run):
    cfg, out = trained_run
    report = json.loads((out / BUNDLE_DIR / "report.json").read_text())
    selection = report["training"]["image_tower_selection"]
    scores = [TowerScore(tuple(c["hidden"]), c["w_nce"], c["best_epoch"], c["fused_top1"],
                         c["image_to_text_r1"], c["text_to_image_r1"])
              for c in selection["candidates"]]
    # every tower at w_nce, then the tower chosen among them with each alternative weight
    towers = scores[:len(cfg.image_towers)]
    assert [s.hidden for s in towers] == list(cfg.image_towers)
    assert all(s.w_nce == cfg.w_nce for s in towers)
    first = cfg.image_towers[choose_image_tower(towers, cfg.tower_top1_tolerance)]
    assert [(s.hidden, s.w_nce) for s in scores[len(towers):]] == [
        (first, w) for w in cfg.w_nce_alternatives]
    chosen = scores[choose_image_tower(scores, cfg.tower_top1_tolerance)]
    assert tuple(selection["chosen"]) == chosen.hidden == tuple(report["training"]["image_tower"])
    assert selection["chosen_w_nce"] == chosen.w_nce == report["training"]["w_nce"]
    bundle = Bundle.load(out / BUNDLE_DIR)
    assert bundle.model.image_tower.hidden == chosen.hidden
    assert bundle.config.loss_weights["w_nce"] == chosen.w_nce
    names = sorted(p.name for p in (out / CHECKPOINT_DIR).iterdir())  # one each (resumable)
    assert names == sorted([f"image-tower-{'x'.join(map(str, h))}" for h in cfg.image_towers]
                           + [f"image-tower-{'x'.join(map(str, first))}-nce-{w:g}"
                              for w in cfg.w_nce_alternatives])
    md = (out / BUNDLE_DIR / "report.md").read_text()
    assert f"image tower {list(chosen.hidden)} and w_nce {chosen.w_nce:g}, chosen" in md


def test_candidates_must_be_distinct_and_present():
    assert TrainConfig(image_towers=((), (64,))).validate().image_towers == ((), (64,))
    for bad in ((), ((64,), (64,)), ((64, 0),)):
        with pytest.raises(ConfigError, match="image_towers"):
            TrainConfig(image_towers=bad).validate()
