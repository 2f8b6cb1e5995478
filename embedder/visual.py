"""The served vector: the HUSE embedding beside a reduced copy of the frozen visual features.

HUSE's losses are class-level, so every product of a class collapses toward one point: right for
classification, wrong for "find this product / what looks like it". The backbone's features
keep instance and visual detail (colour, pattern, shape). The index therefore holds

    x = [h, v] / sqrt(2),   h = HUSE embedding (unit), v = VisualBlock(image features) (unit),

and a query with visual weight w in [0, 1] is q = sqrt(2) * [(1 - w) * h_q, w * v_q], so one
inner product is (1 - w) * cos(HUSE) + w * cos(visual): one index, and the knob only scales the
query's blocks. A query without an image (title only) has no visual block and ranks by HUSE
alone; a product without an image is stored as [h, 0] (unit) and ranks by HUSE alone.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from huse_common.vectors import l2_normalize

BLOCK_SCALE = float(np.sqrt(0.5))  # each unit block of a stored vector: norm 1/sqrt(2)
WHITEN_FLOOR = 1e-3  # axes with less spread than this share of the first are not blown up


def l2n(x: np.ndarray) -> np.ndarray:
    """float32 unit rows (huse_common.vectors.l2_normalize)."""
    return l2_normalize(np.asarray(x, dtype=np.float32))


@dataclass(frozen=True)
class VisualBlock:
    """PCA of L2-normalised frozen image features, fitted on the training split: the visual
    block is the unit-normalised projection onto the top components, each axis divided by its
    standard deviation to the power `whiten` (0: plain PCA, 1: full whitening). Whitening lets
    the fine detail that tells two look-alike products apart weigh as much as the coarse layout
    and colour a whole class shares; the power is chosen on validation photos.

    With a `+colour` image backbone (embedder.colour) the last `colour_dim` feature columns are
    a colour histogram; the block is then [sqrt(1 - c) * pca, sqrt(c) * colour] (unit), so its
    cosine is (1 - c) * cos(pca) + c * cos(colour), with c = `colour_weight` chosen on
    validation photos too."""

    mean: np.ndarray  # (D,) mean of the unit training features (backbone columns)
    components: np.ndarray  # (r, D) principal axes, scaled by std ** -whiten
    colour_dim: int = 0
    colour_weight: float = 0.0

    def __post_init__(self) -> None:
        # colour alone (weight 1) would leave nothing to recognise a product by (instance_probe)
        if self.colour_dim < 0 or not 0.0 <= self.colour_weight < 1.0:
            raise ValueError(f"colour_dim must be >= 0 and colour_weight in [0, 1), got "
                             f"{self.colour_dim}, {self.colour_weight}")

    @classmethod
    def fit(cls, image_feats: np.ndarray, dim: int, whiten: float = 0.0,
            colour_dim: int = 0, colour_weight: float = 0.0) -> VisualBlock:
        x = l2n(image_feats[:, : image_feats.shape[1] - colour_dim]).astype(np.float64)
        if dim < 1 or dim > min(x.shape):
            raise ValueError(f"visual dim must be in [1, {min(x.shape)}], got {dim}")
        if not 0.0 <= whiten <= 1.0:
            raise ValueError(f"whiten must be in [0, 1], got {whiten}")
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        std = s[:dim] / np.sqrt(max(len(x) - 1, 1))
        scale = np.maximum(std, WHITEN_FLOOR * std[0]) ** -whiten
        axes = vt[:dim] * scale[:, None]
        return cls(mean.astype(np.float32), np.ascontiguousarray(axes, dtype=np.float32),
                   colour_dim, colour_weight)

    def with_colour_weight(self, colour_weight: float) -> VisualBlock:
        return replace(self, colour_weight=float(colour_weight))

    @property
    def dim(self) -> int:
        return int(self.components.shape[0]) + self.colour_dim

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[1]) + self.colour_dim

    def transform(self, image_feats: np.ndarray) -> np.ndarray:
        """(n, D) frozen features -> (n, r) unit visual vectors."""
        x = np.asarray(image_feats, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected (n, {self.in_dim}) image features, got {x.shape}")
        deep = x[:, : x.shape[1] - self.colour_dim]
        pca = l2n((l2n(deep) - self.mean) @ self.components.T)
        if not self.colour_dim:
            return pca
        c = self.colour_weight
        colour = l2n(x[:, deep.shape[1]:])
        return np.hstack([np.sqrt(1.0 - c) * pca, np.sqrt(c) * colour]).astype(np.float32)

    def instance(self, visual: np.ndarray) -> np.ndarray:
        """The unit PCA columns of visual blocks (`transform` rows): what tells this item from
        others; the colour histogram is left out, since many other products share a colour."""
        return l2n(np.asarray(visual, dtype=np.float32)[:, : self.dim - self.colour_dim])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components,
                "colour_dim": np.asarray(self.colour_dim, np.int64),
                "colour_weight": np.asarray(self.colour_weight, np.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> VisualBlock:
        mean, comp = np.asarray(arrays["mean"], np.float32), np.asarray(arrays["components"],
                                                                         np.float32)
        if mean.ndim != 1 or comp.ndim != 2 or comp.shape[1] != mean.shape[0]:
            raise ValueError(f"visual block: mean {mean.shape} and components {comp.shape} "
                             "do not match")
        # bundles written before the colour block have neither entry
        return cls(mean, comp, int(arrays.get("colour_dim", 0)),
                   float(arrays.get("colour_weight", 0.0)))


def stored_vectors(huse: np.ndarray, visual: np.ndarray | None) -> np.ndarray:
    """(n, d + r) unit index rows [h, v] / sqrt(2); rows whose visual block is None or all
    zeros (no image) become [h, 0]."""
    huse = l2n(huse)
    if visual is None:
        raise ValueError("stored vectors need the visual block (zeros for imageless rows)")
    visual = np.asarray(visual, dtype=np.float32)
    if len(visual) != len(huse):
        raise ValueError(f"{len(huse)} HUSE rows but {len(visual)} visual rows")
    has_image = np.linalg.norm(visual, axis=1) > 0
    scale = np.where(has_image, BLOCK_SCALE, 1.0).astype(np.float32)[:, None]
    return np.hstack([huse * scale, l2n(visual) * scale]).astype(np.float32)


def query_vectors(huse: np.ndarray, visual: np.ndarray | None, visual_weight: float,
                  visual_dim: int) -> np.ndarray:
    """(n, d + r) queries scoring (1 - w) * cos(HUSE) + w * cos(visual) against stored rows;
    without a visual block (title-only queries) the score is cos(HUSE)."""
    if not 0.0 <= visual_weight <= 1.0:
        raise ValueError(f"visual_weight must be in [0, 1], got {visual_weight}")
    huse = l2n(huse)
    if visual is None:
        return np.hstack([huse / BLOCK_SCALE, np.zeros((len(huse), visual_dim), np.float32)])
    w = float(visual_weight)
    return (np.hstack([(1.0 - w) * huse, w * l2n(visual)]) / BLOCK_SCALE).astype(np.float32)


def split_stored(stored: np.ndarray, huse_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(HUSE unit rows, visual unit rows; zero rows where the product has no image)."""
    stored = np.asarray(stored, dtype=np.float32)
    return l2n(stored[:, :huse_dim]), l2n(stored[:, huse_dim:])


