"""The model bundle: one directory, one object that embeds images/titles and classifies.

Files, fingerprint, save and load: embedder.bundle_io. config.json: embedder.bundle_config.
A Bundle does not change once built (`from_trained` or `load`): its fingerprint is computed from
the bytes of its files, so it cannot go stale.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedder import bundle_io
from embedder.backbone_tail import TunedTail
from embedder.backbones import ENGINES
from embedder.bundle_config import BackboneInfo, BundleConfig, TowerShape, package_versions
from embedder.classify import (
    PATH_KEY,
    ancestor_columns,
    check_method,
    class_centroids,
    path_scores,
    rank_labels,
)
from embedder.errors import BundleError
from embedder.tfidf import TfidfText
from embedder.visual import ServedSpace, VisualBlock, served_search
from huse_common.vectors import PLAIN_SUM, fuse

__all__ = ["PATH_KEY", "Bundle", "BackboneInfo", "BundleConfig", "TfidfText", "class_centroids"]

logger = logging.getLogger(__name__)

TOWER_BATCH = 4096  # rows per tower forward pass when embedding features


class Bundle:
    """Trained towers + label spaces + centroids; the only place vectors are normalised."""

    def __init__(self, config: BundleConfig, model: Any, labels: Mapping[str, list[str]],
                 centroids: Mapping[str, np.ndarray] | None = None,
                 tfidf: TfidfText | None = None, device: str = "cpu", path: Path | None = None,
                 image_engine: str = "auto", files: Mapping[str, bytes] | None = None,
                 served: ServedSpace | None = None, text_engine: str = "auto",
                 image_tail: TunedTail | None = None):
        heads = config.head_names
        if list(labels) != heads:
            raise BundleError(f"label heads {list(labels)} differ from config heads {heads}")
        for name, n in config.heads:
            if len(labels[name]) != n:
                raise BundleError(f"head {name}: {len(labels[name])} labels but n_classes={n}")
        if bool(config.tfidf_dim) != (tfidf is not None):
            raise BundleError(f"config tfidf_dim={config.tfidf_dim} but tfidf "
                              f"{'given' if tfidf is not None else 'missing'}")
        for name, engine in (("image_engine", image_engine), ("text_engine", text_engine)):
            if engine not in ENGINES:
                raise ValueError(f"{name} must be one of {ENGINES}, got {engine!r}")
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.config = config
        self.model = model.to(device).eval()
        self.labels = {h: list(v) for h, v in labels.items()}
        self.centroids = dict(centroids or {})
        self.tfidf = tfidf
        self.device = device
        self.path = path
        # "auto" (both): the kind of features the bundle was trained on, where it runs here
        # (backbones.matching_engine), so training-time photo queries, API queries and the
        # index's rows come from one engine
        self.image_engine = image_engine
        self.text_engine = text_engine
        self._backbones: dict[str, Any] = {}
        self.served = served  # the index's space beside HUSE (embedder.visual); None: HUSE alone
        tail_from = image_tail.first_block if image_tail is not None else 0
        if tail_from != config.image_backbone.tuned_from:
            raise BundleError(f"config says the image backbone is tuned from block "
                              f"{config.image_backbone.tuned_from}, its tuned tail from "
                              f"{tail_from} (0: none)")
        self.image_tail = image_tail  # trained last blocks of the image backbone, or None
        if served is not None and not config.photo_search:
            raise BundleError("a served space needs its photo_search config entries")
        self._files = dict(files) if files is not None else None
        self._ancestors: np.ndarray | None = None

    @classmethod
    def from_trained(cls, model: Any, labels: Mapping[str, list[str]], *,
                     image_backbone: BackboneInfo, text_backbone: BackboneInfo, leaf_head: str,
                     other_threshold: float, tfidf: TfidfText | None = None,
                     centroids: Mapping[str, np.ndarray] | None = None,
                     fusion_image_weight: float = PLAIN_SUM,
                     loss_weights: Mapping[str, float] | None = None,
                     train_config: Mapping[str, Any] | None = None,
                     served: ServedSpace | None = None,
                     photo_search: Mapping[str, Any] | None = None,
                     image_tail: TunedTail | None = None,
                     device: str = "cpu") -> Bundle:
        """A bundle around a trained HuseModel: the config is derived from the model's shapes
        and the arguments, once; nothing is edited afterwards. `photo_search`: how `served` was
        chosen (rule, validation scores), kept in config.json beside its settings."""
        def shape(tower: Any) -> TowerShape:
            return TowerShape(tower.in_dim, tuple(tower.hidden), tower.dropout)

        config = BundleConfig(
            image_backbone=image_backbone, text_backbone=text_backbone, embed_dim=model.dim,
            image_tower=shape(model.image_tower), text_tower=shape(model.text_tower),
            heads=tuple((h, len(labels[h])) for h in model.head_names), leaf_head=leaf_head,
            logit_scale=model.logit_scale, tfidf_dim=tfidf.dim if tfidf is not None else 0,
            fusion_image_weight=float(fusion_image_weight), other_threshold=other_threshold,
            versions=package_versions(), loss_weights=dict(loss_weights or {}),
            train_config=dict(train_config or {}),
            photo_search={**served.config(), **(photo_search or {})} if served else {})
        return cls(config, model.cpu(), labels, centroids, tfidf, device=device, served=served,
                   image_tail=image_tail)

    # --- properties of the contract ---
    @property
    def heads(self) -> list[str]:
        return list(self.labels)

    @property
    def levels(self) -> list[str]:
        return self.config.levels

    @property
    def leaf_head(self) -> str:
        return self.config.leaf_head

    @property
    def dim(self) -> int:
        return int(self.config.embed_dim)

    @property
    def fusion_image_weight(self) -> float:
        """w in normalize(w * e_img + (1 - w) * e_txt)."""
        return self.config.fusion_image_weight

    @property
    def other_threshold(self) -> float:
        return self.config.other_threshold

    @property
    def files(self) -> dict[str, bytes]:
        """{file name: bytes} of every model file: as read by `load`, else serialised once."""
        if self._files is None:
            self._files = bundle_io.serialize(bundle_io.BundleParts(
                self.config, self.model, self.labels, self.centroids, self.tfidf, self.served,
                self.image_tail))
        return self._files

    @property
    def fingerprint(self) -> str:
        """sha256 over every model file (see embedder.bundle_io)."""
        return bundle_io.fingerprint(self.files)

    # --- embedding ---
    def _text_input(self, text_feats: np.ndarray, titles: Sequence[str] | None) -> np.ndarray:
        if self.tfidf is None:
            return text_feats
        if titles is None or len(titles) != len(text_feats):
            raise ValueError(f"this bundle's text tower takes TF-IDF: need {len(text_feats)} "
                             f"titles, got {None if titles is None else len(titles)}")
        return np.hstack([text_feats, self.tfidf.transform(titles)])

    def _run_tower(self, tower: Any, x: np.ndarray) -> np.ndarray:
        import torch

        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = []
        with torch.no_grad():
            for lo in range(0, len(x), TOWER_BATCH):
                outs.append(tower(torch.from_numpy(x[lo : lo + TOWER_BATCH]).to(self.device))
                            .float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.dim), np.float32)

    def embed_features(self, image_feats: np.ndarray | None = None,
                       text_feats: np.ndarray | None = None,
                       titles: Sequence[str] | None = None) -> np.ndarray:
        """(n, d) float32 unit vectors from frozen backbone features: image-only, text-only or
        fused (see `fuse_embeddings`). Titles are needed with TF-IDF."""
        if image_feats is None and text_feats is None:
            raise ValueError("give image_feats, text_feats or both")
        e_img = e_txt = None
        if image_feats is not None:
            e_img = self._run_tower(self.model.image_tower, image_feats)
        if text_feats is not None:
            text_feats = np.asarray(text_feats, dtype=np.float32)
            e_txt = self._run_tower(self.model.text_tower, self._text_input(text_feats, titles))
        if e_img is not None and e_txt is not None:
            if len(e_img) != len(e_txt):
                raise ValueError(f"{len(e_img)} image rows but {len(e_txt)} text rows")
            return self.fuse_embeddings(e_img, e_txt)
        return e_img if e_img is not None else e_txt

    def fuse_embeddings(self, e_img: np.ndarray, e_txt: np.ndarray,
                        image_weight: float | None = None) -> np.ndarray:
        """huse_common.vectors.fuse with w = the bundle's `fusion_image_weight` unless given."""
        w = self.fusion_image_weight if image_weight is None else image_weight
        return fuse(e_img, e_txt, w).astype(np.float32)

    def backbone(self, kind: str) -> Any:
        """The frozen image/text backbone, loaded on first use."""
        if kind not in self._backbones:
            from embedder.backbone_types import default_device
            from embedder.backbones import load_backbone, matching_engine

            info: BackboneInfo = getattr(self.config, f"{kind}_backbone")
            engine = self.image_engine if kind == "image" else self.text_engine
            if engine == "auto":
                engine = matching_engine(info.spec, self.device or default_device(), info.engine)
            bb = load_backbone(info.spec, device=self.device, engine=engine,
                               tail=self.image_tail if kind == "image" else None)
            if bb.dim != info.dim:
                raise BundleError(f"{kind} backbone {info.spec} gives {bb.dim}-d features, "
                                  f"bundle expects {info.dim}")
            self._backbones[kind] = bb
        return self._backbones[kind]

    def preprocess(self, images: Sequence[Any]) -> np.ndarray:
        """(n, 3, H, W) pixels of PIL RGB images for `embed(pixels=...)`: callers preprocess on
        their own threads and the model call only runs the network."""
        return self.backbone("image").preprocess_batch(list(images))

    def embed(self, images: Sequence[Any] | None = None,
              texts: Sequence[str] | None = None, pixels: np.ndarray | None = None) -> np.ndarray:
        """(n, d) float32 unit vectors from PIL RGB images, titles, or both (fused).

        `pixels` instead of `images`: the output of `preprocess`.
        """
        return self.embed_features(*self._features(images, texts, pixels), titles=texts)

    def _features(self, images: Sequence[Any] | None, texts: Sequence[str] | None,
                  pixels: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Frozen backbone features of the inputs of `embed`, checked."""
        if images is not None and pixels is not None:
            raise ValueError("give images or pixels, not both")
        n_images = len(images) if images is not None else None
        if pixels is not None:
            n_images = len(pixels)
        if n_images is None and texts is None:
            raise ValueError("give images, texts or both")
        if n_images is not None and texts is not None and n_images != len(texts):
            raise ValueError(f"{n_images} images but {len(texts)} texts")
        image_feats = None
        if pixels is not None:
            image_feats = self.backbone("image").encode_preprocessed(pixels)
        elif images is not None:
            image_feats = self.backbone("image").encode(list(images))
        text_feats = self.backbone("text").encode(list(texts)) if texts is not None else None
        return image_feats, text_feats

    # --- the served space (embedder.visual): what the index holds and how it is queried ---
    @property
    def index_dim(self) -> int:
        """Width of the index rows: HUSE, plus the visual block when there is one."""
        return self.dim + (self.served.visual_dim if self.served is not None else 0)

    def _visual(self) -> ServedSpace:
        if self.served is None:
            raise BundleError("this bundle has no visual block: near duplicates need one")
        return self.served

    @property
    def visual_block(self) -> VisualBlock:
        return self._visual().block

    @property
    def served_space(self) -> ServedSpace:
        """The served space; BundleError when the bundle has none."""
        return self._visual()

    @property
    def near_duplicate_threshold(self) -> float:
        return self._visual().near_duplicate_threshold

    def index_vectors(self, image_feats: np.ndarray | None, text_feats: np.ndarray | None,
                      titles: Sequence[str] | None = None) -> np.ndarray:
        """(n, index_dim) rows the index stores for products given by frozen features."""
        huse = self.embed_features(image_feats, text_feats, titles)
        if self.served is None:
            return huse
        visual = (self.served.block.transform(image_feats) if image_feats is not None
                  else np.zeros((len(huse), self.served.visual_dim), np.float32))
        return self.served.stored(huse, visual)

    def embed_parts(self, images: Sequence[Any] | None = None,
                    texts: Sequence[str] | None = None,
                    pixels: np.ndarray | None = None) -> np.ndarray:
        """(n, index_dim): the HUSE embedding (first `dim` columns, as `embed`) beside the
        visual block of the image (zeros without one); the input of `served_*`."""
        image_feats, text_feats = self._features(images, texts, pixels)
        huse = self.embed_features(image_feats, text_feats, titles=texts)
        if self.served is None:
            return huse
        visual = (self.served.block.transform(image_feats) if image_feats is not None
                  else np.zeros((len(huse), self.served.visual_dim), np.float32))
        return np.hstack([huse, visual])

    def served_stored(self, parts: np.ndarray, has_image: bool) -> np.ndarray:
        """Index rows from `embed_parts` rows."""
        if self.served is None:
            return parts
        visual = parts[:, self.dim:] if has_image else np.zeros_like(parts[:, self.dim:])
        return self.served.stored(parts[:, :self.dim], visual)

    def served_search(self, index: Any, parts: np.ndarray, has_image: bool, k: int,
                      visual_weight: float | None = None, wait: bool = True,
                      **filters: Any) -> tuple[list[Any], str | None]:
        """(hits, recognised product id or None) of one `embed_parts` row against the index
        (embedder.visual.served_search; `filters` go to index.search, `wait=False` to every
        index read); without a visual block, a plain HUSE search."""
        if self.served is None:
            return index.search(parts[None, :], k, wait=wait, **filters)[0], None
        return served_search(index, self.served, parts[:self.dim],
                             parts[self.dim:] if has_image else None, k, visual_weight, wait,
                             **filters)

    @property
    def served_prefix_dims(self) -> int | None:
        """Index columns that title queries use (the HUSE block; index.store's prefix index),
        None where the index holds the HUSE embedding alone."""
        return None if self.served is None else self.dim

    def served_probe_queries(self, stored: np.ndarray) -> dict[str, np.ndarray]:
        """Held-out queries of each kind the service sends that index rows alone do not stand
        for (ServedSpace.probe_queries), from index rows; none without a visual block."""
        return {} if self.served is None else self.served.probe_queries(stored)

    def served_requery(self, stored: np.ndarray, visual_weight: float | None = None
                       ) -> np.ndarray:
        """Query rows from index rows ("more like this" an indexed product)."""
        return stored if self.served is None else self.served.requery(stored, visual_weight)

    # --- classification (embedder.classify) ---
    def head_probs(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        """Softmax of each shared linear head on (n, d) embeddings."""
        import torch

        with torch.no_grad():
            logits = self.model.logits(torch.from_numpy(np.ascontiguousarray(emb, np.float32))
                                       .to(self.device))
            return {h: torch.softmax(z.float(), dim=1).cpu().numpy() for h, z in logits.items()}

    def centroid_scores(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        """Cosine similarity of (n, d) unit embeddings to each head's class centroids."""
        if not self.centroids:
            raise BundleError("this bundle has no centroids")
        emb = np.asarray(emb, dtype=np.float32)
        return {h: emb @ self.centroids[h].T for h in self.heads}

    def path_scores(self, scores: dict[str, np.ndarray], method: str) -> np.ndarray:
        """(n, n_leaf) whole-path scores (see embedder.classify.path_scores)."""
        if self._ancestors is None:
            self._ancestors = ancestor_columns(self.labels, self.levels, self.leaf_head)
        return path_scores(scores, self.levels, self._ancestors, method)

    def classify_embeddings(self, emb: np.ndarray, method: str = "linear", k: int = 5,
                            other_threshold: float | None = None) -> list[dict[str, dict]]:
        """Per row: {head: {"labels": [(label, score)] * k, "other": top score < threshold}},
        plus "path": the best whole category paths (see `path_scores`). Scores are
        probabilities (linear) or cosine similarities (centroid). The threshold is the
        bundle's unless `other_threshold` overrides it (a deployment's setting)."""
        check_method(method)
        scores = self.head_probs(emb) if method == "linear" else self.centroid_scores(emb)
        ranked_by = {**scores, PATH_KEY: self.path_scores(scores, method)}
        names = {**self.labels, PATH_KEY: self.labels[self.leaf_head]}
        threshold = self.other_threshold if other_threshold is None else other_threshold
        return rank_labels(ranked_by, names, k, threshold)

    def classify(self, images: Sequence[Any] | None = None, texts: Sequence[str] | None = None,
                 method: str = "linear", k: int = 5) -> list[dict[str, dict]]:
        return self.classify_embeddings(self.embed(images, texts), method=method, k=k)

    # --- persistence (embedder.bundle_io) ---
    def save(self, out_dir: str | Path) -> Path:
        """Write the model files (each atomically); existing report files are left alone."""
        out = Path(out_dir)
        bundle_io.save_files(self.files, out)
        self.path = out
        logger.info("saved bundle to %s (fingerprint %s)", out, self.fingerprint[:12])
        return out

    @classmethod
    def load(cls, bundle_dir: str | Path, device: str = "cpu",
             image_engine: str = "auto", text_engine: str = "auto") -> Bundle:
        """Strict load (see bundle_io.read_files); the fingerprint comes from the bytes read.
        `image_engine` / `text_engine` pick how each backbone runs when first used (one of
        embedder.backbones.ENGINES)."""
        root = Path(bundle_dir)
        parts, files = bundle_io.read_files(root)
        return cls(parts.config, parts.model, parts.labels, parts.centroids, parts.tfidf,
                   device=device, path=root, image_engine=image_engine, files=files,
                   served=parts.served, text_engine=text_engine, image_tail=parts.image_tail)
