"""A trained tail for the EfficientNet image backbones: the weights of its last blocks.

The HUSE towers see the backbone's pooled features only. Photos of look-alike classes (tops and
T-shirts, flats and heels) sit together in the frozen ImageNet features, and text->image
retrieval misses them. Training the backbone's last blocks and its head conv on the catalog's
leaf classes separates them (docs/ablation.md, rounds 7 and 8); train.backbone_tuning does it.
The trained weights travel in the bundle: the backbone that serves it is the packaged one with
these weights loaded, so training features, index rows and API queries come from one model.

The blocks before `first_block` never train: their output maps ("trunk maps") are computed
once per photo by `trunk_module`, and the tail trains on them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

TAIL_WEIGHTS_FILE = "image_tail.safetensors"
TAIL_RANGES_FILE = "image_tail_int8.json"
HEAD_CONV = "_conv_head."


def _tail_prefixes(first_block: int, n_blocks: int) -> tuple[str, ...]:
    return (*(f"_blocks.{i}." for i in range(first_block, n_blocks)), HEAD_CONV)


@dataclass(frozen=True)
class TunedTail:
    """The trained blocks (`first_block` on, and the head conv) of a BatchNorm-folded
    EfficientNet, as safetensors bytes; `int8_ranges`: ONNX Runtime activation ranges (a
    calibration cache, JSON) for the static int8 export of the tuned model, b"" when none."""

    first_block: int
    weights: bytes
    int8_ranges: bytes = b""

    @property
    def weights_digest(self) -> str:
        """Identity of the tuned weights: keys the fp32 export and the features."""
        return hashlib.sha256(f"{self.first_block}\0".encode() + self.weights).hexdigest()[:16]

    @property
    def ranges_digest(self) -> str:
        """Identity of the int8 ranges ("" when none): keys the int8 export and its features."""
        return hashlib.sha256(self.int8_ranges).hexdigest()[:12] if self.int8_ranges else ""

    @classmethod
    def from_model(cls, model: Any, first_block: int, int8_ranges: bytes = b"") -> TunedTail:
        from safetensors.torch import save

        prefixes = _tail_prefixes(first_block, len(model._blocks))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                 if k.startswith(prefixes)}
        return cls(first_block, save(state), int8_ranges)

    def apply(self, model: Any) -> None:
        """Load the tuned weights into a folded EfficientNet of the same spec; ValueError when
        they do not fit it (another spec, or an unfolded model)."""
        from safetensors.torch import load

        state = load(self.weights)
        own = model.state_dict()
        want = {k for k in own if k.startswith(_tail_prefixes(self.first_block,
                                                              len(model._blocks)))}
        if set(state) != want:
            raise ValueError(f"tuned tail (from block {self.first_block}) does not fit this "
                             f"backbone: {len(set(state) ^ want)} weights differ by name")
        bad = [k for k, v in state.items() if v.shape != own[k].shape]
        if bad:
            raise ValueError(f"tuned tail weights of the wrong shape: {bad[:3]}")
        model.load_state_dict(state, strict=False)


def _trunk(model: Any, x: Any, first_block: int) -> Any:
    x = model._swish(model._bn0(model._conv_stem(x)))
    for block in model._blocks[:first_block]:
        x = block(x, drop_connect_rate=None)
    return x


def trunk_map_shape(model: Any, first_block: int, size: int) -> tuple[int, int, int]:
    """(C, h, w) of the trunk's output maps for size x size photos."""
    import torch

    pixels = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    with torch.inference_mode():
        return tuple(_trunk(model, pixels, first_block).shape[1:])


def trunk_module(model: Any, first_block: int) -> Any:
    """torch module: pixels (n, 3, H, W) -> (n, 2 * C*h*w) output maps of the stem and blocks
    before `first_block`, of the photo as is then mirrored (the tail's one augmentation)."""
    import torch

    class Trunk(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: Any) -> Any:
            x = _trunk(self.model, torch.cat([pixels, torch.flip(pixels, dims=[3])]),
                       first_block)
            per_photo = x.shape[1] * x.shape[2] * x.shape[3]
            return x.reshape(2, -1, per_photo).transpose(0, 1).flatten(1)

    return Trunk().eval()


def tail_module(model: Any, first_block: int, n_classes: int, dropout: float) -> Any:
    """torch module: trunk maps -> leaf logits, through the blocks from `first_block` on, the
    head conv, average pooling and a new linear head. `features` gives the pooled features (what
    the backbone outputs). Shares its blocks with `model`: training it trains the model."""
    import torch

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(model._blocks[first_block:])
            self.head = model._conv_head
            self.swish = model._swish
            self.drop = torch.nn.Dropout(dropout)
            self.fc = torch.nn.Linear(self.head.out_channels, n_classes)

        def features(self, maps: Any) -> Any:
            x = maps
            for block in self.blocks:
                x = block(x, drop_connect_rate=None)
            return self.swish(self.head(x)).mean(dim=(2, 3))

        def forward(self, maps: Any) -> Any:
            return self.fc(self.drop(self.features(maps)))

    return Tail()
