"""A bundle's files: serialising to bytes, the fingerprint over every file, atomic save, load.

Directory layout (format version 1):
- `config.json`: embedder.bundle_config.BundleConfig (backbones, tower shapes, heads, fusion,
  "other" threshold; package versions and the training config as provenance);
- `towers.safetensors`: HuseModel state dict (towers incl. input normalisation, shared heads);
- `labels.json`: {"separator": huse_common.categories.SEPARATOR, "heads": {head: [class names
  in label-index order]}};
- `centroids.npz`: one (C_head, d) float32 array per head (unit-norm means of the training
  split's fused embeddings); written with fixed zip timestamps, so equal arrays give equal bytes;
- `tfidf.json` when the text tower takes TF-IDF: vocabulary, idf, n-gram range (no pickle);
- `image_tail.safetensors` (and `image_tail_int8.json`, its int8 activation ranges) when the
  image backbone's last blocks were trained (embedder.backbone_tail; config.json's
  image_backbone.tuned_from says from which block);
- `visual.npz` when the index holds the served space (embedder.visual): the visual block's PCA
  mean and (whitened) components; its settings are config.json's "photo_search";
- `report.json`, `report.md`, `plots/*.png` beside them (train.report): they describe the
  bundle and record its fingerprint, so they are not part of it.

`fingerprint` = sha256 over (name, sha256(bytes)) of every model file above, computed from the
bytes written at save time or read at load time: the index manifest records it and the API
refuses a mismatched pair, so swapping any file (labels included) is detected.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.backbone_tail import TAIL_RANGES_FILE, TAIL_WEIGHTS_FILE, TunedTail
from embedder.bundle_config import BundleConfig, build_model
from embedder.errors import BundleError
from embedder.tfidf import TfidfText
from huse_common.atomic import write_atomic
from huse_common.categories import SEPARATOR

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "towers.safetensors"
LABELS_FILE = "labels.json"
CENTROIDS_FILE = "centroids.npz"
TFIDF_FILE = "tfidf.json"
VISUAL_FILE = "visual.npz"
OPTIONAL_FILES = (CENTROIDS_FILE, TFIDF_FILE, VISUAL_FILE, TAIL_WEIGHTS_FILE, TAIL_RANGES_FILE)
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, LABELS_FILE, *OPTIONAL_FILES)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: npz bytes depend on data only


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """np.savez's format (readable by np.load), deterministic: fixed timestamps, given order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH), "w",
                         force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def fingerprint(files: Mapping[str, bytes]) -> str:
    """sha256 over the sorted (file name, sha256 of its bytes) pairs of a bundle's files."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class BundleParts:
    """What `serialize` turns into files and `read_files` parses back."""

    config: BundleConfig
    model: Any  # embedder.towers.HuseModel
    labels: dict[str, list[str]]
    centroids: dict[str, np.ndarray]
    tfidf: TfidfText | None
    served: Any = None  # embedder.visual.ServedSpace | None
    image_tail: TunedTail | None = None


def serialize(parts: BundleParts) -> dict[str, bytes]:
    """{file name: bytes} of every model file of the bundle."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in parts.model.state_dict().items()}
    files = {
        CONFIG_FILE: json_bytes(parts.config.to_dict()),
        WEIGHTS_FILE: save(state),
        LABELS_FILE: json_bytes({"separator": SEPARATOR, "heads": parts.labels}),
    }
    if parts.centroids:
        files[CENTROIDS_FILE] = npz_bytes({h: np.asarray(parts.centroids[h], np.float32)
                                           for h in parts.labels})
    if parts.tfidf is not None:
        files[TFIDF_FILE] = json_bytes(parts.tfidf.to_dict())
    if parts.served is not None:
        files[VISUAL_FILE] = npz_bytes(parts.served.block.arrays())
    if parts.image_tail is not None:
        files[TAIL_WEIGHTS_FILE] = parts.image_tail.weights
        if parts.image_tail.int8_ranges:
            files[TAIL_RANGES_FILE] = parts.image_tail.int8_ranges
    return files


