"""The bundle's `config.json` as a frozen dataclass: what the towers look like, how vectors are
fused and classified, and (as provenance only) how the model was trained.

Reading is lenient where it can be: keys this code does not know, and the stored training
config, are kept as provenance and written back unchanged, never re-validated, so renaming a
training option does not break saved bundles. The model shape keys are required.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from embedder.errors import BundleError
from huse_common.vectors import PLAIN_SUM

FORMAT_VERSION = 1
METRIC = "ip"  # unit vectors, inner product = cosine
LEVEL_PREFIX = "level"  # heads named level1..levelN classify the category path
VERSIONED = ("huse-search", "torch", "numpy", "safetensors", "transformers", "scikit-learn")


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


@dataclass(frozen=True)
class BackboneInfo:
    spec: str  # embedder.backbones spec, e.g. "efficientnet-lite0", "minilm", "hf:/dir"
    dim: int  # feature width it produces
    # engine the training features came from ("onnx-int8" features differ from fp32 ones);
    # "" = not recorded (bundles written before it was)
    engine: str = ""
    # first trained block of a tuned tail (embedder.backbone_tail; its weights are a bundle
    # file); 0 = the packaged weights
    tuned_from: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "dim": self.dim,
                **({"engine": self.engine} if self.engine else {}),
                **({"tuned_from": self.tuned_from} if self.tuned_from else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackboneInfo:
        return cls(str(d["spec"]), int(d["dim"]), str(d.get("engine", "")),
                   int(d.get("tuned_from", 0)))


@dataclass(frozen=True)
class TowerShape:
    in_dim: int
    hidden: tuple[int, ...]
    dropout: float


@dataclass(frozen=True)
class BundleConfig:
    """Everything needed to rebuild and use the towers; `to_dict`/`from_dict` is config.json."""

    image_backbone: BackboneInfo
    text_backbone: BackboneInfo
    embed_dim: int
    image_tower: TowerShape
    text_tower: TowerShape
    heads: tuple[tuple[str, int], ...]  # (head name, n_classes), in label order
    leaf_head: str
    logit_scale: float = 1.0
    tfidf_dim: int = 0  # TF-IDF columns appended to the text backbone features
    fusion_image_weight: float = PLAIN_SUM  # w in normalize(w * img + (1 - w) * txt)
    other_threshold: float = 0.3  # top score below this -> flagged "other"
    metric: str = METRIC
    format_version: int = FORMAT_VERSION
    versions: Mapping[str, str] = field(default_factory=package_versions)
    loss_weights: Mapping[str, float] = field(default_factory=dict)  # provenance
    # The served space (embedder.visual.ServedSpace.config; its arrays are visual.npz):
    # visual_dim, visual_weight, near_duplicate_threshold, whiten, and the selection rule. Empty:
    # the index holds the HUSE embedding alone (bundles from before it existed).
    photo_search: Mapping[str, Any] = field(default_factory=dict)
    train_config: Mapping[str, Any] = field(default_factory=dict)  # provenance, as saved
    extra: Mapping[str, Any] = field(default_factory=dict)  # unknown keys, kept as saved

    def __post_init__(self) -> None:
        names = [h for h, _ in self.heads]
        if self.leaf_head not in names:
            raise BundleError(f"leaf head {self.leaf_head!r} is not among the heads {names}")
        if self.text_tower.in_dim != self.text_backbone.dim + self.tfidf_dim:
            raise BundleError(f"text tower takes {self.text_tower.in_dim} inputs, but the text "
                              f"backbone gives {self.text_backbone.dim} + {self.tfidf_dim} TF-IDF")
        if self.image_tower.in_dim != self.image_backbone.dim:
            raise BundleError(f"image tower takes {self.image_tower.in_dim} inputs, the image "
                              f"backbone gives {self.image_backbone.dim}")
        if not 0.0 <= self.fusion_image_weight <= 1.0:
            raise BundleError(f"fusion_image_weight must be in [0, 1], got "
                              f"{self.fusion_image_weight}")

    @property
    def head_names(self) -> list[str]:
        return [h for h, _ in self.heads]

    @property
    def levels(self) -> list[str]:
        return [h for h, _ in self.heads if h.startswith(LEVEL_PREFIX)]

    def to_dict(self) -> dict[str, Any]:
        """The config.json document (format version 1 layout)."""
        def tower(t: TowerShape) -> dict:
            return {"in_dim": t.in_dim, "hidden": list(t.hidden), "dropout": t.dropout}

        return {
            **self.extra,
            "format_version": self.format_version,
            "versions": dict(self.versions),
            "image_backbone": self.image_backbone.to_dict(),
            "text_backbone": self.text_backbone.to_dict(),
            "embed_dim": self.embed_dim,
            "image_tower": tower(self.image_tower),
            "text_tower": tower(self.text_tower),
            "tfidf_dim": self.tfidf_dim,
            "heads": [{"name": h, "n_classes": n} for h, n in self.heads],
            "logit_scale": self.logit_scale,
            "leaf_head": self.leaf_head,
            "levels": self.levels,
            "fusion_image_weight": self.fusion_image_weight,
            "metric": self.metric,
            "loss_weights": dict(self.loss_weights),
            "other_threshold": self.other_threshold,
            "train_config": dict(self.train_config),
            **({"photo_search": dict(self.photo_search)} if self.photo_search else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BundleConfig:
        """Parse config.json; BundleError names the missing or malformed key."""
        if d.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"format_version {d.get('format_version')!r}, this code reads "
                              f"{FORMAT_VERSION}")
        known = {f.name for f in fields(cls)} | {"levels"}  # levels: derived from heads
        try:
            return cls(
                image_backbone=BackboneInfo.from_dict(d["image_backbone"]),
                text_backbone=BackboneInfo.from_dict(d["text_backbone"]),
                embed_dim=int(d["embed_dim"]),
                image_tower=_tower(d["image_tower"]),
                text_tower=_tower(d["text_tower"]),
                heads=tuple((str(h["name"]), int(h["n_classes"])) for h in d["heads"]),
                leaf_head=str(d["leaf_head"]),
                logit_scale=float(d.get("logit_scale", 1.0)),
                tfidf_dim=int(d.get("tfidf_dim", 0)),
                # bundles written before the weight was chosen fused with the plain sum
                fusion_image_weight=float(d.get("fusion_image_weight", PLAIN_SUM)),
                other_threshold=float(d["other_threshold"]),
                metric=str(d.get("metric", METRIC)),
                versions=dict(d.get("versions", {})),
                loss_weights=dict(d.get("loss_weights", {})),
                train_config=dict(d.get("train_config", {})),
                photo_search=dict(d.get("photo_search", {})),
                extra={k: v for k, v in d.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"bad bundle config: {e!r}") from e


def _tower(d: Mapping[str, Any]) -> TowerShape:
    return TowerShape(int(d["in_dim"]), tuple(int(h) for h in d["hidden"]), float(d["dropout"]))


def build_model(config: BundleConfig):
    """HuseModel with the shapes in a bundle config (weights random until loaded)."""
    from embedder.towers import HuseModel, Tower

    d = config.embed_dim
    it, tt = config.image_tower, config.text_tower
    return HuseModel(
        Tower(it.in_dim, it.hidden, d, it.dropout),
        Tower(tt.in_dim, tt.hidden, d, tt.dropout),
        dict(config.heads),
        logit_scale=config.logit_scale,
    )
