"""Stage: train the image backbone's last blocks on the catalog's leaf classes (issue 11).

Runs inside `train.stages.prepare`, after the split and before the towers: the blocks before
`backbone_tuning.first_block` stay frozen, so their output maps are computed once per training
and validation photo (as is and mirrored, the one augmentation) and the tail, the head conv and
a linear leaf head train on them. The validation split picks the epoch. The tuned weights
(embedder.backbone_tail.TunedTail, with int8 activation ranges fit on training photos when the
image engine is int8) then give every product's image features again, and everything after
(towers, visual block, index, API) runs on the tuned backbone.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuningResult:
    """What tuning gave: the tail, and the per-epoch validation curve for the report."""

    tail: Any  # embedder.backbone_tail.TunedTail
    best_epoch: int
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"first_block": self.tail.first_block, "best_epoch": self.best_epoch,
                "curve": self.curve, "seconds": round(self.seconds, 1),
                "int8_ranges": bool(self.tail.int8_ranges)}


def tuning_rows(y: np.ndarray, splits: Any, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Labelled training rows (a seeded sample past max_train_products) and validation rows."""
    t = cfg.backbone_tuning
    train = splits.train[y[splits.train] >= 0]
    if len(train) > t.max_train_products:
        rng = np.random.default_rng(cfg.seed)
        train = np.sort(rng.choice(train, t.max_train_products, replace=False))
    return train, splits.val[y[splits.val] >= 0]


def skip_reason(cfg: TrainConfig, n_train: int, streamed: bool, parallel: bool = False) -> str:
    """Why the backbone stays frozen for this run; "" when it is tuned."""
    from embedder.backbones import is_efficientnet
    from embedder.colour import split_spec

    t = cfg.backbone_tuning
    if not t.first_block:
        return "backbone_tuning.first_block=0"
    if not is_efficientnet(split_spec(cfg.image_backbone)[0]):
        return f"{cfg.image_backbone} is not an EfficientNet"
    if streamed:
        return "the catalog streams from feature shards"
    if parallel:  # each rank would train its own tail and embed with it
        return "a distributed (torch.distributed) job"
    if n_train < t.min_train_products:
        return (f"{n_train} labelled training products < backbone_tuning.min_train_products="
                f"{t.min_train_products}")
    return ""


def _trunk_maps(model: Any, products: list[Any], rows: np.ndarray, cfg: TrainConfig,
                backbone: Any) -> np.ndarray:
    """(len(rows), 2, C*h*w) float16 trunk maps of the rows' photos, as is and mirrored."""
    from tqdm import tqdm

    from embedder.backbone_tail import trunk_module
    from embedder.backbones import trunk_backbone
    from embedder.features import encode_image_files

    trunk = trunk_backbone(trunk_module(model, cfg.backbone_tuning.first_block), backbone)
    chosen = [products[i] for i in rows]
    out = []
    with tqdm(total=len(chosen), unit="photo", desc="trunk maps",
              disable=not cfg.show_progress) as bar:
        for _, maps in encode_image_files([p.image_path for p in chosen],
                                          [p.image_sha256 for p in chosen], trunk,
                                          batch_size=cfg.feature_batch_size,
                                          num_workers=cfg.num_workers):
            out.append(maps.astype(np.float16))
            bar.update(len(maps))
    return np.concatenate(out).reshape(len(rows), 2, -1)


