"""The colour histogram appended by `+colour` image backbones (embedder.colour)."""

import numpy as np
import pytest
from PIL import Image

from embedder.backbones import load_backbone
from embedder.colour import ColourHistogram, backbone_part, colour_dim, split_spec
from embedder.errors import BackboneError

MEAN, STD = [0.5] * 3, [0.5] * 3


def _pixels(images: list[np.ndarray]) -> np.ndarray:
    """uint8 HWC images -> the normalised (n, 3, H, W) input of a mean/std 0.5 backbone."""
    x = np.stack(images).astype(np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(0, 3, 1, 2)


def _product(colour: tuple[int, int, int], box: tuple[int, int, int, int],
             background: tuple[int, int, int] = (255, 255, 255), size: int = 64) -> np.ndarray:
    x = np.zeros((size, size, 3), np.uint8)
    x[:] = background
    top, left, bottom, right = box
    x[top:bottom, left:right] = colour
    return x


def test_same_colour_beats_same_shape_and_background_does_not_count():
    red_shirt = _product((200, 20, 20), (8, 16, 56, 48))
    red_shoe = _product((200, 20, 20), (40, 4, 60, 60))  # another shape, same colour
    blue_shirt = _product((20, 20, 200), (8, 16, 56, 48))  # same shape, another colour
    red_on_grey = _product((200, 20, 20), (40, 4, 60, 60), background=(128, 128, 128))
    h = ColourHistogram().from_pixels(_pixels([red_shirt, red_shoe, blue_shirt, red_on_grey]),
                                      MEAN, STD)
    assert h.shape == (4, 64) and h.dtype == np.float32
    assert np.allclose(np.linalg.norm(h, axis=1), 1.0, atol=1e-5)
    cos = h @ h.T
    assert cos[0, 1] > 0.99  # the white background is ignored: both are "all red"
    assert cos[0, 2] < 0.1
    assert cos[1, 3] > 0.99  # on grey too: the background is the border's colour


def test_blank_and_tiny_images_give_a_finite_unit_histogram():
    blank = _product((255, 255, 255), (0, 0, 0, 0))
    h = ColourHistogram().from_pixels(_pixels([blank]), MEAN, STD)
    assert np.isfinite(h).all() and np.isclose(np.linalg.norm(h), 1.0)
    tiny = ColourHistogram().from_pixels(_pixels([np.full((2, 3, 3), 90, np.uint8)]), MEAN, STD)
    assert np.isfinite(tiny).all() and np.isclose(np.linalg.norm(tiny), 1.0)
    with pytest.raises(ValueError, match="pixels"):
        ColourHistogram().from_pixels(np.zeros((2, 64, 64)), MEAN, STD)


def test_specs_name_the_colour_columns():
    assert split_spec("efficientnet-lite0+colour") == ("efficientnet-lite0", True)
    assert split_spec("efficientnet-lite0") == ("efficientnet-lite0", False)
    assert colour_dim("hf:x+colour") == 64 and colour_dim("hf:x") == 0
    x = np.arange(20.0).reshape(2, 10)
    assert backbone_part(x, "hf:x") is x
    assert backbone_part(np.zeros((2, 70)), "hf:x+colour").shape == (2, 6)


def test_colour_backbone_appends_the_histogram_of_the_same_pixels(tiny_image_backbone_dir):
    plain = load_backbone(f"hf:{tiny_image_backbone_dir}", device="cpu")
    coloured = load_backbone(f"hf:{tiny_image_backbone_dir}+colour", device="cpu")
    assert coloured.dim == plain.dim + 64
    assert coloured.cache_namespace != plain.cache_namespace  # never mixed in the cache
    images = [Image.fromarray(_product(c, (8, 8, 56, 56))) for c in
              [(200, 20, 20), (20, 200, 20), (185, 30, 25)]]
    out, base = coloured.encode(images), plain.encode(images)
    assert np.allclose(out[:, :plain.dim], base, atol=1e-6)
    colour = out[:, plain.dim:]
    assert colour[0] @ colour[2] > 0.9 > colour[0] @ colour[1]
    with pytest.raises(BackboneError, match="image backbones"):
        load_backbone("minilm+colour", device="cpu")
