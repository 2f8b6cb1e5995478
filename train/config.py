"""Training configuration: one flat dataclass of documented defaults, overridable in layers.

Precedence (as nanoGPT's configurator, without exec): dataclass defaults, then a JSON preset
(`--config file.json`), then `--set key=value` overrides parsed with `ast.literal_eval`. Every
override is type-checked against the field's declared type and unknown keys are an error.
The defaults describe a small, general run that fits on a CPU for any catalog.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from index.plan import BuildConfig, IndexPlan

logger = logging.getLogger(__name__)

COLUMN_ROLES = ("id", "title", "image", "category")  # catalog columns --column can map


class ConfigError(ValueError):
    """A configuration the user can fix: the message names the key and what it accepts."""


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type for its key."""


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (1, 5, 10)  # retrieval recall@k
    topk: tuple[int, ...] = (1, 5)  # classification top-k accuracies
    other_threshold: float | None = None  # None = the bundle's own threshold
    knn_k: int = 10  # neighbours voting in baseline (b)
    max_confusion_classes: int = 20  # the confusion plot shows the largest leaf classes
    n_hardest: int = 10  # leaf classes with the lowest fused linear recall listed in the report
    seed: int | None = None  # hold-out for baseline C, map subsample, t-SNE; None = the run's
    # Inverse L2 strengths tried for (a); on the fashion catalog val top-1 was flat over 0.1-10
    # (95.4-95.9 %) and 0.01 cost 5x the lbfgs time for a worse score, hence this grid.
    logreg_cs: tuple[float, ...] = (0.1, 1.0, 10.0)
    logreg_max_iter: int = 500  # lbfgs iterations (enough to converge on standardised feats)
    holdout_frac: float = 0.15  # training share held out to pick C when there is no val split
    map_max_points: int = 2000  # embedding-map points (t-SNE cost grows with n^2)

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1 or not self.topk or min(self.topk) < 1:
            raise ConfigError(f"ks and topk must be positive, got ks={self.ks} topk={self.topk}")
        if self.knn_k < 1 or self.max_confusion_classes < 1 or self.map_max_points < 2:
            raise ConfigError(f"knn_k={self.knn_k}, max_confusion_classes="
                             f"{self.max_confusion_classes}, map_max_points="
                             f"{self.map_max_points} are out of range")
        if not self.logreg_cs or min(self.logreg_cs) <= 0 or not 0 < self.holdout_frac < 1:
            raise ConfigError(f"logreg_cs must be > 0 and holdout_frac in (0, 1), got "
                             f"{self.logreg_cs}, {self.holdout_frac}")


@dataclass
class StreamConfig:
    """When and how training reads features from feature shards (embedder.shards) instead of
    holding them (train.streaming): past `min_products` valid products, memory stays bounded
    by the shuffle buffer and the samples below, plus O(n) ids, titles and labels."""

    # Stream above this many valid products (0 = always). In memory a product costs ~15 kB
    # (the backbones' floats and 2000 dense TF-IDF columns): 200k is ~3 GB.
    min_products: int = 200_000
    shards: str = ""  # feature shard dir to read (features --engine ray --out-shards DIR)
    shard_size: int = 10_000  # products per shard the local path writes
    shuffle_shards: int = 4  # shards whose training rows are shuffled together (the buffer)
    max_val_rows: int = 20_000  # seeded sample of the validation split held in memory
    max_test_rows: int = 20_000  # seeded sample of the test split evaluated
    max_train_sample: int = 20_000  # training rows for the photo-search fit and baselines

    def __post_init__(self) -> None:
        sizes = (self.shard_size, self.shuffle_shards, self.max_val_rows, self.max_test_rows,
                 self.max_train_sample)
        if self.min_products < 0 or min(sizes) < 1:
            raise ConfigError(f"streaming: min_products must be >= 0 and shard_size, "
                              f"shuffle_shards, max_*_rows, max_train_sample >= 1, got {self}")


