"""Choosing the image tower's depth, then the InfoNCE weight, on the validation split.

How deep the image tower should be depends on the catalog: on a few thousand products the
paper's 5 x 512 MLP overfits the frozen features and classifies photos worse than one or two
layers, while a large catalog may pay for depth. So `TrainConfig.image_towers` lists candidates,
each is trained the same way, and this module scores them on the validation split and picks one.
InfoNCE (`w_nce`) helps only where a title describes its own photo, so the chosen tower is then
trained with each of `w_nce_alternatives` too, and the same rule picks among all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from embedder.towers import HuseModel, fuse
from train.metrics import class_recall_at_k

RULE = ("among the candidates whose validation fused leaf top-1 is within "
        "tower_top1_tolerance of the best, the highest mean of validation image->text and "
        "text->image class recall@1; ties: the earlier candidate; image towers first (at w_nce), "
        "then the chosen tower with each of w_nce_alternatives")


@dataclass(frozen=True)
class TowerScore:
    """One candidate's validation figures (fractions), at its best epoch."""

    hidden: tuple[int, ...]
    w_nce: float
    best_epoch: int
    fused_top1: float
    image_to_text_r1: float
    text_to_image_r1: float

    @property
    def cross_modal_r1(self) -> float:
        return (self.image_to_text_r1 + self.text_to_image_r1) / 2

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}


@torch.no_grad()
def validation_scores(model: HuseModel, image: np.ndarray, text: np.ndarray, labels: np.ndarray,
                      leaf_head: str, best_epoch: int, hidden: Sequence[int],
                      w_nce: float) -> TowerScore:
    """Fused leaf top-1 (plain-sum fusion, as early stopping) and class-level cross-modal
    recall@1 of `model` on validation rows (`text` is the text tower's input)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    e_img, e_txt = model(torch.as_tensor(image, device=device),
                         torch.as_tensor(text, device=device))
    model.train(was_training)
    labelled = labels >= 0
    pred = model.logits(fuse(e_img, e_txt))[leaf_head].argmax(dim=1).cpu().numpy()
    top1 = float(np.mean(pred[labelled] == labels[labelled])) if labelled.any() else float("nan")
    e_img, e_txt = e_img.float().cpu().numpy(), e_txt.float().cpu().numpy()
    i2t = class_recall_at_k(e_img, labels, e_txt, labels, (1,))[1]
    t2i = class_recall_at_k(e_txt, labels, e_img, labels, (1,))[1]
    return TowerScore(tuple(hidden), float(w_nce), best_epoch, top1, i2t, t2i)


def choose_image_tower(scores: Sequence[TowerScore], tolerance: float) -> int:
    """Index of the chosen candidate (RULE). Candidates without a finite top-1 (no labelled
    validation rows) leave the choice to the first one."""
    top1 = np.array([s.fused_top1 for s in scores], dtype=float)
    if not np.isfinite(top1).any():
        return 0
    band = [i for i, s in enumerate(scores) if s.fused_top1 >= np.nanmax(top1) - tolerance]
    return max(band, key=lambda i: (scores[i].cross_modal_r1, -i))
