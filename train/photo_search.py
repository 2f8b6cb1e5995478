"""Pick the served vector's default visual weight and the near-duplicate threshold on the
validation split's photo queries (train.photo_eval), against an index of every product.

Selection rule (stored in the bundle with the validation scores it was made from):
- visual weight: the highest leaf precision@10 among the grid weights whose validation instance
  recall@1 is at least `min_instance_r1`; when none reaches it, the highest instance recall@1
  (ties: higher leaf precision@10, then the smaller weight);
- near-duplicate threshold: the visual cosine that best separates a photo query's own product
  from its nearest other product (Youden's J over validation queries: the share of own products
  at or above it minus the share of nearest others at or above it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from embedder.visual import query_vectors, stored_vectors
from train.photo_eval import instance_recall_at_1, precision_at_k, ranked_ids

logger = logging.getLogger(__name__)

RULE = ("highest validation leaf P@10 among visual weights with validation instance R@1 >= "
        "{min_r1}; near-duplicate threshold: Youden's J of own-product vs nearest-other visual "
        "cosine on validation photos")


@dataclass(frozen=True)
class PhotoSearchChoice:
    visual_weight: float
    near_duplicate_threshold: float
    rule: str
    validation: dict[str, dict[str, float]] = field(default_factory=dict)  # weight -> scores

    def to_dict(self) -> dict:
        return {"visual_weight": self.visual_weight,
                "near_duplicate_threshold": self.near_duplicate_threshold,
                "rule": self.rule, "validation": self.validation}


def score_weights(db: np.ndarray, ids: Sequence[str], huse_q: np.ndarray, visual_q: np.ndarray,
                  query_ids: Sequence[str], leaf: dict[str, str], grid: Sequence[float],
                  k: int = 10) -> dict[str, dict[str, float]]:
    """{weight: {"instance_r1", "leaf_p10"}} of photo queries against stored rows `db`."""
    out = {}
    for w in grid:
        xq = query_vectors(huse_q, visual_q, float(w), visual_q.shape[1])
        ranked = ranked_ids(xq @ db.T, ids, k + 1)
        out[f"{float(w):g}"] = {
            "instance_r1": instance_recall_at_1(query_ids, ranked),
            "leaf_p10": precision_at_k(query_ids, ranked, {"leaf": leaf}, k=k)["leaf"]}
    return out


def pick_weight(scores: dict[str, dict[str, float]], min_r1: float) -> float:
    ok = [w for w, s in scores.items() if s["instance_r1"] >= min_r1]
    if ok:
        return float(max(ok, key=lambda w: (scores[w]["leaf_p10"], -float(w))))
    return float(max(scores, key=lambda w: (scores[w]["instance_r1"], scores[w]["leaf_p10"],
                                            -float(w))))


def duplicate_threshold(visual_db: np.ndarray, ids: Sequence[str], visual_q: np.ndarray,
                        query_ids: Sequence[str]) -> float:
    """Youden's J threshold between own-product and nearest-other visual cosines."""
    sims = visual_q @ visual_db.T
    col = {pid: j for j, pid in enumerate(ids)}
    own_cols = np.array([col[q] for q in query_ids])
    rows = np.arange(len(query_ids))
    own = sims[rows, own_cols]
    sims[rows, own_cols] = -np.inf
    other = sims.max(axis=1)
    candidates = np.unique(np.concatenate([own, other]))
    j = [(own >= t).mean() - (other >= t).mean() for t in candidates]
    return float(candidates[int(np.argmax(j))])


def choose_photo_search(huse_db: np.ndarray, visual_db: np.ndarray, ids: Sequence[str],
                        huse_q: np.ndarray, visual_q: np.ndarray, query_ids: Sequence[str],
                        leaf: dict[str, str], grid: Sequence[float],
                        min_instance_r1: float) -> PhotoSearchChoice:
    """Validation photo queries (HUSE image embedding + visual block) against every product."""
    db = stored_vectors(huse_db, visual_db)
    scores = score_weights(db, ids, huse_q, visual_q, query_ids, leaf, grid)
    weight = pick_weight(scores, min_instance_r1)
    threshold = duplicate_threshold(visual_db, ids, visual_q, query_ids)
    logger.info("visual weight %.2f, near-duplicate threshold %.3f (validation: %s)", weight,
                threshold, scores)
    return PhotoSearchChoice(weight, threshold, RULE.format(min_r1=min_instance_r1), scores)