@dataclass
class BackboneTuning:
    """Training the image backbone's last blocks on the catalog's leaf classes before the towers
    (train.backbone_tuning; EfficientNet backbones, in-memory catalogs). The frozen ImageNet
    features put look-alike classes together; on fashion-products training blocks 13+ lifted
    photo leaf top-1 ~3 points and text->image recall ~4 (docs/ablation.md)."""

    first_block: int = 13  # first trained block (Lite0 has 16; the head conv trains too); 0 = off
    # fewer training products than this: the backbone stays frozen (too few photos to move
    # ~1.5M weights without overfitting them)
    min_train_products: int = 1000
    max_train_products: int = 20_000  # seeded sample of the training split beyond this
    epochs: int = 12  # the validation split picks the epoch
    lr: float = 3e-4  # the trained blocks (AdamW); the linear head trains at head_lr_factor x
    head_lr_factor: float = 10.0
    weight_decay: float = 1e-4
    batch_size: int = 64
    label_smoothing: float = 0.1
    dropout: float = 0.2  # before the linear head
    calibration_images: int = 256  # training photos that fit the int8 activation ranges

    def __post_init__(self) -> None:
        if self.first_block < 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"backbone_tuning: need first_block >= 0, epochs, batch_size >= 1 "
                              f"and lr > 0, got {self}")


