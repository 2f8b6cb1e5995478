"""Synthetic but structured product catalog, so the whole pipeline runs with no downloads.

Every leaf of a 3-level category tree has a visual recipe and a title vocabulary. The recipe is
hierarchical but leaky, so the classes are learnable without being trivially separable:
- the top category usually picks the scene (backdrop tint plus a hanger, floor, drop shadow or
  shelf), but some products stand in another category's scene;
- the leaf picks the outline (stretched and rotated per product; several leaves in different
  branches share an outline, so the scene or the title must tell them apart);
- colour and fill pattern vary within a class (the leaf's palette and the sub-category's
  pattern are only the most likely), so "similar" means same kind *and* same look;
- titles sometimes name only the sub-category ("shoes", "bag") or no product type at all, skip
  the colour, or carry a typo and filler words.
Distractor shapes and blur add noise. Deterministic from the seed.

    python -m train.sample_catalog OUT --n 600 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from huse_common.categories import join_path, split_path

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

# top category -> usual scene; sub category -> usual fill pattern and its vague title noun
TOP_SCENES = {"Apparel": "hanger", "Footwear": "floor", "Accessories": "shadow", "Home": "shelf"}
SUB_PATTERNS = {
    "Topwear": "stripes", "Bottomwear": "checks", "Innerwear": "solid", "Shoes": "dots",
    "Sandals": "solid", "Bags": "gradient", "Watches": "rings", "Jewellery": "dots",
    "Kitchen": "zigzag", "Decor": "stripes",
}  # fmt: skip
SUB_NOUNS = {
    "Topwear": "top", "Bottomwear": "bottoms", "Innerwear": "innerwear", "Shoes": "shoes",
    "Sandals": "sandals", "Bags": "bag", "Watches": "watch", "Jewellery": "jewellery",
    "Kitchen": "kitchenware", "Decor": "home decor",
}  # fmt: skip
# leaf path, shape, palette, title nouns ("|"-separated)
LEAF_RECIPES = [
    ("Apparel > Topwear > Shirts", "square", "blue white navy", "shirt|formal shirt"),
    ("Apparel > Topwear > Tshirts", "tshirt", "red black grey", "t-shirt|tee"),
    ("Apparel > Topwear > Jackets", "tall_rect", "olive brown black", "jacket|bomber jacket"),
    ("Apparel > Bottomwear > Jeans", "trousers", "navy blue", "jeans|denim jeans"),
    ("Apparel > Bottomwear > Skirts", "trapezoid", "pink purple red", "skirt|midi skirt"),
    ("Apparel > Innerwear > Socks", "sock", "white grey black", "socks|ankle socks"),
    ("Apparel > Innerwear > Briefs", "wide_rect", "beige black", "briefs|trunks"),
    ("Footwear > Shoes > Sneakers", "ellipse", "white red blue", "sneakers|running shoes"),
    ("Footwear > Shoes > Formal Shoes", "flat_ellipse", "black brown", "formal shoes|oxfords"),
    ("Footwear > Shoes > Boots", "boot", "brown black olive", "boots|ankle boots"),
    ("Footwear > Sandals > Flip Flops", "circle", "yellow orange teal", "flip flops|slippers"),
    ("Footwear > Sandals > Heels", "semicircle", "crimson pink black", "heels|stilettos"),
    ("Accessories > Bags > Handbags", "trapezoid_inv", "brown beige crimson", "handbag|tote bag"),
    ("Accessories > Bags > Backpacks", "tall_rect", "navy grey green", "backpack|rucksack"),
    ("Accessories > Watches > Analog Watches", "ring", "black grey brown", "analog watch|watch"),
    ("Accessories > Watches > Smart Watches", "square", "black teal", "smart watch|fitness band"),
    ("Accessories > Jewellery > Necklaces", "star", "yellow white", "necklace|pendant"),
    ("Accessories > Jewellery > Earrings", "diamond", "yellow pink teal", "earrings|studs"),
    ("Home > Kitchen > Mugs", "mug", "white red teal", "mug|coffee mug"),
    ("Home > Kitchen > Plates", "circle", "white beige blue", "plate|dinner plate"),
    ("Home > Decor > Cushions", "square", "orange purple green", "cushion|cushion cover"),
    ("Home > Decor > Lamps", "triangle", "yellow beige black", "lamp|table lamp"),
]

BRANDS = ("Acme", "Nordic", "Urbano", "Kite", "Velvet", "Summit", "Rivera", "Oakly", "Zen")
MATERIALS = ("cotton", "leather", "canvas", "steel", "ceramic", "wool", "denim", "silk")
NOISE = ("new", "classic", "premium", "slim", "2024", "basic", "limited", "everyday", "pack of 2")
GENDERS = ("Men", "Women", "Unisex")


@dataclass(frozen=True)
class SampleConfig:
    """Knobs of the generator; defaults give a small catalog that still exercises every path."""

    n_products: int = 600
    seed: int = 0
    image_size: tuple[int, int] = (96, 160)  # min/max side in pixels
    png_every: int = 12  # every 12th product is a PNG: in turn RGBA, paletted, plain RGB
    palette_fraction: float = 0.6  # colour from the leaf's palette, else any colour
    usual_pattern_fraction: float = 0.4  # the sub-category's pattern, else any pattern
    usual_scene_fraction: float = 0.75  # the top category's scene, else any scene
    stretch: float = 0.25  # outline aspect jitter: x scaled by 1 +- stretch, y by its inverse
    distractor_fraction: float = 0.25
    noise_word_fraction: float = 0.5
    vague_noun_fraction: float = 0.2  # the title names only the sub-category ("shoes")
    no_noun_fraction: float = 0.1  # the title names no product type at all
    colour_word_fraction: float = 0.85  # the title names the colour
    typo_fraction: float = 0.1  # one swapped letter pair in the product noun


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, str, str]
    scene: str
    pattern: str
    shape: str
    palette: tuple[str, ...]
    nouns: tuple[str, ...]
    vague_noun: str  # the sub-category's word, shared by its sibling leaves


def leaves() -> list[Leaf]:
    """Every leaf with its inherited recipe (usual scene from the top, pattern from the middle)."""
    out = []
    for path, shape, palette, nouns in LEAF_RECIPES:
        top, sub, leaf = split_path(path)
        scene, pattern = TOP_SCENES[top], SUB_PATTERNS[sub]
        out.append(
            Leaf(
                (top, sub, leaf),
                scene,
                pattern,
                shape,
                tuple(palette.split()),
                tuple(nouns.split("|")),
                SUB_NOUNS[sub],
            )
        )
    return out


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


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 25) -> tuple:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


# Room kept free around the outline for the scene's props (fractions of the canvas height, plus
# pixels for the hanger's hook): the hanger rises above the outline, floor and shelf lie below.
PROP_ABOVE = (0.08, 10)
PROP_BELOW = 0.1
SIDE_MARGIN = 0.04


def _place(
    shape: str, size: tuple[int, int], rng: random.Random, config: SampleConfig
) -> list[tuple[float, float]]:
    """The leaf's outline stretched, rotated, scaled and moved at random, always inside the
    canvas with room for the scene's props: every later drawing step can rely on that."""
    w, h = size
    sx = 1 + rng.uniform(-config.stretch, config.stretch)
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
        dark = _jitter((60, 60, 60), rng, 15)
        draw.line([left + 4, top + 2, cx, top - 0.08 * h, right - 4, top + 2], fill=dark, width=2)
        draw.arc(
            [cx - 5, top - 0.08 * h - 9, cx + 5, top - 0.08 * h + 1], 180, 90, fill=dark, width=2
        )
    elif scene == "floor":
        draw.rectangle([0, bottom - 0.05 * h, w, h], fill=_jitter((170, 175, 185), rng, 12))
        draw.ellipse(
            [left, bottom - 0.07 * h, right, bottom], fill=_jitter((110, 110, 120), rng, 10)
        )
    elif scene == "shadow":
        shadow = Image.new("L", img.size, 0)
        dx, dy = rng.uniform(3, 7), rng.uniform(3, 7)
        ImageDraw.Draw(shadow).polygon([(x + dx, y + dy) for x, y in pts], fill=110)
        shadow = shadow.filter(ImageFilter.GaussianBlur(3))
        img = Image.composite(Image.new("RGB", img.size, (40, 40, 40)), img, shadow)
    elif scene == "shelf":
        wood = _jitter((150, 105, 60), rng, 15)
        draw.rectangle([0, bottom - 2, w, bottom + PROP_BELOW * h], fill=wood)
    return img


