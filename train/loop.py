"""Training loop on cached features: AdamW, early stopping, atomic checkpoints.

Batches come from a `BatchSource`: `TrainData` (every feature in memory) or
train.streaming.ShardTrainData (read from feature shards past a catalog size threshold);
both draw each epoch's order from the loop's seeded generator, so the checkpointed generator
state replays the same batches on resume.

Early stopping watches the validation split's fused (image + text) top-1 at the leaf head, ties
broken by the lower validation loss; without labelled validation rows it watches the train loss.
The best epoch's weights are restored at the end. Every epoch writes OUT/checkpoints/last.pt
(model, optimizer, epoch, step, best state, history, RNG states) atomically, so `resume`
continues exactly where an interrupted run stopped: same batches, same dropout masks.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from embedder.towers import HuseModel, fuse
from huse_common.atomic import replacing
from train import distributed
from train.config import TrainConfig
from train.losses import (
    classification_loss,
    contrastive_loss,
    cross_modal_gap_loss,
    semantic_graph_loss,
)
from train.streaming import Batch

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainData:
    """Row-aligned inputs for every product; the index arrays pick the splits."""

    image: np.ndarray  # (n, Di) float32 frozen image features
    text: np.ndarray  # (n, Dt) float32 text-tower input (backbone features [+ TF-IDF])
    y: dict[str, np.ndarray]  # head -> (n,) int64, -1 = outside the label space
    train_idx: np.ndarray  # rows per epoch (may repeat rows when oversampling)
    val_idx: np.ndarray
    leaf_head: str
    A: np.ndarray  # (C_leaf, C_leaf) class-name distances for the leaf head

    @property
    def n_train(self) -> int:
        return len(self.train_idx)

    def _rows(self, rows: np.ndarray) -> Batch:
        return self.image[rows], self.text[rows], {h: y[rows] for h, y in self.y.items()}

    def epoch(self, gen: torch.Generator, batch_size: int,
              rank: distributed.Rank) -> Iterator[Batch]:
        """This rank's slice of each global batch of a seeded permutation of the epoch's rows."""
        perm = self.train_idx[torch.randperm(self.n_train, generator=gen).numpy()]
        for lo in range(0, self.n_train, batch_size):
            rows = distributed.local_rows(perm[lo : lo + batch_size], rank)
            if len(rows):  # a last batch smaller than the world size is skipped
                yield self._rows(rows)

    def validation(self) -> Batch:
        return self._rows(self.val_idx)


class BatchSource(Protocol):
    """What train_model reads: TrainData, or train.streaming.ShardTrainData."""

    val_idx: np.ndarray
    leaf_head: str
    A: np.ndarray

    @property
    def n_train(self) -> int: ...
    def epoch(self, gen: torch.Generator, batch_size: int,
              rank: distributed.Rank) -> Iterator[Batch]: ...
    def validation(self) -> Batch: ...


@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int
    stopped_early: bool


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device")
    return torch.device(name)


def compute_losses(
    model: HuseModel,
    xi: torch.Tensor,
    xt: torch.Tensor,
    ys: dict[str, torch.Tensor],
    A: torch.Tensor,
    leaf_head: str,
    cfg: TrainConfig,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted HUSE objective on one batch; also returns each term and the fused embedding.

    `model` may be wrapped in DistributedDataParallel; `gather` (train.distributed.gather)
    then joins every rank's rows first, so each term is the global batch's.
    """
    e_img, e_txt = model(xi, xt)
    if gather is not None:
        e_img, e_txt = gather(e_img), gather(e_txt)
        ys = {head: gather(y) for head, y in ys.items()}
    heads = getattr(model, "module", model)  # the classification layers, DDP or not
    cls_terms = [
        classification_loss(logits, ys[head])
        for emb in (e_img, e_txt)
        for head, logits in heads.logits(emb).items()
    ]
    cls = torch.stack(cls_terms).mean()
    y_leaf = ys[leaf_head]
    graph = semantic_graph_loss(
        torch.cat([e_img, e_txt]), torch.cat([y_leaf, y_leaf]), A, cfg.graph_margin
    )
    gap = cross_modal_gap_loss(e_img, e_txt)
    nce = (contrastive_loss(e_img, e_txt, cfg.nce_temperature, y_leaf) if cfg.w_nce
           else gap * 0.0)
    total = cfg.w_cls * cls + cfg.w_graph * graph + cfg.w_gap * gap + cfg.w_nce * nce
    return {"loss": total, "cls": cls, "graph": graph, "gap": gap, "nce": nce,
            "fused": fuse(e_img, e_txt)}


def _atomic_torch_save(obj: dict, path: Path) -> None:
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def _tensors(batch: Batch, device: torch.device):
    image, text, y = batch
    xi = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    xt = torch.from_numpy(np.ascontiguousarray(text)).to(device)
    ys = {h: torch.from_numpy(np.ascontiguousarray(v)).to(device) for h, v in y.items()}
    return xi, xt, ys


@torch.no_grad()
def _validate(model, data, A, cfg, device) -> tuple[float, float]:
    """(val loss, fused leaf top-1) on the whole validation split, in eval mode."""
    model.eval()
    xi, xt, ys = _tensors(data.validation(), device)
    out = compute_losses(model, xi, xt, ys, A, data.leaf_head, cfg)
    y = ys[data.leaf_head]
    labelled = y >= 0
    pred = model.logits(out["fused"])[data.leaf_head].argmax(dim=1)
    top1 = float((pred[labelled] == y[labelled]).float().mean()) if labelled.any() else math.nan
    model.train()
    return float(out["loss"]), top1