def save_files(files: Mapping[str, bytes], out: Path) -> None:
    """Write each file atomically, config last (a complete bundle has a config); optional files
    the bundle lacks are removed so a re-save never leaves stale ones behind."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OPTIONAL_FILES:
        if name not in files:
            (out / name).unlink(missing_ok=True)
    for name in sorted(files, key=lambda n: n == CONFIG_FILE):
        write_atomic(out / name, files[name])


def _read(root: Path, name: str) -> bytes:
    try:
        return (root / name).read_bytes()
    except OSError as e:
        raise BundleError(f"{root}: cannot read bundle file {name}: {e}") from e


def read_files(root: Path) -> tuple[BundleParts, dict[str, bytes]]:
    """Parse a bundle directory strictly: missing files, unknown format, missing/unexpected
    weights, labels/centroids/TF-IDF that disagree with the config raise BundleError. Returns
    the parts and the bytes they were parsed from (the fingerprint's input)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    files = {name: _read(root, name) for name in (CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE)}
    try:
        raw_config = json.loads(files[CONFIG_FILE])
        labels_doc = json.loads(files[LABELS_FILE])
    except json.JSONDecodeError as e:
        raise BundleError(f"{root}: cannot read bundle config/labels: {e}") from e
    try:
        config = BundleConfig.from_dict(raw_config)
    except BundleError as e:
        raise BundleError(f"{root}/{CONFIG_FILE}: {e}") from e
    try:
        state = load(files[WEIGHTS_FILE])
    except (SafetensorError, ValueError) as e:
        raise BundleError(f"{root}/{WEIGHTS_FILE}: {e}") from e
    try:
        model = build_model(config)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{root}/{CONFIG_FILE}: bad model config: {e!r}") from e
    _check_state(root, model.state_dict(), state)
    model.load_state_dict(state, strict=True)
    saved = labels_doc.get("heads", {}) if isinstance(labels_doc, dict) else {}
    names = config.head_names
    if sorted(saved) != sorted(names):
        raise BundleError(f"{root}/{LABELS_FILE}: heads {sorted(saved)}, config has {names}")
    labels = {h: list(saved[h]) for h in names}  # config order (JSON keys are sorted)
    centroids: dict[str, np.ndarray] = {}
    if (root / CENTROIDS_FILE).exists():
        files[CENTROIDS_FILE] = _read(root, CENTROIDS_FILE)
        try:
            with np.load(io.BytesIO(files[CENTROIDS_FILE]), allow_pickle=False) as z:
                centroids = {h: z[h].astype(np.float32) for h in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise BundleError(f"{root}/{CENTROIDS_FILE}: {e}") from e
        want = {h: (n, config.embed_dim) for h, n in config.heads}
        got = {h: c.shape for h, c in centroids.items()}
        if got != want:
            raise BundleError(f"{root}/{CENTROIDS_FILE}: shapes {got}, expected {want}")
    tfidf = None
    if config.tfidf_dim:
        files[TFIDF_FILE] = _read(root, TFIDF_FILE)
        try:
            tfidf = TfidfText.from_dict(json.loads(files[TFIDF_FILE]))
        except (json.JSONDecodeError, KeyError) as e:
            raise BundleError(f"{root}/{TFIDF_FILE}: {e!r}") from e
        if tfidf.dim != config.tfidf_dim:
            raise BundleError(f"{root}/{TFIDF_FILE}: {tfidf.dim} terms, config says "
                              f"{config.tfidf_dim}")
    served = None
    if config.photo_search:
        from embedder.visual import ServedSpace

        files[VISUAL_FILE] = _read(root, VISUAL_FILE)
        try:
            served = ServedSpace.from_bytes(files[VISUAL_FILE], config.photo_search,
                                            config.image_backbone.dim)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise BundleError(f"{root}/{VISUAL_FILE}: {e}") from e
    image_tail = None
    if config.image_backbone.tuned_from:
        files[TAIL_WEIGHTS_FILE] = _read(root, TAIL_WEIGHTS_FILE)
        if (root / TAIL_RANGES_FILE).exists():
            files[TAIL_RANGES_FILE] = _read(root, TAIL_RANGES_FILE)
        image_tail = TunedTail(config.image_backbone.tuned_from, files[TAIL_WEIGHTS_FILE],
                               files.get(TAIL_RANGES_FILE, b""))
    return BundleParts(config, model, labels, centroids, tfidf, served, image_tail), files


def _check_state(root: Path, expected: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """BundleError listing missing, unexpected and mis-shaped weights."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BundleError(f"{root}/{WEIGHTS_FILE}: missing keys {missing}, "
                          f"unexpected keys {unexpected}")
    bad = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
           for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise BundleError(f"{root}/{WEIGHTS_FILE}: shape mismatch {bad}")
