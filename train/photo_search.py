"""Choose the served space (embedder.visual) on the validation split's photo queries
(train.photo_eval: cropped, mirrored, JPEG re-encoded) against every product, and score it.

The grid: visual block size, whitening strength and, with a `+colour` image backbone, the colour
histogram's weight inside the block (VisualBlock), then the query weight w of the visual block.
For each block the near-duplicate threshold is the visual cosine that best
separates a photo's own product from its nearest other product (Youden's J: the share of own
products at or above it minus the share of nearest others at or above it). Selection rule (the
one issue #11 proposes, with a margin for the size of the validation split): among the
settings whose validation instance recall@1, less one standard error (sqrt(r(1-r)/n) over n
queries), is at least `min_instance_r1`, those within `leaf_tolerance` of the highest leaf
precision@10; among them the highest mean precision@10 over the catalog's attribute columns
(colour, usage...: the catalog's own notion of "looks like"; a catalog without attribute
columns uses leaf precision), ties: the smaller weights. Without any setting over the recall
bar, the highest instance recall@1. The margin keeps a setting that only just reaches the bar
on a few hundred validation photos from falling under it on the test photos. (Requiring every
column to match the frozen backbone's was tried before the colour block existed and, on
fashion-products, traded 15 points of leaf precision for under one point of baseColour.)
Photo searches are scored exactly as `embedder.visual.served_search` answers them (recognition,
then the recognised product's neighbours), here in numpy over the validation split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder.visual import (
    ServedSpace,
    VisualBlock,
    instance_probe,
    l2n,
    query_vectors,
    split_stored,
)
from train.photo_eval import (
    instance_recall_at_1,
    photo_query_features,
    precision_at_k,
    ranked_ids,
)

logger = logging.getLogger(__name__)

DEFAULT_WEIGHT = 0.5  # without validation photos: HUSE and visual cosines weigh the same
IDENTICAL = 1.0 - 1e-4  # without validation photos only identical images are near duplicates
LEAF = "leaf"
K = 10

RULE = ("validation photo queries: among settings with instance R@1 - 1 standard error >= "
        "{min_r1} and leaf P@10 within {tol} of the best such, the highest mean attribute-column "
        "P@10 (ties: smaller weights); recognition threshold: Youden's J of own-product vs "
        "nearest-other instance cosine (the visual block without its colour histogram); "
        "near-duplicate listing: by the whole visual block's cosine or by the instance part's, "
        "whichever puts more validation photos' own products at or above its threshold, the "
        "cosine that at most {max_rate} of validation products' nearest other product reaches "
        "(not below that score's Youden threshold)")


@dataclass(frozen=True)
class PhotoSearchChoice:
    setting: dict[str, float]  # visual_dim, whiten, colour_weight, visual_weight
    near_duplicate_threshold: float
    rule: str
    validation: list[dict[str, Any]] = field(default_factory=list)  # every setting's scores
    frozen: dict[str, float] = field(default_factory=dict)  # the frozen backbone's, same queries
    recognition_threshold: float | None = None  # None: the near-duplicate threshold
    listing: dict[str, Any] = field(default_factory=dict)  # duplicate_listing's choice

    def to_dict(self) -> dict:
        return {"setting": self.setting, "near_duplicate_threshold": self.near_duplicate_threshold,
                "recognition_threshold": self.recognition_threshold, "rule": self.rule,
                "frozen": self.frozen, "validation": self.validation,
                "near_duplicate_listing": self.listing}


def listing_threshold(instance_db: np.ndarray, rows: np.ndarray, max_rate: float,
                      floor: float) -> float:
    """Near-duplicate listing threshold: the instance cosine that at most `max_rate` of the
    products `rows` reach with their nearest other product (so few listings are flagged by
    chance), never below `floor` (the recognition threshold)."""
    sims = instance_db[rows] @ instance_db.T
    sims[np.arange(len(rows)), rows] = -np.inf
    nearest_other = sims.max(axis=1)
    return float(max(floor, np.quantile(nearest_other, 1.0 - max_rate, method="higher")))


def duplicate_threshold(visual_db: np.ndarray, visual_q: np.ndarray,
                        own_rows: np.ndarray) -> float:
    """Youden's J threshold between own-product and nearest-other cosines of (instance)
    visual vectors."""
    sims = visual_q @ visual_db.T
    rows = np.arange(len(own_rows))
    own = sims[rows, own_rows].copy()
    sims[rows, own_rows] = -np.inf
    other = sims.max(axis=1)
    candidates = np.unique(np.concatenate([own, other]))
    j = [(own >= t).mean() - (other >= t).mean() for t in candidates]
    return float(candidates[int(np.argmax(j))])


def duplicate_listing(block: VisualBlock, image: np.ndarray, q_feats: np.ndarray,
                      own_rows: np.ndarray, max_rate: float) -> dict[str, Any]:
    """How near duplicates are listed: by the cosine of the whole visual blocks (colour
    histogram included) or of their instance parts, whichever lists more validation photo
    queries' (cropped, mirrored, re-encoded copies') own products at its listing threshold
    (listing_threshold at `max_rate`, floored at that score's Youden threshold); ties: the
    instance part. -> {"colour", "threshold", "copies_listed": {variant: share}}."""
    visual_db, visual_q = block.transform(image), block.transform(q_feats)
    found: dict[bool, tuple[float, float]] = {}
    for colour in ((False, True) if block.colour_dim else (False,)):
        db, q = ((l2n(visual_db), l2n(visual_q)) if colour
                 else (block.instance(visual_db), block.instance(visual_q)))
        t = listing_threshold(db, own_rows, max_rate, duplicate_threshold(db, q, own_rows))
        found[colour] = (float(np.mean((q * db[own_rows]).sum(axis=1) >= t)), t)
    colour = max(found, key=lambda c: (found[c][0], not c))
    return {"colour": colour, "threshold": found[colour][1],
            "copies_listed": {"whole block" if c else "instance part": round(v[0], 4)
                              for c, v in found.items()}}


def served_scores(db: np.ndarray, huse_q: np.ndarray, visual_q: np.ndarray, weight: float,
                  threshold: float, block: VisualBlock) -> np.ndarray:
    """(n_queries, n_products) scores whose ranking is served_search's answer: recognised
    queries (instance cosine, embedder.visual.instance_probe) rank their product first, then
    its neighbours under the weight."""
    visual_dim = block.dim
    huse_dim = db.shape[1] - visual_dim
    huse_db, visual_db = split_stored(db, huse_dim)
    scores = query_vectors(huse_q, visual_q, weight, visual_dim) @ db.T
    if weight <= 0:
        return scores
    vis = instance_probe(visual_q, huse_dim, block) @ db.T
    top = vis.argmax(axis=1)
    recognised = vis[np.arange(len(top)), top] >= threshold
    around = query_vectors(huse_db[top], visual_db[top], weight, visual_dim) @ db.T
    around[np.arange(len(top)), top] = np.inf
    return np.where(recognised[:, None], around, scores)


def score_ranking(query_ids: Sequence[str], ranked: list[list[str]],
                  table: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    p = precision_at_k(query_ids, ranked, table, k=K)
    return {"queries": len(query_ids), "instance_r1": instance_recall_at_1(query_ids, ranked),
            "leaf_p10": p.pop(LEAF), "attr_p10": p}


def look_alike(s: dict[str, Any]) -> float:
    """Mean attribute-column P@10 of a scored setting (leaf P@10 without attribute columns)."""
    values = [v for v in s["attr_p10"].values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float(s["leaf_p10"])


def pick(validation: list[dict[str, Any]], min_r1: float,
         leaf_tolerance: float = 0.0) -> dict[str, Any]:
    """The rule of the module docstring over scored settings."""
    def lower(s: dict) -> float:
        r = s["instance_r1"]
        return r - float(np.sqrt(r * (1.0 - r) / max(s["queries"], 1)))

    ok = [s for s in validation if lower(s) >= min_r1]
    if not ok:
        return max(validation, key=lambda s: (s["instance_r1"], s["leaf_p10"]))
    best_leaf = max(s["leaf_p10"] for s in ok)
    band = [s for s in ok if s["leaf_p10"] >= best_leaf - leaf_tolerance]
    return max(band, key=lambda s: (look_alike(s), -s["visual_weight"],
                                    -s.get("colour_weight", 0.0)))


@dataclass(frozen=True)
class PhotoGrid:
    """The validated settings (TrainConfig fields photo_*)."""

    visual_dims: tuple[int, ...]
    whiten: tuple[float, ...]
    weights: tuple[float, ...]
    min_instance_r1: float
    colour_weights: tuple[float, ...] = (0.0,)  # tried only with a `+colour` image backbone
    leaf_tolerance: float = 0.0
    duplicate_max_rate: float = 0.02  # near-duplicate listing (listing_threshold)


def choose_served_space(huse_db: np.ndarray, image: np.ndarray, train_rows: np.ndarray,
                        huse_q: np.ndarray, q_feats: np.ndarray, own_rows: np.ndarray,
                        ids: Sequence[str], table: Mapping[str, Mapping[str, Any]],
                        grid: PhotoGrid, colour_dim: int = 0,
                        ) -> tuple[ServedSpace, PhotoSearchChoice]:
    """Fit a VisualBlock per (dim, whiten) on the training rows, score every colour weight and
    query weight on the validation photo queries (rows own_rows of the catalog), apply the rule.
    The last `colour_dim` image columns are a colour histogram (embedder.colour); the frozen
    baseline is the backbone's own columns."""
    query_ids = [ids[i] for i in own_rows]
    deep = image.shape[1] - colour_dim
    frozen = score_ranking(query_ids, ranked_ids(l2n(q_feats[:, :deep]) @ l2n(image[:, :deep]).T,
                                                 ids, K + 1), table)
    validation, blocks = [], {}
    for dim in grid.visual_dims:
        for power in grid.whiten:
            fitted = VisualBlock.fit(image[train_rows], min(dim, len(train_rows), deep),
                                     whiten=power, colour_dim=colour_dim)
            for colour in (grid.colour_weights if colour_dim else (0.0,)):
                block = fitted.with_colour_weight(colour)
                visual_db, visual_q = block.transform(image), block.transform(q_feats)
                threshold = duplicate_threshold(block.instance(visual_db),
                                                block.instance(visual_q), own_rows)
                served = ServedSpace(block, DEFAULT_WEIGHT, threshold)
                db = served.stored(huse_db, visual_db)
                blocks[(block.dim, power, colour)] = served
                for w in grid.weights:
                    scores = served_scores(db, huse_q, visual_q, w, threshold, block)
                    validation.append({"visual_dim": block.dim, "whiten": power,
                                       "colour_weight": colour, "visual_weight": w,
                                       "near_duplicate_threshold": threshold,
                                       **score_ranking(query_ids,
                                                       ranked_ids(scores, ids, K + 1), table)})
    best = pick(validation, grid.min_instance_r1, grid.leaf_tolerance)
    chosen = blocks[(best["visual_dim"], best["whiten"], best["colour_weight"])]
    recognition = chosen.near_duplicate_threshold
    listing = duplicate_listing(chosen.block, image, q_feats, own_rows, grid.duplicate_max_rate)
    served = ServedSpace(chosen.block, float(best["visual_weight"]), listing["threshold"],
                         recognition, listing["colour"])
    setting = {k: best[k] for k in ("visual_dim", "whiten", "colour_weight", "visual_weight")}
    logger.info("photo search: %s, recognition threshold %.3f, near-duplicate threshold %.3f "
                "(%s; val instance R@1 %.3f, leaf P@10 %.3f)", setting, recognition,
                listing["threshold"], "whole block" if listing["colour"] else "instance part",
                best["instance_r1"], best["leaf_p10"])
    return served, PhotoSearchChoice(setting, listing["threshold"],
                                     RULE.format(min_r1=grid.min_instance_r1,
                                                 tol=grid.leaf_tolerance,
                                                 max_rate=grid.duplicate_max_rate), validation,
                                     {"instance_r1": frozen["instance_r1"],
                                      "leaf_p10": frozen["leaf_p10"], **frozen["attr_p10"]},
                                     recognition, listing)


def attribute_table(products: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """{column: {product id: value}}: the leaf category path, then every attribute column."""
    columns = sorted({c for p in products for c in p.attributes})
    return {LEAF: {p.id: p.category_path for p in products},
            **{c: {p.id: p.attributes.get(c) or None for p in products} for c in columns}}


def fit_served_space(bundle: Any, products: Sequence[Any], image: np.ndarray, text: np.ndarray,
                     train_rows: np.ndarray, val_rows: np.ndarray, grid: PhotoGrid, seed: int,
                     cache_dir: str | None = None) -> tuple[ServedSpace, PhotoSearchChoice]:
    """The served space of a trained bundle, chosen on the validation split's photo queries
    (their backbone features are cached like the catalog's)."""
    from embedder.colour import colour_dim
    from embedder.features import FeatureCache

    n_colour = colour_dim(bundle.config.image_backbone.spec)
    if len(val_rows) == 0:
        dim = min(max(grid.visual_dims), len(train_rows), image.shape[1] - n_colour)
        block = VisualBlock.fit(image[train_rows], dim, whiten=max(grid.whiten),
                                colour_dim=n_colour)
        logger.info("no validation split: visual weight %.2f, only identical images are near "
                    "duplicates", DEFAULT_WEIGHT)
        return ServedSpace(block, DEFAULT_WEIGHT, IDENTICAL), PhotoSearchChoice(
            {"visual_dim": block.dim, "whiten": max(grid.whiten), "colour_weight": 0.0,
             "visual_weight": DEFAULT_WEIGHT}, IDENTICAL, "no validation split: defaults")
    backbone = bundle.backbone("image")
    with FeatureCache(cache_dir or None) as cache:
        q_feats = photo_query_features([products[i] for i in val_rows], backbone, cache, seed)
    huse_db = bundle.embed_features(image, text, [p.title for p in products])
    return choose_served_space(huse_db, image, train_rows,
                               bundle.embed_features(image_feats=q_feats), q_feats,
                               np.asarray(val_rows), [p.id for p in products],
                               attribute_table(products), grid, n_colour)


def photo_report(bundle: Any, products: Sequence[Any], image: np.ndarray, text: np.ndarray,
                 text_backbone_feats: np.ndarray, query_rows: np.ndarray, seed: int,
                 cache_dir: str | None = None,
                 frozen_image: np.ndarray | None = None) -> dict[str, Any]:
    """The report's photo-search section: the query rows' photos (cropped, mirrored, JPEG) and
    titles against every product, for the served space (default weight, as served_search
    answers), the universal space alone and the frozen backbones alone (cosine).
    `frozen_image`: the packaged image backbone's features of `products` when the bundle's
    backbone was tuned (its queries then run through the packaged backbone too)."""
    from embedder.colour import backbone_part
    from embedder.features import FeatureCache

    served = bundle.served
    spec = bundle.config.image_backbone.spec
    ids = [p.id for p in products]
    qp = [products[i] for i in query_rows]
    query_ids = [p.id for p in qp]
    table = attribute_table(products)
    backbone = bundle.backbone("image")
    with FeatureCache(cache_dir or None) as cache:
        q_feats = photo_query_features(qp, backbone, cache, seed)
        frozen_q, frozen_db = q_feats, image
        if frozen_image is not None:
            from embedder.backbones import load_backbone

            packaged = load_backbone(spec, device=bundle.device, engine=backbone.engine)
            frozen_q, frozen_db = photo_query_features(qp, packaged, cache, seed), frozen_image
    huse_db = bundle.embed_features(image, text, [p.title for p in products])
    huse_q = bundle.embed_features(image_feats=q_feats)
    huse_t = bundle.embed_features(text_feats=text[query_rows], titles=[p.title for p in qp])
    db = served.stored(huse_db, served.block.transform(image))
    frozen_t = l2n(text_backbone_feats)
    spaces = {
        "frozen backbone (cosine)": (l2n(backbone_part(frozen_q, spec))
                                     @ l2n(backbone_part(frozen_db, spec)).T,
                                     frozen_t[query_rows] @ frozen_t.T),
        "universal space alone": (huse_q @ huse_db.T, huse_t @ huse_db.T),
        "served": (served_scores(db, huse_q, served.block.transform(q_feats),
                                 served.visual_weight, served.recognition, served.block),
                   served.query(huse_t, None) @ db.T),
    }
    out: dict[str, Any] = {"queries": len(query_ids), "k": K, "query_seed": seed,
                           "served": served.config(), "spaces": {}}
    for name, (photo_scores, title_scores) in spaces.items():
        row = score_ranking(query_ids, ranked_ids(photo_scores, ids, K + 1), table)
        title = ranked_ids(title_scores, ids, K + 1)
        row["title_leaf_p10"] = precision_at_k(query_ids, title, {LEAF: table[LEAF]}, k=K)[LEAF]
        out["spaces"][name] = row
    return out