def _score(val_loss: float, val_top1: float, train_loss: float) -> tuple[float, float]:
    """Higher is better: (fused leaf top-1, -val loss), or (-train loss, 0) without a val split."""
    if math.isnan(val_top1):
        return (-train_loss, 0.0)
    return (val_top1, -val_loss)


def train_model(
    model: HuseModel, data: BatchSource, cfg: TrainConfig, checkpoint_dir: Path | None
) -> TrainResult:
    """Train in place (best weights restored at the end); resume when cfg.resume is set.

    Under torch.distributed (train.distributed) every rank runs this: the same permutation,
    an equal slice of each global batch, DDP-averaged gradients, and its own dropout stream
    (seed + rank, saved per rank in the checkpoint that rank 0 alone writes).
    """
    rank = distributed.current()
    device = pick_device(cfg.device)
    if rank.parallel and device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)
    use_amp = cfg.amp and device.type == "cuda"
    model.to(device).train()
    A = torch.from_numpy(np.asarray(data.A, dtype=np.float32)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + rank.rank)
    history: list[dict] = []
    best = {"score": (-math.inf, -math.inf), "epoch": 0, "state": None}
    bad_epochs, step, start = 0, 0, 1
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    if cfg.resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["gen_state"])
        rngs = ckpt.get("rng_by_rank", [{"cpu": ckpt["torch_rng"], "cuda": ckpt.get("cuda_rng")}])
        if len(rngs) != rank.world:
            raise ValueError(f"{ckpt_path} was written by {len(rngs)} ranks; resume it with "
                             f"as many, not {rank.world}")
        torch.set_rng_state(rngs[rank.rank]["cpu"].cpu())
        if device.type == "cuda" and rngs[rank.rank]["cuda"] is not None:
            torch.cuda.set_rng_state(rngs[rank.rank]["cuda"].cpu())
        history = ckpt["history"]
        best = {"score": tuple(ckpt["best_score"]), "epoch": ckpt["best_epoch"],
                "state": ckpt["best_state"]}
        bad_epochs, step, start = ckpt["bad_epochs"], ckpt["step"], ckpt["epoch"] + 1
        logger.info("resumed from %s at epoch %d (step %d)", ckpt_path, ckpt["epoch"], step)
    elif ckpt_path is not None and rank.main:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    net = distributed.wrap(model, rank, device)
    gather = distributed.gather if rank.parallel else None

    n_train = data.n_train
    if n_train == 0:
        raise ValueError("empty training split")
    bar = tqdm(range(start, cfg.max_epochs + 1), desc="train", unit="epoch",
               disable=not cfg.show_progress, initial=start - 1, total=cfg.max_epochs)
    for epoch in bar:
        if bad_epochs >= cfg.patience:
            break
        sums = {"loss": 0.0, "cls": 0.0, "graph": 0.0, "gap": 0.0, "nce": 0.0}
        for batch in data.epoch(gen, cfg.batch_size, rank):
            xi, xt, ys = _tensors(batch, device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = compute_losses(net, xi, xt, ys, A, data.leaf_head, cfg, gather)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            step += 1
            weight = len(xi) * rank.world / n_train
            for k in sums:
                sums[k] += float(out[k].detach()) * weight
        val_loss, val_top1 = (_validate(model, data, A, cfg, device) if len(data.val_idx)
                              else (math.nan, math.nan))
        history.append({"epoch": epoch, "step": step, "train_loss": sums["loss"],
                        "val_loss": val_loss, "train_cls": sums["cls"],
                        "train_graph": sums["graph"], "train_gap": sums["gap"],
                        "train_nce": sums["nce"],
                        "val_top1": val_top1})
        logger.info("epoch %d step %d: train loss %.4f, val loss %.4f, val top1 %.3f",
                    epoch, step, sums["loss"], val_loss, val_top1)
        bar.set_postfix(loss=f"{sums['loss']:.4f}", val_top1=f"{val_top1:.3f}")
        score = _score(val_loss, val_top1, sums["loss"])
        if score > best["score"]:
            best = {"score": score, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if ckpt_path is not None:
            cuda_rng = torch.cuda.get_rng_state() if device.type == "cuda" else None
            rngs = distributed.all_objects({"cpu": torch.get_rng_state(), "cuda": cuda_rng})
            if rank.main:
                ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "epoch": epoch, "step": step, "gen_state": gen.get_state(),
                        "torch_rng": rngs[0]["cpu"], "rng_by_rank": rngs,
                        "history": history, "best_score": list(best["score"]),
                        "best_epoch": best["epoch"], "best_state": best["state"],
                        "bad_epochs": bad_epochs}
                if cuda_rng is not None:
                    ckpt["cuda_rng"] = cuda_rng
                _atomic_torch_save(ckpt, ckpt_path)
    stopped_early = bad_epochs >= cfg.patience
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    logger.info("best epoch %d of %d%s", best["epoch"], len(history),
                " (early stop)" if stopped_early else "")
    return TrainResult(history=copy.deepcopy(history), best_epoch=best["epoch"],
                       stopped_early=stopped_early)