@dataclass(frozen=True)
class Look:
    """How one product is drawn: its scene, fill pattern and the pattern's two colours."""

    scene: str
    pattern: str
    c1: tuple[int, int, int]
    c2: tuple[int, int, int]


def _draw_product(
    size: tuple[int, int], leaf: Leaf, look: Look, rng: random.Random, config: SampleConfig
) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, _jitter(SCENES[look.scene], rng, 12))
    pts = _place(leaf.shape, size, rng, config)
    img = _draw_scene(img, look.scene, pts, rng)
    mask = Image.new("L", size, 0)
    mask_draw = ImageDraw.Draw(mask)
    mask_draw.polygon(pts, fill=255)
    if leaf.shape == "ring":
        cx = sum(x for x, _ in pts) / len(pts)
        cy = sum(y for _, y in pts) / len(pts)
        mask_draw.polygon([(cx + 0.55 * (x - cx), cy + 0.55 * (y - cy)) for x, y in pts], fill=0)
    img.paste(_pattern(size, look.pattern, look.c1, look.c2, rng), (0, 0), mask)
    if rng.random() < config.distractor_fraction:
        r = min(w, h) * rng.uniform(0.08, 0.18)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        fill = rng.choice(list(COLOURS.values()))
        ImageDraw.Draw(img).rectangle([x - r, y - r, x + r, y + r], fill=fill)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return img


