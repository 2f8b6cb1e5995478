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
from typing import Any

import numpy as np

from embedder.visual import ServedSpace, VisualBlock, l2n, query_vectors, stored_vectors
from train.photo_eval import (
    instance_recall_at_1,
    photo_query_features,
    precision_at_k,
    ranked_ids,
)

logger = logging.getLogger(__name__)

DEFAULT_WEIGHT = 0.5  # without validation photos: HUSE and visual cosines weigh the same
IDENTICAL = 1.0 - 1e-4  # without validation photos only identical images are near duplicates

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


def fit_served_space(bundle: Any, products: Sequence[Any], image: np.ndarray, text: np.ndarray,
                     train_rows: np.ndarray, val_rows: np.ndarray, visual_dim: int,
                     grid: Sequence[float], min_instance_r1: float, seed: int,
                     cache_dir: str | None = None, device: str | None = None,
                     ) -> tuple[ServedSpace, PhotoSearchChoice]:
    """Fit the visual block (PCA on the training split's frozen image features), then choose
    the default visual weight and near-duplicate threshold on the validation split's photo
    queries against every product (validation photo features are cached like the catalog's)."""
    from embedder.backbones import load_backbone
    from embedder.features import FeatureCache

    block = VisualBlock.fit(image[train_rows], min(visual_dim, len(train_rows), image.shape[1]))
    ids = [p.id for p in products]
    huse_db = bundle.embed_features(image, text, [p.title for p in products])
    visual_db = block.transform(image)
    if len(val_rows) == 0:
        logger.info("no validation split: visual weight stays %.2f, only identical images are "
                    "near duplicates", DEFAULT_WEIGHT)
        return ServedSpace(block, DEFAULT_WEIGHT, IDENTICAL), PhotoSearchChoice(
            DEFAULT_WEIGHT, IDENTICAL, "no validation split: defaults")
    val = [products[i] for i in val_rows]
    backbone = load_backbone(bundle.config["image_backbone"]["spec"], device=device)
    with FeatureCache(cache_dir or None) as cache:
        q_feats = photo_query_features(val, backbone, cache, seed)
    choice = choose_photo_search(
        huse_db, visual_db, ids, bundle.embed_features(image_feats=q_feats),
        block.transform(q_feats), [p.id for p in val],
        {p.id: p.category_path for p in products}, grid, min_instance_r1)
    return ServedSpace(block, choice.visual_weight, choice.near_duplicate_threshold), choice


def photo_report(bundle: Any, products: Sequence[Any], image: np.ndarray, text: np.ndarray,
                 text_backbone_feats: np.ndarray, query_rows: np.ndarray, seed: int,
                 cache_dir: str | None = None, device: str | None = None,
                 k: int = 10) -> dict[str, Any]:
    """The report's photo-search section: the query rows' photos (cropped, mirrored, JPEG) and
    titles against an index of every product, for the served vector (default weight), the
    universal space alone (weight 0) and the frozen backbones alone (cosine)."""
    from embedder.backbones import load_backbone
    from embedder.features import FeatureCache

    served = bundle.served
    ids = [p.id for p in products]
    qp = [products[i] for i in query_rows]
    query_ids = [p.id for p in qp]
    columns = sorted({c for p in products for c in p.attributes})
    table = {"leaf": {p.id: p.category_path for p in products},
             **{c: {p.id: p.attributes.get(c) or None for p in products} for c in columns}}
    backbone = load_backbone(bundle.config["image_backbone"]["spec"], device=device)
    with FeatureCache(cache_dir or None) as cache:
        q_feats = photo_query_features(qp, backbone, cache, seed)
    huse_db = bundle.embed_features(image, text, [p.title for p in products])
    huse_q = bundle.embed_features(image_feats=q_feats)
    huse_t = bundle.embed_features(text_feats=text[query_rows], titles=[p.title for p in qp])
    db = served.stored(huse_db, served.block.transform(image))
    visual_q = served.block.transform(q_feats)
    frozen_db, frozen_t = l2n(image), l2n(text_backbone_feats)
    spaces = {
        "frozen backbone (cosine)": (l2n(q_feats) @ frozen_db.T,
                                     frozen_t[query_rows] @ frozen_t.T),
        "universal space alone": (huse_q @ huse_db.T, huse_t @ huse_db.T),
        "served vector": (served.query(huse_q, visual_q) @ db.T,
                          served.query(huse_t, None) @ db.T),
    }
    out: dict[str, Any] = {"queries": len(query_ids), "k": k,
                           "visual_weight": served.visual_weight, "spaces": {}}
    for name, (photo_scores, title_scores) in spaces.items():
        photo = ranked_ids(photo_scores, ids, k + 1)
        title = ranked_ids(title_scores, ids, k + 1)
        p = precision_at_k(query_ids, photo, table, k=k)
        out["spaces"][name] = {
            "instance_r1": instance_recall_at_1(query_ids, photo),
            "leaf_p10": p.pop("leaf"), "attr_p10": p,
            "title_leaf_p10": precision_at_k(query_ids, title, {"leaf": table["leaf"]},
                                             k=k)["leaf"],
        }
    return out
