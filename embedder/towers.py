"""HUSE towers: one MLP per modality into a shared L2-normalised space, plus shared heads.

Importing this module imports torch; CLI modules import it inside functions only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from huse_common.vectors import PLAIN_SUM
from huse_common.vectors import fuse as fuse_vectors


class Tower(nn.Module):
    """Standardise the frozen features, MLP (Linear-ReLU-Dropout per hidden width), Linear to
    out_dim, L2-normalise. The input shift/scale are buffers so they travel with the weights."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0):
        super().__init__()
        if in_dim <= 0 or out_dim <= 0 or any(h <= 0 for h in hidden):
            raise ValueError(f"dims must be > 0, got in_dim={in_dim}, hidden={tuple(hidden)}, "
                             f"out_dim={out_dim}")
        self.in_dim, self.hidden, self.out_dim = in_dim, tuple(hidden), out_dim
        self.dropout = float(dropout)
        self.register_buffer("in_shift", torch.zeros(in_dim))
        self.register_buffer("in_scale", torch.ones(in_dim))
        layers: list[nn.Module] = []
        width = in_dim
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)

    @torch.no_grad()
    def set_input_norm(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """x -> (x - shift) * scale before the MLP (fit on the training split)."""
        if shift.shape != (self.in_dim,) or scale.shape != (self.in_dim,):
            raise ValueError(f"shift/scale must be ({self.in_dim},), got {tuple(shift.shape)}, "
                             f"{tuple(scale.shape)}")
        self.in_shift.copy_(shift)
        self.in_scale.copy_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected (n, {self.in_dim}) features, got {tuple(x.shape)}")
        h = self.mlp((x - self.in_shift) * self.in_scale)
        return F.normalize(h.float(), dim=1)


def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


def fuse(img_emb: torch.Tensor, txt_emb: torch.Tensor,
         image_weight: float = PLAIN_SUM) -> torch.Tensor:
    """huse_common.vectors.fuse on tensors (the one fusion formula)."""
    return fuse_vectors(img_emb, txt_emb, image_weight, normalize=_normalize_rows)


class HuseModel(nn.Module):
    """Image tower + text tower + one shared linear layer per head (applied to every modality).

    The heads see `logit_scale * u` for a unit embedding u: a linear layer on unit vectors
    otherwise needs very large weights before its softmax can be confident, which makes training
    slow (the same reason cosine classifiers use a scale). 1.0 gives the plain HUSE layer.
    """

    def __init__(self, image_tower: Tower, text_tower: Tower, heads: dict[str, int],
                 logit_scale: float = 1.0):
        super().__init__()
        if logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        if image_tower.out_dim != text_tower.out_dim:
            raise ValueError(f"tower out dims differ: {image_tower.out_dim} vs "
                             f"{text_tower.out_dim}")
        if not heads or any(n < 1 for n in heads.values()):
            raise ValueError(f"heads must map names to n_classes >= 1, got {heads}")
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.head_names = list(heads)
        self.logit_scale = float(logit_scale)
        # ModuleList, not ModuleDict: head names such as "attr:base.colour" need not be keys.
        self.heads = nn.ModuleList(nn.Linear(image_tower.out_dim, n) for n in heads.values())

    @property
    def dim(self) -> int:
        return self.image_tower.out_dim

    def forward(
        self, image_feats: torch.Tensor, text_feats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_tower(image_feats), self.text_tower(text_feats)

    def logits(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        scaled = emb * self.logit_scale
        return {name: head(scaled) for name, head in zip(self.head_names, self.heads, strict=True)}