def instance_probe(visual: np.ndarray, huse_dim: int, block: VisualBlock) -> np.ndarray:
    """Query rows whose inner product with stored rows is the cosine of the visual blocks'
    instance parts (VisualBlock.instance): recognising a product and finding its duplicate
    listings are about this item. `visual`: (n, r) blocks (transform, or split_stored's)."""
    inst = block.instance(visual)
    # a stored block is [sqrt(1 - c) pca, sqrt(c) colour] / sqrt(2) beside HUSE: undo both
    scale = 1.0 / (BLOCK_SCALE * np.sqrt(1.0 - block.colour_weight))
    q = np.zeros((len(inst), huse_dim + block.dim), np.float32)
    q[:, huse_dim:huse_dim + inst.shape[1]] = inst * scale
    return q


def instance_queries(stored: np.ndarray, huse_dim: int, block: VisualBlock) -> np.ndarray:
    """instance_probe from stored index rows."""
    return instance_probe(split_stored(stored, huse_dim)[1], huse_dim, block)


def duplicate_queries(stored: np.ndarray, huse_dim: int, served: ServedSpace) -> np.ndarray:
    """Near-duplicate listing queries from stored index rows: their inner product with stored
    rows is the cosine the bundle lists duplicates by (ServedSpace.duplicate_colour): the
    whole visual blocks', colour histogram included, or their instance parts'."""
    if not served.duplicate_colour:
        return instance_queries(stored, huse_dim, served.block)
    visual = split_stored(stored, huse_dim)[1]
    q = np.zeros((len(visual), huse_dim + served.visual_dim), np.float32)
    q[:, huse_dim:] = visual / BLOCK_SCALE  # stored blocks are unit / sqrt(2): undo it
    return q


