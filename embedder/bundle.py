"""The model bundle: one directory, one object that embeds images/titles and classifies.

Directory layout (format version 1):
- `config.json`: format version, package versions, backbone specs and dims, tower shapes,
  embedding dim, heads (name, n_classes), leaf head, label levels, loss weights, "other"
  threshold, fusion, metric and the resolved training config;
- `towers.safetensors`: HuseModel state dict (towers incl. input normalisation, shared heads);
- `labels.json`: {"separator": " > ", "heads": {head: [class names in label-index order]}};
- `centroids.npz`: one (C_head, d) float32 array per head, keyed by head name (unit-norm means
  of the training split's fused embeddings);
- `tfidf.json` when the text tower takes TF-IDF: vocabulary, idf, n-gram range (no pickle);
- `report.json`, `report.md`, `plots/*.png` written beside them by train.report.
`fingerprint` = sha256(config.json bytes + towers.safetensors bytes): the index manifest
records it and the API refuses a mismatched pair.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from embedder.backbones import ENGINES
from embedder.errors import BundleError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "towers.safetensors"
LABELS_FILE = "labels.json"
CENTROIDS_FILE = "centroids.npz"
TFIDF_FILE = "tfidf.json"
LABEL_SEPARATOR = " > "
PATH_KEY = "path"  # classify output: the best consistent category paths
_VERSIONED = ("huse-search", "torch", "numpy", "safetensors", "transformers", "scikit-learn")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class TfidfText:
    """TF-IDF of titles, stored as plain vocabulary + idf (sklearn's smooth idf, sublinear tf,
    L2-normalised rows), so a bundle never unpickles code."""

    vocabulary: dict[str, int]
    idf: np.ndarray
    ngram_range: tuple[int, int] = (1, 2)
    _vectorizer: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def fit(cls, titles: Sequence[str], max_features: int,
            ngram_range: tuple[int, int] = (1, 2)) -> TfidfText:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(max_features=max_features, ngram_range=ngram_range,
                              sublinear_tf=True, dtype=np.float32)
        vec.fit(list(titles))
        vocab = {str(t): int(i) for t, i in vec.vocabulary_.items()}
        return cls(vocab, np.asarray(vec.idf_, dtype=np.float32), tuple(ngram_range))

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def transform(self, titles: Sequence[str]) -> np.ndarray:
        """(n, dim) float32: (1 + log tf) * idf, rows L2-normalised (TfidfVectorizer's formula)."""
        if self._vectorizer is None:
            from sklearn.feature_extraction.text import CountVectorizer

            self._vectorizer = CountVectorizer(vocabulary=self.vocabulary,
                                               ngram_range=self.ngram_range, dtype=np.float32)
        counts = self._vectorizer.transform(list(titles)).astype(np.float32)
        counts.data = 1.0 + np.log(counts.data)
        dense = counts.multiply(self.idf[None, :]).toarray().astype(np.float32)
        return _l2n(dense).astype(np.float32)

    def to_dict(self) -> dict:
        return {"vocabulary": self.vocabulary, "idf": self.idf.tolist(),
                "ngram_range": list(self.ngram_range), "sublinear_tf": True, "norm": "l2"}

    @classmethod
    def from_dict(cls, d: dict) -> TfidfText:
        vocab, idf = d["vocabulary"], np.asarray(d["idf"], dtype=np.float32)
        if len(vocab) != len(idf) or sorted(vocab.values()) != list(range(len(idf))):
            raise BundleError(f"tfidf.json: vocabulary ({len(vocab)}) and idf ({len(idf)}) "
                              "do not match")
        return cls(vocab, idf, tuple(d["ngram_range"]))


def build_model(config: dict):
    """HuseModel with the shapes in a bundle config (weights random until loaded)."""
    from embedder.towers import HuseModel, Tower

    d = config["embed_dim"]
    it, tt = config["image_tower"], config["text_tower"]
    return HuseModel(
        Tower(it["in_dim"], it["hidden"], d, it["dropout"]),
        Tower(tt["in_dim"], tt["hidden"], d, tt["dropout"]),
        {h["name"]: h["n_classes"] for h in config["heads"]},
        logit_scale=config.get("logit_scale", 1.0),
    )


def model_config(
    *, image_backbone: dict, text_backbone: dict, embed_dim: int, image_hidden: Sequence[int],
    text_hidden: Sequence[int], dropout: float, tfidf_dim: int, heads: dict[str, int],
    leaf_head: str, logit_scale: float, loss_weights: dict, other_threshold: float,
    train_config: dict, fusion_image_weight: float = 0.5,
) -> dict:
    """The config.json dict (what `build_model` and `Bundle.load` read back)."""
    return {
        "format_version": FORMAT_VERSION,
        "versions": package_versions(),
        "image_backbone": dict(image_backbone),  # {"spec", "dim"}
        "text_backbone": dict(text_backbone),
        "embed_dim": embed_dim,
        "image_tower": {"in_dim": image_backbone["dim"], "hidden": list(image_hidden),
                        "dropout": dropout},
        "text_tower": {"in_dim": text_backbone["dim"] + tfidf_dim, "hidden": list(text_hidden),
                       "dropout": dropout},
        "tfidf_dim": tfidf_dim,
        "heads": [{"name": h, "n_classes": n} for h, n in heads.items()],
        "logit_scale": logit_scale,
        "leaf_head": leaf_head,
        "levels": [h for h in heads if h.startswith("level")],
        "fusion_image_weight": fusion_image_weight,
        "metric": "ip",
        "loss_weights": dict(loss_weights),
        "other_threshold": other_threshold,
        "train_config": train_config,
    }


class Bundle:
    """Trained towers + label spaces + centroids; the only place vectors are normalised."""

    def __init__(self, config: dict, model: Any, labels: dict[str, list[str]],
                 centroids: dict[str, np.ndarray] | None = None, tfidf: TfidfText | None = None,
                 device: str = "cpu", path: Path | None = None, image_engine: str = "torch"):
        heads = [h["name"] for h in config["heads"]]
        if list(labels) != heads:
            raise BundleError(f"label heads {list(labels)} differ from config heads {heads}")
        for h in config["heads"]:
            if len(labels[h["name"]]) != h["n_classes"]:
                raise BundleError(f"head {h['name']}: {len(labels[h['name']])} labels but "
                                  f"n_classes={h['n_classes']}")
        if bool(config.get("tfidf_dim")) != (tfidf is not None):
            raise BundleError(f"config tfidf_dim={config.get('tfidf_dim')} but tfidf "
                              f"{'given' if tfidf is not None else 'missing'}")
        if image_engine not in ENGINES:
            raise ValueError(f"image_engine must be one of {ENGINES}, got {image_engine!r}")
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.config = config
        self.model = model.to(device).eval()
        self.labels = labels
        self.centroids = centroids or {}
        self.tfidf = tfidf
        self.device = device
        self.path = path
        self.image_engine = image_engine  # "torch" or "onnx" (see backbones.load_backbone)
        self._backbones: dict[str, Any] = {}
        self._fingerprint: str | None = None

    # --- properties of the contract ---
    @property
    def heads(self) -> list[str]:
        return list(self.labels)

    @property
    def levels(self) -> list[str]:
        return list(self.config["levels"])

    @property
    def leaf_head(self) -> str:
        return self.config["leaf_head"]

    @property
    def dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def fusion_image_weight(self) -> float:
        """w in normalize(w * e_img + (1 - w) * e_txt); bundles before it existed used 0.5."""
        return float(self.config.get("fusion_image_weight", 0.5))

    @property
    def other_threshold(self) -> float:
        return float(self.config["other_threshold"])

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            config_bytes, weights_bytes = self._serialize()
            self._fingerprint = hashlib.sha256(config_bytes + weights_bytes).hexdigest()
        return self._fingerprint

    # --- embedding ---
    def _text_input(self, text_feats: np.ndarray, titles: Sequence[str] | None) -> np.ndarray:
        if self.tfidf is None:
            return text_feats
        if titles is None or len(titles) != len(text_feats):
            raise ValueError(f"this bundle's text tower takes TF-IDF: need {len(text_feats)} "
                             f"titles, got {None if titles is None else len(titles)}")
        return np.hstack([text_feats, self.tfidf.transform(titles)])

    def _run_tower(self, tower: Any, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        import torch

        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = []
        with torch.no_grad():
            for lo in range(0, len(x), batch_size):
                outs.append(tower(torch.from_numpy(x[lo : lo + batch_size]).to(self.device))
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
        """normalize(w * normalize(e_img) + (1 - w) * normalize(e_txt)), w = the bundle's
        `fusion_image_weight` unless given."""
        w = self.fusion_image_weight if image_weight is None else image_weight
        return _l2n(w * _l2n(e_img) + (1.0 - w) * _l2n(e_txt)).astype(np.float32)

    def backbone(self, kind: str) -> Any:
        """The frozen image/text backbone, loaded on first use."""
        if kind not in self._backbones:
            from embedder.backbones import load_backbone

            spec = self.config[f"{kind}_backbone"]["spec"]
            engine = self.image_engine if kind == "image" else "auto"
            bb = load_backbone(spec, device=self.device, engine=engine)
            if bb.dim != self.config[f"{kind}_backbone"]["dim"]:
                raise BundleError(f"{kind} backbone {spec} gives {bb.dim}-d features, bundle "
                                  f"expects {self.config[f'{kind}_backbone']['dim']}")
            self._backbones[kind] = bb
        return self._backbones[kind]

    def embed(self, images: Sequence[Any] | None = None,
              texts: Sequence[str] | None = None, pixels: np.ndarray | None = None) -> np.ndarray:
        """(n, d) float32 unit vectors from PIL RGB images, titles, or both (fused).

        `pixels` instead of `images`: the (n, 3, H, W) output of the image backbone's
        `preprocess_batch`, so callers can preprocess on their own threads.
        """
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
        return self.embed_features(image_feats, text_feats, titles=texts)

    # --- classification ---
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

    def _ancestor_columns(self) -> np.ndarray:
        """(levels, n_leaf): the column of each leaf class's ancestor in each level head, -1
        where that ancestor is not in the level's label space (a rare parent)."""
        if not hasattr(self, "_ancestors"):
            leaves = self.labels[self.leaf_head]
            cols = np.full((len(self.levels), len(leaves)), -1, dtype=np.int64)
            for li, head in enumerate(self.levels):
                index = {c: j for j, c in enumerate(self.labels[head])}
                depth = li + 1
                for j, leaf in enumerate(leaves):
                    parts = leaf.split(LABEL_SEPARATOR)
                    cols[li, j] = index.get(LABEL_SEPARATOR.join(parts[:depth]), -1)
            self._ancestors = cols
        return self._ancestors

    def path_scores(self, scores: dict[str, np.ndarray], method: str) -> np.ndarray:
        """(n, n_leaf) scores of whole category paths from per-level scores, so one answer is
        consistent at every level: the product of the level probabilities (linear) or the mean
        of the level cosines (centroid); levels where an ancestor is unknown are skipped."""
        cols = self._ancestor_columns()
        n = len(next(iter(scores.values())))
        total = np.zeros((n, cols.shape[1]), np.float64)
        counted = np.zeros(cols.shape[1], np.float64)
        for li, head in enumerate(self.levels):
            known = cols[li] >= 0
            s = scores[head][:, np.where(known, cols[li], 0)]
            if method == "linear":
                total += np.where(known, np.log(np.maximum(s, 1e-12)), 0.0)
            else:
                total += np.where(known, s, 0.0)
            counted += known
        if method == "linear":
            return np.exp(total).astype(np.float32)
        return (total / np.maximum(counted, 1)).astype(np.float32)

    def classify_embeddings(self, emb: np.ndarray, method: str = "linear",
                            k: int = 5) -> list[dict[str, dict]]:
        """Per row: {head: {"labels": [(label, score)] * k, "other": top score < threshold}},
        plus "path": the best whole category paths (see `path_scores`). Scores are
        probabilities (linear) or cosine similarities (centroid)."""
        if method not in ("linear", "centroid"):
            raise ValueError(f"method must be 'linear' or 'centroid', got {method!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores = self.head_probs(emb) if method == "linear" else self.centroid_scores(emb)
        ranked_by = {**scores, PATH_KEY: self.path_scores(scores, method)}
        names = {**self.labels, PATH_KEY: self.labels[self.leaf_head]}
        out: list[dict[str, dict]] = [{} for _ in range(len(emb))]
        for head, s in ranked_by.items():
            top = np.argsort(-s, axis=1, kind="stable")[:, :k]
            for i, row in enumerate(top):
                ranked = [(names[head][j], float(s[i, j])) for j in row]
                out[i][head] = {"labels": ranked, "other": ranked[0][1] < self.other_threshold}
        return out

    def classify(self, images: Sequence[Any] | None = None, texts: Sequence[str] | None = None,
                 method: str = "linear", k: int = 5) -> list[dict[str, dict]]:
        return self.classify_embeddings(self.embed(images, texts), method=method, k=k)

    # --- persistence ---
    def _serialize(self) -> tuple[bytes, bytes]:
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return _json_bytes(self.config), save(state)

    def save(self, out_dir: str | Path) -> Path:
        """Write the bundle files (each atomically); existing report files are left alone."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config_bytes, weights_bytes = self._serialize()
        _atomic_write(out / WEIGHTS_FILE, weights_bytes)
        _atomic_write(out / LABELS_FILE, _json_bytes({"separator": LABEL_SEPARATOR,
                                                      "heads": self.labels}))
        if self.centroids:
            tmp = out / (CENTROIDS_FILE + ".tmp.npz")
            np.savez(tmp, **{h: np.asarray(self.centroids[h], np.float32) for h in self.heads})
            os.replace(tmp, out / CENTROIDS_FILE)
        if self.tfidf is not None:
            _atomic_write(out / TFIDF_FILE, _json_bytes(self.tfidf.to_dict()))
        _atomic_write(out / CONFIG_FILE, config_bytes)  # last: a complete bundle has a config
        self.path = out
        logger.info("saved bundle to %s (fingerprint %s)", out, self.fingerprint[:12])
        return out

    @classmethod
    def load(cls, bundle_dir: str | Path, device: str = "cpu",
             image_engine: str = "torch") -> Bundle:
        """Strict load: missing files, unknown format, missing/unexpected/mis-shaped weights,
        or labels/centroids that disagree with the config raise BundleError. `image_engine`
        picks how the image backbone runs when it is first used ("torch" or "onnx")."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        root = Path(bundle_dir)
        try:
            config = json.loads((root / CONFIG_FILE).read_text())
            labels_doc = json.loads((root / LABELS_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BundleError(f"{root}: cannot read bundle config/labels: {e}") from e
        if config.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{root}: format_version {config.get('format_version')!r}, "
                              f"this code reads {FORMAT_VERSION}")
        try:
            model = build_model(config)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{root}/{CONFIG_FILE}: bad model config: {e!r}") from e
        try:
            state = load_file(str(root / WEIGHTS_FILE))
        except (OSError, SafetensorError) as e:
            raise BundleError(f"{root}/{WEIGHTS_FILE}: {e}") from e
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise BundleError(f"{root}/{WEIGHTS_FILE}: missing keys {missing}, "
                              f"unexpected keys {unexpected}")
        bad = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
               for k, v in expected.items() if state[k].shape != v.shape]
        if bad:
            raise BundleError(f"{root}/{WEIGHTS_FILE}: shape mismatch {bad}")
        model.load_state_dict(state, strict=True)
        saved = labels_doc.get("heads", {})
        names = [h["name"] for h in config["heads"]]
        if sorted(saved) != sorted(names):
            raise BundleError(f"{root}/{LABELS_FILE}: heads {sorted(saved)}, config has {names}")
        labels = {h: list(saved[h]) for h in names}  # config order (JSON keys are sorted)
        centroids = {}
        if (root / CENTROIDS_FILE).exists():
            with np.load(root / CENTROIDS_FILE, allow_pickle=False) as z:
                centroids = {h: z[h].astype(np.float32) for h in z.files}
            want = {h["name"]: (h["n_classes"], config["embed_dim"]) for h in config["heads"]}
            got = {h: c.shape for h, c in centroids.items()}
            if got != want:
                raise BundleError(f"{root}/{CENTROIDS_FILE}: shapes {got}, expected {want}")
        tfidf = None
        if config.get("tfidf_dim"):
            try:
                tfidf = TfidfText.from_dict(json.loads((root / TFIDF_FILE).read_text()))
            except (OSError, json.JSONDecodeError, KeyError) as e:
                raise BundleError(f"{root}/{TFIDF_FILE}: {e!r}") from e
            if tfidf.dim != config["tfidf_dim"]:
                raise BundleError(f"{root}/{TFIDF_FILE}: {tfidf.dim} terms, config says "
                                  f"{config['tfidf_dim']}")
        return cls(config, model, labels, centroids, tfidf, device=device, path=root,
                   image_engine=image_engine)


def class_centroids(emb: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, d) unit-norm class means of unit embeddings; rows with y == -1 are skipped,
    a class without rows gets a zero vector (it then never wins a cosine ranking)."""
    emb = np.asarray(emb, dtype=np.float32)
    if len(emb) != len(y):
        raise ValueError(f"{len(emb)} embeddings but {len(y)} labels")
    sums = np.zeros((n_classes, emb.shape[1]), np.float64)
    keep = y >= 0
    np.add.at(sums, y[keep], emb[keep])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
