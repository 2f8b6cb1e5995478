"""The training pipeline as named stages: prepare -> fit -> assemble -> evaluate -> index ->
report. Each stage is a plain function with typed inputs and outputs (frozen dataclasses), so a
test, a notebook or a new trainer can run, replace or extend one stage without the others;
`train.pipeline.run` chains them. torch, faiss and sklearn are imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.config import TrainConfig
from train.data import SplitData, split_catalog
from train.timing import timed

logger = logging.getLogger(__name__)

INDEX_REPORT_KEYS = ("factory", "ntotal", "d", "build")  # manifest entries copied to the report
MIN_LEAF_CLASSES = 2  # a classifier needs two classes to tell apart
MIN_TEST_ROWS = 2  # evaluation needs two test products (retrieval excludes the query itself)


@dataclass(frozen=True)
class Prepared:
    """Everything training reads, fixed before the first step."""

    cfg: TrainConfig
    data: SplitData  # features, split, labels in the training label spaces
    spaces: Any  # train.splits.LabelSpaces
    tfidf: Any  # embedder.tfidf.TfidfText | None
    # (n, Dt [+ tfidf]) float32 text-tower input; None when streaming (TF-IDF per batch)
    text_input: np.ndarray | None
    train_rows: np.ndarray  # rows per epoch (rare classes repeated when oversampling)
    graph: np.ndarray  # (C_leaf, C_leaf) class-name distances (semantic graph loss)
    tuning: Any = None  # train.backbone_tuning.TuningResult; None: the packaged image backbone

    @property
    def heads(self) -> dict[str, int]:
        return {h: len(self.spaces.labels[h]) for h in self.spaces.labels}


@dataclass(frozen=True)
class Fitted:
    model: Any  # embedder.towers.HuseModel, best epoch's weights, eval mode
    result: Any  # train.loop.TrainResult
    # the image-tower and InfoNCE choice (train.tower_search) when several candidates were trained
    tower_selection: dict[str, Any] | None = None
    w_nce: float | None = None  # the InfoNCE weight chosen (None: cfg.w_nce, no search)


@dataclass(frozen=True)
class Assembled:
    bundle: Any  # embedder.bundle.Bundle
    fusion: Any  # train.fusion.FusionChoice
    photo: Any = None  # train.photo_search.PhotoSearchChoice (None: HUSE served alone)


@dataclass(frozen=True)
class Evaluated:
    evaluation: dict[str, Any]  # report.json's "evaluation" section
    artifacts: Any  # train.evaluate.EvalArtifacts (what the plots need)


def check_trainable(data: SplitData, spaces: Any, cfg: TrainConfig) -> None:
    """CatalogError naming the fix when the catalog cannot train a classifier, before any
    training (so no half-written bundle is left behind)."""
    from embedder.errors import CatalogError

    n_leaf = len(spaces.labels[data.leaf])
    if n_leaf < MIN_LEAF_CLASSES:
        raise CatalogError(
            f"{cfg.catalog}: {n_leaf} leaf categor{'y' if n_leaf == 1 else 'ies'} with at "
            f"least min_per_class={cfg.min_per_class} training products; need "
            f"{MIN_LEAF_CLASSES}. Add products of other categories, or lower it with "
            f"--set min_per_class=N")
    if len(data.splits.test) < MIN_TEST_ROWS or not len(data.splits.train):
        raise CatalogError(
            f"{cfg.catalog}: {len(data.feats.products)} valid products give "
            f"{len(data.splits.train)} training and {len(data.splits.test)} test rows; need "
            f"at least {MIN_TEST_ROWS} test rows (3 products per category). Add products")


def prepare(cfg: TrainConfig, rejects_path: Path | None = None,
            timings: dict[str, float] | None = None,
            feats: Any = None) -> Prepared:
    """Catalog -> features -> split -> label spaces -> TF-IDF -> semantic graph -> epoch rows.
    `feats` (train.data.CatalogFeatures, or train.streaming.ShardedFeatures) skips reading the
    catalog; without it, the catalog's size decides between the two (cfg.streaming)."""
    from embedder.tfidf import TfidfText
    from train import distributed
    from train.backbone_tuning import skip_reason, tune_image_backbone
    from train.data import with_tuned_image
    from train.semantic_graph import build_semantic_graph
    from train.splits import build_label_spaces, oversample
    from train.streaming import held_rows, load_training_features, tower_text_input

    if feats is None:
        with timed("catalog + features", timings):
            feats = load_training_features(cfg, rejects_path=rejects_path)
    values, leaf, splits = split_catalog(feats, cfg)
    spaces = build_label_spaces(values, splits.train, cfg.min_per_class)
    data = SplitData(feats, splits, spaces.y, leaf,
                     held=held_rows(splits, cfg) if feats.streamed else None)
    check_trainable(data, spaces, cfg)
    tuning = None
    y_leaf = spaces.y[leaf]
    skip = skip_reason(cfg, int((y_leaf[splits.train] >= 0).sum()), feats.streamed,
                       distributed.current().parallel)
    if skip:
        logger.info("image backbone not tuned: %s", skip)
    else:
        with timed("backbone tuning", timings):
            tuning = tune_image_backbone(feats.products, y_leaf, splits, cfg)
        with timed("tuned image features", timings):
            feats = with_tuned_image(feats, cfg, tuning.tail)
        data = dataclasses.replace(data, feats=feats)
    tfidf = None
    if cfg.use_tfidf:
        titles = feats.titles
        tfidf = TfidfText.fit([titles[i] for i in splits.train], cfg.tfidf_max_features)
    # in memory: the text tower's whole input at once; streaming: per batch (ShardTrainData)
    text_input = None if feats.streamed else tower_text_input(feats.text, feats.titles, tfidf)
    with timed("semantic graph", timings):
        graph = build_semantic_graph(spaces.labels[leaf], feats.text_backbone)
    train_rows = (oversample(splits.train, spaces.y[leaf], cfg.oversample_percentile, cfg.seed)
                  if cfg.oversample_percentile is not None else splits.train)
    return Prepared(cfg, data, spaces, tfidf, text_input, train_rows, graph, tuning)


