"""Pick the image weight of the fused embedding on the validation split.

HUSE sums the two unit embeddings (weight 0.5). When one modality is much weaker on a given
catalog (photos of look-alike products, or titles that are mostly brand names), the plain sum
lets it dilute the stronger one. The weight is chosen once, after training, on held-out data,
and stored in the bundle, so the index, the centroids and the API all fuse the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from huse_common.vectors import PLAIN_SUM

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class FusionChoice:
    image_weight: float
    val_top1_by_weight: dict[float, float]  # fused leaf top-1 (%) on the validation split


def choose_fusion_weight(bundle, image_feats: np.ndarray, text_feats: np.ndarray,
                         titles: Sequence[str], y_leaf: np.ndarray,
                         grid: Sequence[float]) -> FusionChoice:
    """The grid weight with the best fused leaf top-1 (linear head); ties go to the weight
    nearest the plain sum, so a small or uninformative validation split keeps 0.5."""
    labelled = y_leaf >= 0
    if not labelled.any():
        logger.info("no labelled validation rows: fusion weight stays %.1f", PLAIN_SUM)
        return FusionChoice(PLAIN_SUM, {})
    e_img = bundle.embed_features(image_feats=image_feats)
    e_txt = bundle.embed_features(text_feats=text_feats, titles=titles)
    top1 = {}
    for w in grid:
        probs = bundle.head_probs(bundle.fuse_embeddings(e_img, e_txt, w))[bundle.leaf_head]
        top1[float(w)] = float(100 * (probs[labelled].argmax(1) == y_leaf[labelled]).mean())
    best = max(top1, key=lambda w: (top1[w], -abs(w - PLAIN_SUM)))
    logger.info("fusion image weight %.2f (val fused leaf top-1 by weight: %s)", best,
                {w: round(v, 1) for w, v in top1.items()})
    return FusionChoice(best, top1)
