"""How a sample product's image is drawn: named colours, scenes (a backdrop tint and a prop),
fill patterns, outlines placed with room for the props, distractors, blur and PNG modes.
`train.sample_catalog` picks what each product looks like and writes the catalog.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40),
    "crimson": (150, 20, 50),
    "orange": (240, 130, 20),
    "yellow": (235, 210, 40),
    "olive": (120, 120, 30),
    "green": (40, 150, 60),
    "teal": (20, 130, 130),
    "blue": (40, 80, 200),
    "navy": (20, 30, 100),
    "purple": (120, 50, 160),
    "pink": (235, 120, 170),
    "brown": (120, 75, 40),
    "grey": (128, 128, 128),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "beige": (215, 195, 160),
}

# scene -> backdrop tint; the scene's prop is drawn by _draw_scene
SCENES: dict[str, tuple[int, int, int]] = {
    "hanger": (236, 234, 228),
    "floor": (220, 230, 240),
    "shadow": (242, 226, 216),
    "shelf": (224, 240, 222),
}

PATTERNS = ("solid", "stripes", "checks", "dots", "gradient", "rings", "zigzag")


def _shape_points(shape: str) -> list[tuple[float, float]]:
    """Outline in unit coordinates (-1..1) for polygon shapes; round ones are sampled circles."""

    def arc(a0: float, a1: float, rx: float = 1.0, ry: float = 1.0, n: int = 24) -> list:
        return [
            (rx * math.cos(a0 + (a1 - a0) * i / n), ry * math.sin(a0 + (a1 - a0) * i / n))
            for i in range(n + 1)
        ]

    table = {
        "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
        "tall_rect": [(-0.5, -0.95), (0.5, -0.95), (0.5, 0.95), (-0.5, 0.95)],
        "wide_rect": [(-0.95, -0.45), (0.95, -0.45), (0.95, 0.45), (-0.95, 0.45)],
        "trapezoid": [(-0.4, -0.8), (0.4, -0.8), (0.9, 0.8), (-0.9, 0.8)],
        "trapezoid_inv": [(-0.9, -0.6), (0.9, -0.6), (0.6, 0.9), (-0.6, 0.9)],
        "tshirt": [
            (-0.9, -0.7),
            (-0.3, -0.9),
            (0.3, -0.9),
            (0.9, -0.7),
            (0.7, -0.3),
            (0.5, -0.4),
            (0.5, 0.9),
            (-0.5, 0.9),
            (-0.5, -0.4),
            (-0.7, -0.3),
        ],
        "trousers": [
            (-0.6, -0.9),
            (0.6, -0.9),
            (0.7, 0.9),
            (0.15, 0.9),
            (0.0, -0.2),
            (-0.15, 0.9),
            (-0.7, 0.9),
        ],
        "sock": [(-0.3, -0.9), (0.2, -0.9), (0.2, 0.3), (0.9, 0.5), (0.9, 0.9), (-0.3, 0.9)],
        "boot": [(-0.5, -0.9), (0.1, -0.9), (0.1, 0.2), (0.9, 0.5), (0.9, 0.9), (-0.5, 0.9)],
        "triangle": [(0.0, -0.9), (0.9, 0.8), (-0.9, 0.8)],
        "diamond": [(0.0, -0.95), (0.6, 0.0), (0.0, 0.95), (-0.6, 0.0)],
        "star": [
            (0.95 * r * math.sin(i * math.pi / 5), -0.95 * r * math.cos(i * math.pi / 5))
            for i, r in zip(range(10), [1.0, 0.45] * 5, strict=True)
        ],
        "mug": [
            (-0.7, -0.7),
            (0.4, -0.7),
            (0.4, -0.4),
            (0.9, -0.4),
            (0.9, 0.3),
            (0.4, 0.3),
            (0.4, 0.8),
            (-0.7, 0.8),
        ],
        "ellipse": arc(0, 2 * math.pi, 0.95, 0.55),
        "flat_ellipse": arc(0, 2 * math.pi, 0.95, 0.3),
        "circle": arc(0, 2 * math.pi, 0.85, 0.85),
        "semicircle": [*arc(math.pi, 2 * math.pi, 0.9, 0.9), (0.9, 0.3), (-0.9, 0.3)],
        "ring": arc(0, 2 * math.pi, 0.8, 0.8),
    }
    return table[shape]


def _pattern(size: tuple[int, int], pattern: str, c1: tuple, c2: tuple, rng: random.Random):
    """A full-size fill image in colours c1/c2; the shape mask cuts it out later."""
    w, h = size
    img = Image.new("RGB", size, c1)
    draw = ImageDraw.Draw(img)
    step = rng.randint(8, 14)
    if pattern == "stripes":
        for y in range(0, h, step):
            draw.rectangle([0, y, w, y + step // 2], fill=c2)
    elif pattern == "checks":
        for y in range(0, h, step):
            for x in range((y // step) % 2 * step, w, 2 * step):
                draw.rectangle([x, y, x + step, y + step], fill=c2)
    elif pattern == "dots":
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c2)
    elif pattern == "gradient":
        for y in range(h):
            t = y / max(h - 1, 1)
            draw.line(
                [0, y, w, y], fill=tuple(int(a + (b - a) * t) for a, b in zip(c1, c2, strict=True))
            )
    elif pattern == "rings":
        for r in range(max(w, h), 0, -step):
            draw.ellipse(
                [w / 2 - r, h / 2 - r, w / 2 + r, h / 2 + r],
                outline=c2 if (r // step) % 2 else c1,
                width=step // 2,
            )
    elif pattern == "zigzag":
        for y in range(0, h + step, step):
            pts = [(x, y + (step // 2 if (x // step) % 2 else 0)) for x in range(0, w + step, step)]
            draw.line(pts, fill=c2, width=3)
    return img


def jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 25) -> tuple:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


# Room kept free around the outline for the scene's props (fractions of the canvas height, plus
# pixels for the hanger's hook): the hanger rises above the outline, floor and shelf lie below.
PROP_ABOVE = (0.08, 10)
PROP_BELOW = 0.1
SIDE_MARGIN = 0.04


def _place(
    shape: str, size: tuple[int, int], rng: random.Random, stretch: float
) -> list[tuple[float, float]]:
    """The outline stretched, rotated, scaled and moved at random, always inside the
    canvas with room for the scene's props: every later drawing step can rely on that."""
    w, h = size
    sx = 1 + rng.uniform(-stretch, stretch)
    angle = math.radians(rng.uniform(-25, 25))
    cos, sin = math.cos(angle), math.sin(angle)
    unit = [(x * sx * cos - y / sx * sin, x * sx * sin + y / sx * cos) for x, y in
            _shape_points(shape)]  # fmt: skip
    left, right = min(x for x, _ in unit), max(x for x, _ in unit)
    top, bottom = min(y for _, y in unit), max(y for _, y in unit)
    x0, x1 = SIDE_MARGIN * w, (1 - SIDE_MARGIN) * w
    y0, y1 = PROP_ABOVE[0] * h + PROP_ABOVE[1], (1 - PROP_BELOW) * h
    fill = rng.uniform(0.6, 0.9)  # share of the free box the outline takes
    scale = fill * min((x1 - x0) / (right - left), max(y1 - y0, 1.0) / (bottom - top))
    dx = x0 - scale * left + rng.uniform(0, max(0.0, (x1 - x0) - scale * (right - left)))
    dy = y0 - scale * top + rng.uniform(0, max(0.0, (y1 - y0) - scale * (bottom - top)))
    return [(dx + scale * x, dy + scale * y) for x, y in unit]