def _input_norms(feats: Any, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-column (shift, scale) of the image and text features, fit on `rows` in one pass
    over the features' chunks (constant columns left unscaled)."""
    from train.streaming import Moments

    moments = (Moments(), Moments())
    for _, image, text in feats.chunks(rows):
        moments[0].add(image)
        moments[1].add(text)
    return [(m.mean.astype(np.float32),
             (1.0 / np.where(m.std > 1e-6, m.std, 1.0)).astype(np.float32)) for m in moments]


def build_towers(prep: Prepared, image_hidden: tuple[int, ...] | None = None):
    """HuseModel sized from the data (image tower: `image_hidden`, default the first of
    cfg.image_towers); tower inputs standardised on the training split. TF-IDF
    columns are not standardised (they are sparse) but scaled by sqrt(text dim), so the TF-IDF
    block (unit norm) weighs as much as the standardised backbone block (norm ~ sqrt(dim))."""
    import torch

    from embedder.towers import HuseModel, Tower

    cfg, feats, rows = prep.cfg, prep.data.feats, prep.data.splits.train
    torch.manual_seed(cfg.seed)
    tfidf_dim = prep.tfidf.dim if prep.tfidf is not None else 0
    di, dt = feats.dims
    model = HuseModel(
        Tower(di, cfg.image_towers[0] if image_hidden is None else image_hidden, cfg.embed_dim,
              cfg.dropout),
        Tower(dt + tfidf_dim, cfg.text_tower, cfg.embed_dim, cfg.dropout),
        prep.heads,
        logit_scale=cfg.logit_scale,
    )
    (shift, scale), (text_shift, text_scale) = _input_norms(feats, rows)
    model.image_tower.set_input_norm(torch.from_numpy(shift), torch.from_numpy(scale))
    shift, scale = text_shift, text_scale
    shift = np.concatenate([shift, np.zeros(tfidf_dim, np.float32)])
    scale = np.concatenate([scale, np.full(tfidf_dim, math.sqrt(dt), np.float32)])
    model.text_tower.set_input_norm(torch.from_numpy(shift), torch.from_numpy(scale))
    return model


def fit(prep: Prepared, checkpoint_dir: Path | None,
        timings: dict[str, float] | None = None) -> Fitted:
    """Towers built from the data and trained (best epoch restored; resumes with cfg.resume).
    With a validation split and more than one candidate: once per image-tower candidate, then
    the chosen tower once per alternative InfoNCE weight; the candidate the validation split
    prefers is kept (train.tower_search)."""
    from train.loop import TrainData
    from train.streaming import ShardTrainData
    from train.tower_search import RULE, choose_image_tower

    feats, cfg = prep.data.feats, prep.cfg
    data: Any
    if feats.streamed:
        data = ShardTrainData(feats, prep.tfidf, prep.spaces.y, prep.train_rows,
                              prep.data.used.val, prep.data.leaf, prep.graph,
                              cfg.streaming.shuffle_shards)
    else:
        data = TrainData(image=feats.image, text=prep.text_input, y=prep.spaces.y,
                         train_idx=prep.train_rows, val_idx=prep.data.splits.val,
                         leaf_head=prep.data.leaf, A=prep.graph)
    has_val = len(prep.data.used.val) > 0
    towers = cfg.image_towers if has_val else cfg.image_towers[:1]
    alternatives = [w for w in dict.fromkeys(cfg.w_nce_alternatives) if w != cfg.w_nce]
    search = has_val and len(towers) + len(alternatives) > 1
    with timed("training", timings):
        fits = [_fit_candidate(prep, data, hidden, cfg.w_nce, checkpoint_dir, search)
                for hidden in towers]
        if not search:
            return fits[0][0]
        chosen = choose_image_tower([s for _, s in fits], cfg.tower_top1_tolerance)
        fits += [_fit_candidate(prep, data, towers[chosen], w, checkpoint_dir, search)
                 for w in alternatives]
    scores = [s for _, s in fits]
    chosen = choose_image_tower(scores, cfg.tower_top1_tolerance)
    logger.info("chosen on validation: image tower %s, w_nce %g", list(scores[chosen].hidden),
                scores[chosen].w_nce)
    return dataclasses.replace(
        fits[chosen][0], w_nce=scores[chosen].w_nce,
        tower_selection={"rule": RULE, "tolerance": cfg.tower_top1_tolerance,
                         "chosen": list(scores[chosen].hidden),
                         "chosen_w_nce": scores[chosen].w_nce,
                         "candidates": [s.to_dict() for s in scores]})


def _fit_candidate(prep: Prepared, data: Any, hidden: tuple[int, ...], w_nce: float,
                   checkpoint_dir: Path | None, search: bool) -> tuple[Fitted, Any]:
    """(Fitted, its validation TowerScore or None): one candidate trained; in a search each
    candidate has its own checkpoint directory (so --resume resumes each)."""
    from train.loop import train_model
    from train.tower_search import validation_scores

    cfg = dataclasses.replace(prep.cfg, w_nce=w_nce)
    ckpt = checkpoint_dir
    if checkpoint_dir is not None and search:
        name = "x".join(map(str, hidden)) or "linear"
        nce = "" if w_nce == prep.cfg.w_nce else f"-nce-{w_nce:g}"
        ckpt = Path(checkpoint_dir) / f"image-tower-{name}{nce}"
    model = build_towers(prep, hidden)
    result = train_model(model, data, cfg, ckpt)
    if not search:
        return Fitted(model, result), None
    image, text, y = data.validation()
    score = validation_scores(model, image, text, y[prep.data.leaf], prep.data.leaf,
                              result.best_epoch, hidden, w_nce)
    logger.info("image tower %s, w_nce %g: validation fused top-1 %.4f, image->text R@1 %.4f,"
                " text->image R@1 %.4f", list(hidden), w_nce, score.fused_top1,
                score.image_to_text_r1, score.text_to_image_r1)
    return Fitted(model, result), score


def assemble(prep: Prepared, fitted: Fitted) -> Assembled:
    """The bundle, built once: the fusion weight picked on the validation split, class
    centroids of the training split's fused embeddings, then the served space (visual block,
    visual weight, near-duplicate threshold) chosen on the validation split's photo queries."""
    from embedder.bundle import Bundle
    from embedder.classify import class_sums
    from huse_common.vectors import l2_normalize
    from train.fusion import FusionChoice, choose_fusion_weight

    cfg, data = prep.cfg, prep.data
    if fitted.w_nce is not None:
        cfg = dataclasses.replace(cfg, w_nce=fitted.w_nce)
    feats, leaf = data.feats, data.leaf
    trained = dict(
        image_backbone=feats.image_backbone, text_backbone=feats.text_backbone_info,
        leaf_head=leaf, other_threshold=cfg.other_threshold, tfidf=prep.tfidf,
        loss_weights={"w_cls": cfg.w_cls, "w_graph": cfg.w_graph, "w_gap": cfg.w_gap,
                      "w_nce": cfg.w_nce, "nce_temperature": cfg.nce_temperature,
                      "graph_margin": cfg.graph_margin},
        train_config=cfg.to_dict(), image_tail=prep.tuning.tail if prep.tuning else None)
    draft = Bundle.from_trained(fitted.model, prep.spaces.labels, **trained)
    val = data.used.val
    titles = feats.titles
    if cfg.fusion_image_weight is not None:
        fusion = FusionChoice(cfg.fusion_image_weight, {})
    else:
        fusion = choose_fusion_weight(draft, *feats.take(val), [titles[i] for i in val],
                                      data.y[leaf][val], cfg.fusion_grid)
    sums = {h: np.zeros((n, draft.dim), np.float64) for h, n in prep.heads.items()}
    for rows, image, text in feats.chunks(data.splits.train):  # every training row
        emb = draft.fuse_embeddings(draft.embed_features(image_feats=image),
                                    draft.embed_features(text_feats=text,
                                                         titles=[titles[i] for i in rows]),
                                    fusion.image_weight)
        for h, n in prep.heads.items():
            sums[h] += class_sums(emb, data.y[h][rows], n)
    centroids = {h: l2_normalize(v).astype(np.float32) for h, v in sums.items()}
    bundle = Bundle.from_trained(fitted.model, prep.spaces.labels, **trained,
                                 fusion_image_weight=fusion.image_weight, centroids=centroids)
    if not cfg.photo_visual_dims:
        return Assembled(bundle, fusion)
    from train.photo_search import PhotoGrid, fit_served_space

    grid = PhotoGrid(cfg.photo_visual_dims, cfg.photo_whiten, cfg.photo_weights,
                     cfg.photo_min_instance_r1, cfg.photo_colour_weights or (0.0,),
                     cfg.photo_leaf_tolerance, cfg.near_duplicate_max_rate)
    products, image, text, rows = _photo_rows(data)
    served, photo = fit_served_space(bundle, products, image, text, rows.train, rows.val,
                                     grid, cfg.seed, cache_dir=cfg.cache_dir or None)
    bundle = Bundle.from_trained(fitted.model, prep.spaces.labels, **trained,
                                 fusion_image_weight=fusion.image_weight, centroids=centroids,
                                 served=served,
                                 photo_search={"rule": photo.rule, **photo.setting})
    return Assembled(bundle, fusion, photo)


def evaluate(data: SplitData, bundle: Any, cfg: Any = None,
             timings: dict[str, float] | None = None,
             cache_dir: str | None = None) -> Evaluated:
    """Test-split metrics of the bundle and both baselines (train.evaluate); with a served
    space, also photo and title search of the test products against every product
    (train.photo_search.photo_report, the same baselines in the same run)."""
    from train.evaluate import evaluate as evaluate_splits

    with timed("evaluation", timings):
        evaluation, artifacts = evaluate_splits(bundle, data.train, data.test, cfg, val=data.val)
    if bundle.served is not None:
        from train.photo_search import photo_report

        products, image, text, rows = _photo_rows(data)
        with timed("photo search evaluation", timings):
            evaluation["photo_search"] = {
                **photo_report(bundle, products, image, text, text, rows.test,
                               getattr(cfg, "seed", 0), cache_dir,
                               frozen_image=data.feats.frozen_image),
                "rule": bundle.config.photo_search.get("rule", "")}
    return Evaluated(evaluation, artifacts)


def _photo_rows(data: SplitData) -> tuple[list[Any], np.ndarray, np.ndarray, Any]:
    """The products photo search is fit and scored against, their features, and each split's
    rows among them: the whole catalog in memory; when streaming, the held samples of the
    three splits together (a bounded database, so fewer distractors than the catalog)."""
    from train.splits import Splits

    feats = data.feats
    if not feats.streamed:
        return feats.products, feats.image, feats.text, data.splits
    held = data.held
    rows = np.unique(np.concatenate([held.train, held.val, held.test]))
    image, text = feats.take(rows)
    return ([feats.products[i] for i in rows], image, text,
            Splits(*(np.searchsorted(rows, r) for r in (held.train, held.val, held.test))))


def index(feats: Any, bundle: Any, out_dir: Path, cfg: TrainConfig,
          timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Every valid product embedded (fused) into a FAISS index; returns its manifest. Shard
    by shard when streaming: only the index vectors (what the index holds) are kept."""
    from train.build_index import index_products, streamed_index_vectors, write_index

    with timed("index build", timings):
        if not feats.streamed:
            return index_products(bundle, feats.products, feats.image, feats.text, out_dir,
                                  factory=cfg.index_factory, plan=cfg.index_plan,
                                  build=cfg.index_build)
        return write_index(bundle, feats.products, streamed_index_vectors(bundle, feats),
                           out_dir, factory=cfg.index_factory, plan=cfg.index_plan,
                           build=cfg.index_build)


def _streaming_note(prep: Prepared) -> str:
    """How a streamed run read its features and which rows its held samples have."""
    feats, held = prep.data.feats, prep.data.held
    return (f"features streamed from {len(feats.shards.files)} shards in "
            f"{feats.shards.directory} (more than streaming.min_products="
            f"{prep.cfg.streaming.min_products}); training, input standardisation, centroids "
            f"and the index read every row; held seeded samples: {len(held.val)} validation "
            f"rows (early stopping, fusion weight, photo queries), {len(held.train)} training "
            f"rows (photo-search block, baselines (a) and (b)), {len(held.test)} test rows "
            f"(evaluation; photo search against these three samples)")


def report(bundle_dir: Path, prep: Prepared, fitted: Fitted, assembled: Assembled,
           evaluated: Evaluated, manifest: dict[str, Any], index_dir: Path,
           timings: dict[str, float]) -> dict[str, Any]:
    """report.json / report.md / plots in the bundle directory; returns the report dict."""
    from train.report import write_report

    cfg, splits, spaces = prep.cfg, prep.data.splits, prep.spaces
    summary = prep.data.feats.catalog_summary
    result, fusion = fitted.result, assembled.fusion
    doc = {
        "evaluation": evaluated.evaluation,
        "data": {
            **{k: v for k, v in summary.items() if k != "rejects_by_reason"},
            "rejects_by_reason": summary.get("rejects_by_reason", {}),
            "splits": {"train": len(splits.train), "val": len(splits.val),
                       "test": len(splits.test)},
            "split_rule": splits.summary()["rule"],
            "train_only_classes": splits.summary()["train_only_classes"] or "none",
            "rare_classes": {h: list(ex) for h, ex in spaces.excluded.items()},
            "oversampled_rows": int(len(prep.train_rows) - len(splits.train)),
            **({"streaming": _streaming_note(prep)} if prep.data.held is not None else {}),
        },
        "label_spaces": spaces.summary(cfg.min_per_class),
        "training": {"best_epoch": result.best_epoch, "epochs": len(result.history),
                     "stopped_early": result.stopped_early,
                     "fusion_image_weight": fusion.image_weight,
                     "val_top1_by_fusion_weight": fusion.val_top1_by_weight or "n/a",
                     "image_tower": list(fitted.model.image_tower.hidden),
                     "w_nce": cfg.w_nce if fitted.w_nce is None else fitted.w_nce,
                     **({"image_tower_selection": fitted.tower_selection}
                        if fitted.tower_selection else {}),
                     # the image backbone's last blocks (train.backbone_tuning), when trained
                     **({"backbone_tuning": prep.tuning.summary()} if prep.tuning else {})},
        # the served space's validation grid, scores and rule (report.json only)
        **({"photo_selection": assembled.photo.to_dict()} if assembled.photo else {}),
        "bundle": {"dir": str(bundle_dir), "fingerprint": assembled.bundle.fingerprint},
        "index": {"dir": str(index_dir),
                  **{k: v for k, v in manifest.items() if k in INDEX_REPORT_KEYS}},
        "timings_s": timings,
        "config": cfg.to_dict(),
    }
    write_report(bundle_dir, doc, result.history, evaluated.artifacts)
    return doc