def _fit_tail(model: Any, maps: np.ndarray, map_shape: tuple[int, ...], y: np.ndarray,
              n_train: int, n_classes: int, cfg: TrainConfig) -> tuple[int, list[dict]]:
    """Train the tail on the first n_train rows of `maps`, validate on the rest; loads the
    best validation epoch's weights into `model`. -> (best epoch, curve)."""
    import torch
    from tqdm import tqdm

    from embedder.backbone_tail import tail_module

    t = cfg.backbone_tuning
    torch.manual_seed(cfg.seed)
    tail = tail_module(model, t.first_block, n_classes, t.dropout)
    for p in tail.parameters():
        p.requires_grad_(True)
    head = list(tail.fc.parameters())
    ids = {id(p) for p in head}
    opt = torch.optim.AdamW([
        {"params": head, "lr": t.lr * t.head_lr_factor},
        {"params": [p for p in tail.parameters() if id(p) not in ids], "lr": t.lr}],
        weight_decay=t.weight_decay)
    device = next(tail.parameters()).device
    tail.fc.to(device)
    labels = torch.from_numpy(y.astype(np.int64)).to(device)

    def batch(rows: np.ndarray, view: np.ndarray) -> Any:
        x = maps[rows, view].astype(np.float32)
        return torch.from_numpy(x).reshape(len(rows), *map_shape).to(device)

    val = np.arange(n_train, len(maps))
    best, best_top1, best_state, curve = 0, -1.0, None, []
    gen = np.random.default_rng(cfg.seed)
    for epoch in tqdm(range(t.epochs), desc="backbone tuning", unit="epoch",
                      disable=not cfg.show_progress):
        t0 = time.perf_counter()
        tail.train()
        order = gen.permutation(n_train)
        losses = []
        for lo in range(0, n_train, t.batch_size):
            rows = order[lo:lo + t.batch_size]
            loss = torch.nn.functional.cross_entropy(
                tail(batch(rows, gen.integers(0, 2, len(rows)))), labels[rows],
                label_smoothing=t.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        tail.eval()
        top1 = float("nan")
        if len(val):
            with torch.inference_mode():
                pred = np.concatenate([
                    tail(batch(val[lo:lo + 256], np.zeros(len(val[lo:lo + 256]), int)))
                    .argmax(1).cpu().numpy() for lo in range(0, len(val), 256)])
            top1 = float((pred == y[val]).mean())
        curve.append({"epoch": epoch, "loss": float(np.mean(losses)),
                      "val_top1": round(100 * top1, 2),
                      "seconds": round(time.perf_counter() - t0, 1)})
        logger.info("backbone tuning epoch %d: loss %.3f, validation leaf top-1 %.2f (%.0f s)",
                    epoch, curve[-1]["loss"], curve[-1]["val_top1"], curve[-1]["seconds"])
        if not len(val) or top1 > best_top1:
            best, best_top1 = epoch, top1
            best_state = copy.deepcopy(tail.state_dict())
    tail.load_state_dict(best_state)
    return best, curve


def tune_image_backbone(products: list[Any], y: np.ndarray, splits: Any,
                        cfg: TrainConfig) -> TuningResult:
    """Train the image backbone's tail on `products`' leaf labels `y` (-1: unlabelled) and
    return it, with int8 ranges when the image engine here is int8."""
    import torch

    from embedder.backbone_tail import TunedTail, trunk_map_shape
    from embedder.backbones import (
        INT8_ENGINE,
        calibrate_int8_ranges,
        load_backbone,
        resolve_engine,
    )
    from embedder.colour import split_spec
    from embedder.images import load_image

    t0 = time.perf_counter()
    t = cfg.backbone_tuning
    spec = split_spec(cfg.image_backbone)[0]
    backbone = load_backbone(spec, device=None if cfg.device == "auto" else cfg.device,
                             engine="torch")
    device = backbone.device
    model = backbone.model.float().to(memory_format=torch.contiguous_format)
    train, val = tuning_rows(y, splits, cfg)
    rows = np.concatenate([train, val])
    maps = _trunk_maps(model, products, rows, cfg, backbone)
    shape = trunk_map_shape(model, t.first_block, backbone.preprocess.size)
    logger.info("backbone tuning: trunk maps of %d photos in %.0f s", len(rows),
                time.perf_counter() - t0)
    best, curve = _fit_tail(model, maps, shape, y[rows], len(train), int(y.max()) + 1, cfg)
    del maps
    tail = TunedTail.from_model(model, t.first_block)
    if resolve_engine(spec, device, "auto") == INT8_ENGINE:
        rng = np.random.default_rng(cfg.seed)
        chosen = rng.choice(train, min(t.calibration_images, len(train)), replace=False)
        pixels = backbone.preprocess_batch([load_image(products[i].image_path)
                                            for i in np.sort(chosen)])
        with tempfile.TemporaryDirectory() as tmp:
            ranges = calibrate_int8_ranges(spec, pixels, Path(tmp) / "ranges.json", tail)
            tail = TunedTail(tail.first_block, tail.weights, ranges.read_bytes())
    return TuningResult(tail, best, curve, time.perf_counter() - t0)