@dataclass(frozen=True)
class ServedSpace:
    """What the index holds for a bundle: HUSE + visual block, with the validated defaults
    (bundle config "photo_search": visual_dim, visual_weight, near_duplicate_threshold)."""

    block: VisualBlock
    visual_weight: float  # default query weight of the visual block
    near_duplicate_threshold: float  # instance cosine at or above which two listings are one item
    # instance cosine at or above which a photo is taken for an indexed product (served_search);
    # None: the near-duplicate threshold (bundles before the two were told apart)
    recognition_threshold: float | None = None
    # near duplicates are listed by the whole visual block's cosine, colour histogram included
    # (chosen on validation photos, train.photo_search); False: by the instance part alone
    duplicate_colour: bool = False

    @property
    def recognition(self) -> float:
        return (self.near_duplicate_threshold if self.recognition_threshold is None
                else self.recognition_threshold)

    @property
    def visual_dim(self) -> int:
        return self.block.dim

    def config(self) -> dict[str, Any]:
        """The bundle config's "photo_search" entries (the arrays are the bundle's visual.npz)."""
        return {"visual_dim": self.visual_dim, "visual_weight": self.visual_weight,
                "near_duplicate_threshold": self.near_duplicate_threshold,
                "recognition_threshold": self.recognition,
                "colour_weight": self.block.colour_weight,
                "duplicate_colour": self.duplicate_colour}

    @classmethod
    def from_bytes(cls, data: bytes, config: Mapping[str, Any], image_dim: int) -> ServedSpace:
        """Parse visual.npz against the config's photo_search entries (ValueError if they
        disagree with each other or with the image backbone's width)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            block = VisualBlock.from_arrays({k: z[k] for k in z.files})
        if block.dim != int(config["visual_dim"]) or block.in_dim != image_dim:
            raise ValueError(f"visual block maps {block.in_dim} -> {block.dim}; the config says "
                             f"{image_dim} -> {config['visual_dim']}")
        weight = float(config["visual_weight"])
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"visual_weight must be in [0, 1], got {weight}")
        recognition = config.get("recognition_threshold")
        return cls(block, weight, float(config["near_duplicate_threshold"]),
                   None if recognition is None else float(recognition),
                   bool(config.get("duplicate_colour", False)))

    def stored(self, huse: np.ndarray, visual: np.ndarray) -> np.ndarray:
        """Index rows from HUSE embeddings and visual blocks (zero rows: no image)."""
        return stored_vectors(huse, visual)

    def query(self, huse: np.ndarray, visual: np.ndarray | None,
              visual_weight: float | None = None) -> np.ndarray:
        """Query rows; visual_weight None = the validated default; no image = HUSE alone."""
        w = self.visual_weight if visual_weight is None else visual_weight
        return query_vectors(huse, visual, w, self.visual_dim)

    def probe_queries(self, stored: np.ndarray) -> dict[str, np.ndarray]:
        """Queries of the two kinds the service sends that leave most of a row's directions
        empty, made from `stored` index rows: a title (HUSE alone, visual block zero) and a
        recognition probe (the instance part of the visual block alone; rows with an image).
        An approximate index tuned on perturbed rows misses their neighbours: on fashion
        products an IVF64 index at nprobe 2 found 0.72 of a title's 10 nearest, against 0.95
        for a photo (docs/performance.md), so the build tunes on these too."""
        huse, visual = split_stored(stored, stored.shape[1] - self.visual_dim)
        with_image = np.linalg.norm(visual, axis=1) > 0
        return {"title": self.query(huse, None),
                "instance probe": instance_probe(visual[with_image], huse.shape[1], self.block)}

    def requery(self, stored: np.ndarray, visual_weight: float | None = None) -> np.ndarray:
        """Query rows from stored rows ("more like this" an indexed product)."""
        w = self.visual_weight if visual_weight is None else visual_weight
        huse, visual = split_stored(stored, stored.shape[1] - self.visual_dim)
        return query_vectors(huse, visual, w, self.visual_dim)


DEFAULT_NEIGHBOURS = 10  # near-duplicate candidates per product (a listing rarely has more copies)


def near_duplicates_of(index: Any, product_id: str, huse_dim: int, served: ServedSpace,
                       threshold: float, k: int = DEFAULT_NEIGHBOURS) -> list[Any]:
    """Hits (score = the listing cosine, see duplicate_queries) of one indexed product's near
    duplicates, best first: its k nearest other products with cosine >= threshold. `index` is
    an index.store.ProductIndex (duck-typed: embedder does not import index)."""
    xq = duplicate_queries(index.vector(product_id)[None, :], huse_dim, served)
    hits = index.search(xq, k, exclude_ids=[product_id])[0]
    return [h for h in hits if h.score >= threshold]


def served_search(index: Any, served: ServedSpace, huse: np.ndarray, visual: np.ndarray | None,
                  k: int, visual_weight: float | None = None, wait: bool = True,
                  **filters: Any) -> tuple[list[Any], str | None]:
    """(hits, id of the recognised product or None) for one query against the served index.

    A photo query (visual block given, weight > 0) first looks for the product itself: its
    nearest product by instance cosine (instance_probe), when that reaches the validated
    recognition threshold, is recognised and comes first (score: that cosine); the other
    k - 1 hits are then that product's neighbours under the weight (its stored HUSE vector
    knows its title too, so they share its class far more often than the photo's own
    neighbours do). Otherwise, and for
    titles or weight 0, one weighted search: (1 - w) * cos(HUSE) + w * cos(visual). `filters`
    (category_prefix=, where=) go to every index search; `wait=False` to every index read
    (index.store: IndexBusy rather than wait for a write)."""
    w = served.visual_weight if visual_weight is None else visual_weight
    if visual is not None and w > 0:
        probe = instance_probe(visual[None, :], len(huse), served.block)
        top = index.search(probe, 1, wait=wait, **filters)[0]
        if top and top[0].score >= served.recognition:
            found = top[0]
            rest: list[Any] = []
            if k > 1:
                xq = served.requery(index.vector(found.id, wait=wait)[None, :], w)
                rest = index.search(xq, k - 1, exclude_ids=[found.id], wait=wait, **filters)[0]
            return [found, *rest], found.id
    xq = served.query(huse[None, :], None if visual is None else visual[None, :], w)
    return index.search(xq, k, wait=wait, **filters)[0], None