def _draw_scene(
    img: Image.Image, scene: str, pts: list[tuple[float, float]], rng: random.Random
) -> Image.Image:
    """The scene's prop, drawn behind the product outline `pts` (placed by `_place`)."""
    w, h = img.size
    left, right = min(x for x, _ in pts), max(x for x, _ in pts)
    top, bottom = min(y for _, y in pts), max(y for _, y in pts)
    cx = (left + right) / 2
    draw = ImageDraw.Draw(img)
    if scene == "hanger":
        dark = jitter((60, 60, 60), rng, 15)
        draw.line([left + 4, top + 2, cx, top - 0.08 * h, right - 4, top + 2], fill=dark, width=2)
        draw.arc(
            [cx - 5, top - 0.08 * h - 9, cx + 5, top - 0.08 * h + 1], 180, 90, fill=dark, width=2
        )
    elif scene == "floor":
        draw.rectangle([0, bottom - 0.05 * h, w, h], fill=jitter((170, 175, 185), rng, 12))
        draw.ellipse(
            [left, bottom - 0.07 * h, right, bottom], fill=jitter((110, 110, 120), rng, 10)
        )
    elif scene == "shadow":
        shadow = Image.new("L", img.size, 0)
        dx, dy = rng.uniform(3, 7), rng.uniform(3, 7)
        ImageDraw.Draw(shadow).polygon([(x + dx, y + dy) for x, y in pts], fill=110)
        shadow = shadow.filter(ImageFilter.GaussianBlur(3))
        img = Image.composite(Image.new("RGB", img.size, (40, 40, 40)), img, shadow)
    elif scene == "shelf":
        wood = jitter((150, 105, 60), rng, 15)
        draw.rectangle([0, bottom - 2, w, bottom + PROP_BELOW * h], fill=wood)
    return img


@dataclass(frozen=True)
class Look:
    """How one product is drawn: its scene, fill pattern and the pattern's two colours."""

    scene: str
    pattern: str
    c1: tuple[int, int, int]
    c2: tuple[int, int, int]


def draw_product(
    size: tuple[int, int],
    shape: str,
    look: Look,
    rng: random.Random,
    stretch: float,
    distractor_fraction: float,
) -> Image.Image:
    """One product: outline `shape` (stretched by 1 +- `stretch`) filled with the look's pattern
    in its scene, a distractor square at times, a slight blur at times."""
    w, h = size
    img = Image.new("RGB", size, jitter(SCENES[look.scene], rng, 12))
    pts = _place(shape, size, rng, stretch)
    img = _draw_scene(img, look.scene, pts, rng)
    mask = Image.new("L", size, 0)
    mask_draw = ImageDraw.Draw(mask)
    mask_draw.polygon(pts, fill=255)
    if shape == "ring":
        cx = sum(x for x, _ in pts) / len(pts)
        cy = sum(y for _, y in pts) / len(pts)
        mask_draw.polygon([(cx + 0.55 * (x - cx), cy + 0.55 * (y - cy)) for x, y in pts], fill=0)
    img.paste(_pattern(size, look.pattern, look.c1, look.c2, rng), (0, 0), mask)
    if rng.random() < distractor_fraction:
        r = min(w, h) * rng.uniform(0.08, 0.18)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        fill = rng.choice(list(COLOURS.values()))
        ImageDraw.Draw(img).rectangle([x - r, y - r, x + r, y + r], fill=fill)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return img


def png_variant(img: Image.Image, k: int) -> Image.Image:
    """Cycle PNG modes so the decoder's alpha and palette paths run on sample data too."""
    if k % 3 == 0:
        alpha = Image.new("L", img.size, 255)
        ImageDraw.Draw(alpha).rectangle([0, 0, img.width // 6, img.height], fill=0)
        img = img.copy()
        img.putalpha(alpha)
        return img
    if k % 3 == 1:
        return img.quantize(colors=64)
    return img