def _typo(word: str, rng: random.Random) -> str:
    """Two neighbouring letters swapped, as a hurried merchant types them."""
    spots = [i for i in range(len(word) - 1) if word[i].isalpha() and word[i + 1].isalpha()]
    if not spots:
        return word
    i = rng.choice(spots)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _title(rng: random.Random, colour: str, leaf: Leaf, gender: str, config: SampleConfig) -> str:
    """Brand, gender, colour, material and product noun, each left out or blurred at times."""
    words = [rng.choice(BRANDS), gender]
    if rng.random() < config.colour_word_fraction:
        words.append(colour.capitalize())
    if rng.random() < 0.6:
        words.append(rng.choice(MATERIALS))
    draw = rng.random()
    if draw < config.no_noun_fraction:
        words.append(f"style {rng.randint(100, 999)}")
    else:
        vague = draw < config.no_noun_fraction + config.vague_noun_fraction
        noun = leaf.vague_noun if vague else rng.choice(leaf.nouns)
        words.append(_typo(noun, rng) if rng.random() < config.typo_fraction else noun)
    if rng.random() < config.noise_word_fraction:
        words.insert(rng.randint(1, len(words)), rng.choice(NOISE))
    return " ".join(words)


def _look(leaf: Leaf, rng: random.Random, config: SampleConfig) -> tuple[str, Look]:
    """(colour name, look) of one product: the leaf's usual ones most of the time."""
    palette = leaf.palette if rng.random() < config.palette_fraction else tuple(COLOURS)
    colour = rng.choice(palette)
    pattern = leaf.pattern if rng.random() < config.usual_pattern_fraction else rng.choice(PATTERNS)
    scene = leaf.scene if rng.random() < config.usual_scene_fraction else rng.choice(list(SCENES))
    c1 = _jitter(COLOURS[colour], rng)
    c2 = _jitter(COLOURS[rng.choice([c for c in COLOURS if c != colour])], rng)
    return colour, Look(scene, pattern, c1, c2)


def _png_variant(img: Image.Image, k: int) -> Image.Image:
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


def write_sample_catalog(
    out_dir: Path | str,
    n_products: int = 600,
    seed: int = 0,
    image_size: tuple[int, int] = SampleConfig.image_size,
) -> Path:
    """Write OUT/catalog.csv and OUT/images/; returns the catalog path. Same seed, same bytes."""
    if n_products < 1:
        raise ValueError(f"n_products must be >= 1, got {n_products}")
    lo, hi = image_size
    if not 16 <= lo <= hi:
        raise ValueError(f"image_size must be (min, max) with 16 <= min <= max, got {image_size}")
    config = SampleConfig(n_products=n_products, seed=seed, image_size=image_size)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    all_leaves = leaves()
    rows = []
    for i in range(n_products):
        rng = random.Random(f"{seed}:{i}")
        leaf = all_leaves[i % len(all_leaves)]
        colour, look = _look(leaf, rng, config)
        size = (rng.randint(lo, hi), rng.randint(lo, hi))
        img = _draw_product(size, leaf, look, rng, config)
        pid = f"p{i:05d}"
        if i % config.png_every == config.png_every // 2:
            name = f"images/{pid}.png"
            _png_variant(img, i // config.png_every).save(out_dir / name, format="PNG")
        else:
            name = f"images/{pid}.jpg"
            img.save(out_dir / name, format="JPEG", quality=rng.randint(80, 95))
        gender = "Unisex" if leaf.path[0] == "Home" else rng.choice(GENDERS)
        title = _title(rng, colour, leaf, gender, config)
        rows.append([pid, title, name, join_path(leaf.path), colour, look.pattern, gender])
    catalog = out_dir / "catalog.csv"
    with open(catalog, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "title", "image", "category", "colour", "pattern", "gender"])
        writer.writerows(rows)
    return catalog


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory (catalog.csv + images/)")
    parser.add_argument("--n", type=int, default=SampleConfig.n_products, help="products")
    parser.add_argument("--seed", type=int, default=SampleConfig.seed)
    args = parser.parse_args(argv)
    path = write_sample_catalog(args.out, n_products=args.n, seed=args.seed)
    print(f"wrote {args.n} products to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