@dataclass
class TrainConfig:
    # --- data and output ---
    catalog: str = ""  # catalog CSV/JSONL (required by the pipeline)
    out: str = ""  # output dir: OUT/bundle, OUT/index, OUT/checkpoints, OUT/rejects.csv
    cache_dir: str = ""  # feature cache; "" = $HUSE_CACHE_DIR or ~/.cache/huse/features
    image_backbone: str = "efficientnet-lite0+colour"  # frozen image encoder spec (DESIGN.md;
    # "+colour" appends a colour histogram, embedder.colour)
    text_backbone: str = "minilm"  # frozen text encoder spec; also embeds class names
    # the image backbone's last blocks trained first (--set backbone_tuning.first_block=0: off)
    backbone_tuning: BackboneTuning = field(default_factory=BackboneTuning)
    # --- model (HUSE towers) ---
    embed_dim: int = 256  # D of the universal space
    # image-tower hidden widths to try; with more than one, each is trained and the one the
    # validation split prefers is kept (train/tower_search.py states the rule). The paper's
    # 5 x 512 is one candidate: on a few thousand products it classifies photos ~4 points worse
    # than one or two layers (docs/ablation.md), on a large catalog depth may pay.
    image_towers: tuple[tuple[int, ...], ...] = ((512,), (512, 512), (512, 512, 512, 512, 512))
    tower_top1_tolerance: float = 0.01  # image-tower choice: fused top-1 band below the best
    text_tower: tuple[int, ...] = (512, 512)  # hidden widths (paper: 2 x 512)
    dropout: float = 0.15  # after every hidden ReLU
    logit_scale: float = 16.0  # heads see logit_scale * unit embedding (see HuseModel)
    use_tfidf: bool = True  # append TF-IDF of the title to the text features (as the paper)
    tfidf_max_features: int = 2000  # TF-IDF vocabulary size (unigrams + bigrams)
    # --- losses: total = w_cls * L_cls + w_graph * L_graph + w_gap * L_gap + w_nce * L_nce ---
    w_cls: float = 1.0  # cross-entropy of the shared heads on image and text embeddings
    w_graph: float = 1.0  # semantic graph loss (pairwise distances toward class-name distances)
    w_gap: float = 0.5  # cross-modal gap loss (image and text of one product pulled together)
    graph_margin: float = 0.5  # only class pairs with A_ij < margin are constrained
    # symmetric InfoNCE between the image and text embeddings of the batch's products (pushes
    # other products apart, which L_gap never does; same-class products are not negatives);
    # 0 = off. Chosen on validation over three seeds with the shallow image towers
    # (docs/ablation.md): 0.5 lifts validation image->text / text->image R@1 by 1.6 / 1.4
    # points and fused top-1 by 0.4 (with the paper's 5 x 512 tower it cost top-1 instead).
    w_nce: float = 0.5
    # other InfoNCE weights tried with the chosen image tower and kept when the validation split
    # prefers them (train/tower_search.py rule): InfoNCE needs titles that describe their
    # photos, which not every catalog has
    w_nce_alternatives: tuple[float, ...] = (0.0,)
    nce_temperature: float = 0.1  # softmax temperature of L_nce (configured, not learned)
    # --- optimisation ---
    lr: float = 1e-3  # AdamW learning rate (constant; early stopping ends the run)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    batch_size: int = 256  # products per step (both modalities of each)
    max_epochs: int = 60  # upper bound; early stopping usually ends sooner
    patience: int = 10  # epochs without a better val score (small val splits are noisy)
    seed: int = 0  # splits, initialisation, shuffling, dropout
    # --- splits and imbalance ---
    val_frac: float = 0.1  # per leaf class, for early stopping
    test_frac: float = 0.2  # per leaf class, for the report
    min_per_class: int = 3  # classes with fewer training items leave the head's label space
    oversample_percentile: float | None = None  # e.g. 50.0: rare classes resampled up to it
    # --- heads and inference ---
    attribute_heads: tuple[str, ...] = ()  # extra heads on catalog columns, e.g. ("gender",)
    other_threshold: float = 0.3  # top probability below this -> flagged "other"
    # Fused vector = normalize(w * img + (1 - w) * txt) of the unit tower outputs. None: w is
    # picked on the validation split from fusion_grid (fused leaf top-1; ties go to 0.5, the
    # paper's plain sum), so a catalog whose titles say more than its photos (or the reverse)
    # leans on the stronger modality. A float fixes w.
    fusion_image_weight: float | None = None
    fusion_grid: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    # catalog column names by role when they differ, e.g. {"id": "sku", "title": "name"}
    catalog_columns: dict[str, str] = field(default_factory=dict)
    # --- served space (embedder.visual): the index holds HUSE beside a visual block ---
    # Grids searched on the validation split's photo queries (cropped, mirrored, JPEG) by the
    # rule in train/photo_search.py; photo_visual_dims=() serves the HUSE embedding alone.
    photo_visual_dims: tuple[int, ...] = (512, 1024)  # PCA components of the visual block
    photo_whiten: tuple[float, ...] = (0.5, 0.75)  # whitening power of the visual block
    photo_weights: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    photo_min_instance_r1: float = 0.97  # photos must find their own product this often
    # colour histogram's share of the visual block (with a "+colour" image backbone)
    photo_colour_weights: tuple[float, ...] = (0.0, 0.15, 0.3, 0.45, 0.6)
    photo_leaf_tolerance: float = 0.01  # leaf P@10 given up, at most, for look-alike attributes
    # near-duplicate listing: at most this share of validation products may have their nearest
    # other product at or above the threshold (listings a reviewer would see by chance)
    near_duplicate_max_rate: float = 0.02
    # --- index ---
    index_factory: str = "auto"  # FAISS factory string or "auto" (chosen by index size)
    index_plan: IndexPlan = field(default_factory=IndexPlan)  # thresholds behind "auto"
    index_build: BuildConfig = field(default_factory=BuildConfig)  # recall measured at build
    # --- evaluation (--set evaluation.knn_k=20) ---
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    # --- streaming from feature shards (--set streaming.min_products=0) ---
    streaming: StreamConfig = field(default_factory=StreamConfig)
    # --- runtime ---
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda"
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    num_workers: int = 2  # image decoding workers during feature extraction
    feature_batch_size: int = 32  # backbone batch size during feature extraction
    # ONNX Runtime image model calls run side by side in extraction, one thread each (0: one
    # per core; embedder.features.model_calls_for)
    feature_model_calls: int = 0
    resume: bool = False  # continue from OUT/checkpoints/last.pt
    overwrite: bool = False  # replace a model already in OUT (otherwise refused)
    show_progress: bool = False  # tqdm bars (the CLI turns them on)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, saved as is

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def eval_config(self) -> EvalConfig:
        """The evaluation settings, seeded with the run's seed unless set on their own."""
        if self.evaluation.seed is not None:
            return self.evaluation
        return dataclasses.replace(self.evaluation, seed=self.seed)

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the bad value; return self for chaining."""
        if self.embed_dim <= 0:
            raise ConfigError(f"embed_dim must be > 0, got {self.embed_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.val_frac < 0 or self.test_frac < 0 or self.val_frac + self.test_frac >= 1:
            raise ConfigError(f"need val_frac, test_frac >= 0 and val_frac + test_frac < 1, "
                             f"got {self.val_frac}, {self.test_frac}")
        if self.min_per_class < 1:
            raise ConfigError(f"min_per_class must be >= 1, got {self.min_per_class}")
        if self.feature_model_calls < 0:
            raise ConfigError(f"feature_model_calls must be >= 0 (0: one per core), "
                              f"got {self.feature_model_calls}")
        if self.oversample_percentile is not None and not 0 < self.oversample_percentile <= 100:
            raise ConfigError(f"oversample_percentile must be in (0, 100] or None, "
                             f"got {self.oversample_percentile}")
        if min(self.w_cls, self.w_graph, self.w_gap, self.w_nce, *self.w_nce_alternatives) < 0:
            raise ConfigError(f"loss weights must be >= 0, got w_cls={self.w_cls}, "
                             f"w_graph={self.w_graph}, w_gap={self.w_gap}, w_nce={self.w_nce}, "
                             f"w_nce_alternatives={self.w_nce_alternatives}")
        if self.nce_temperature <= 0:
            raise ConfigError(f"nce_temperature must be > 0, got {self.nce_temperature}")
        if (any(d < 1 for d in self.photo_visual_dims)
                or not all(0.0 <= x <= 1.0 for x in (*self.photo_whiten, *self.photo_weights,
                                                     *self.photo_colour_weights,
                                                     self.photo_min_instance_r1,
                                                     self.photo_leaf_tolerance,
                                                     self.near_duplicate_max_rate))
                or not all(c < 1.0 for c in self.photo_colour_weights)
                or (self.photo_visual_dims and not (self.photo_whiten and self.photo_weights))):
            raise ConfigError(f"photo_visual_dims must be >= 1, photo_whiten, photo_weights, "
                              f"photo_min_instance_r1, photo_leaf_tolerance and "
                              f"near_duplicate_max_rate in [0, 1], photo_colour_weights in "
                              f"[0, 1) (grids non-empty), got "
                              f"{self.photo_visual_dims}, {self.photo_whiten}, "
                              f"{self.photo_weights}, {self.photo_colour_weights}, "
                              f"{self.photo_min_instance_r1}, {self.photo_leaf_tolerance}, "
                              f"{self.near_duplicate_max_rate}")
        if self.logit_scale <= 0:
            raise ConfigError(f"logit_scale must be > 0, got {self.logit_scale}")
        if (not self.image_towers or any(min(t, default=1) < 1 for t in self.image_towers)
                or len(set(self.image_towers)) != len(self.image_towers)
                or not 0.0 <= self.tower_top1_tolerance <= 1.0):
            raise ConfigError(f"image_towers must be distinct tuples of widths >= 1 (() = linear) "
                              f"(at least one) and tower_top1_tolerance in [0, 1], got "
                              f"{self.image_towers}, {self.tower_top1_tolerance}")
        weights = (*self.fusion_grid, *(() if self.fusion_image_weight is None
                                         else (self.fusion_image_weight,)))
        if not self.fusion_grid or not all(0.0 <= w <= 1.0 for w in weights):
            raise ConfigError(f"fusion weights must be in [0, 1] (and the grid non-empty), got "
                             f"fusion_image_weight={self.fusion_image_weight}, "
                             f"fusion_grid={self.fusion_grid}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto|cpu|cuda, got {self.device!r}")
        for name in ("batch_size", "max_epochs", "patience", "tfidf_max_features"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown_roles = sorted(set(self.catalog_columns) - set(COLUMN_ROLES))
        if unknown_roles or not all(isinstance(v, str) and v for v in
                                    self.catalog_columns.values()):
            raise ConfigError(f"catalog_columns maps the roles {COLUMN_ROLES} to non-empty column "
                             f"names, got {self.catalog_columns}")
        return self


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Return value coerced to the declared type (int -> float, list -> tuple) or raise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(key, value, option)
            except ConfigTypeError:
                continue
        raise ConfigTypeError(f"{key}: {value!r} ({type(value).__name__}) does not match {hint}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):  # a nested config saved as a dict (to_dict)
            return apply_overrides(hint(), value, prefix=f"{key}.")
    elif hint is type(None):
        if value is None:
            return None
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            (item_hint, _ellipsis) = typing.get_args(hint)
            return tuple(_check_type(key, v, item_hint) for v in value)
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    raise ConfigTypeError(f"{key}: {value!r} ({type(value).__name__}) does not match {hint}")


def apply_overrides(cfg: Any, overrides: Mapping[str, Any], prefix: str = "") -> Any:
    """Return a copy of the config dataclass `cfg` with overrides applied. A dotted key
    ("evaluation.knn_k") sets a field of a nested config; unknown keys -> ConfigError."""
    hints = typing.get_type_hints(type(cfg))
    known = {f.name for f in fields(cfg)}
    nested: dict[str, dict[str, Any]] = {}
    flat = {}
    for key, value in overrides.items():
        head, dot, rest = key.partition(".")
        if dot and head in known and dataclasses.is_dataclass(hints[head]):
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ConfigError(f"unknown config keys {[prefix + k for k in unknown]}; known: "
                          f"{sorted(prefix + k for k in known)}")
    checked = {k: _check_type(prefix + k, v, hints[k]) for k, v in flat.items()}
    for head, sub in nested.items():
        checked[head] = apply_overrides(checked.get(head, getattr(cfg, head)), sub,
                                        prefix=f"{prefix}{head}.")
    try:
        return dataclasses.replace(cfg, **checked)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a nested config's own checks (__post_init__)
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def config_keys(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every settable key (dotted for nested configs) with its current value."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(config_keys(value, prefix=f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def lenient_overrides(cfg: TrainConfig,
                      overrides: Mapping[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """Apply the overrides that are known and type-check; return the rest (e.g. a saved
    bundle's keys renamed or retyped since) instead of raising."""
    hints = typing.get_type_hints(type(cfg))
    known = {f.name for f in fields(cfg)}
    applied, ignored = {}, {}
    for key, value in overrides.items():
        try:
            if key not in known:
                raise ConfigError(key)
            applied[key] = _check_type(key, value, hints[key])
        except ConfigError:
            ignored[key] = value
    return dataclasses.replace(cfg, **applied), ignored


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """Parse `key=value` strings; values go through literal_eval, bare words stay strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


def read_preset(path: str | Path) -> dict[str, Any]:
    """A JSON preset file as a dict; ConfigError when it is missing or not a JSON object."""
    try:
        preset = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--config {path}: not a readable JSON file ({e})") from None
    if not isinstance(preset, dict):
        raise ConfigError(f"--config {path}: expected a JSON object, got "
                          f"{type(preset).__name__}")
    return preset


def resolve_config(
    config_file: str | Path | None = None,
    sets: Iterable[str] = (),
    **explicit: Any,
) -> TrainConfig:
    """Defaults, then the JSON preset, then `--set` items, then explicit keyword values."""
    cfg = TrainConfig()
    if config_file:
        cfg = apply_overrides(cfg, read_preset(config_file))
    cfg = apply_overrides(cfg, parse_set(sets))
    cfg = apply_overrides(cfg, {k: v for k, v in explicit.items() if v is not None})
    return cfg.validate()
