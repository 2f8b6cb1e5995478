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
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huse_common.categories import join_path, split_path
from train.sample_drawing import COLOURS, PATTERNS, SCENES, Look, draw_product, jitter, png_variant

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
    c1 = jitter(COLOURS[colour], rng)
    c2 = jitter(COLOURS[rng.choice([c for c in COLOURS if c != colour])], rng)
    return colour, Look(scene, pattern, c1, c2)


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
        img = draw_product(size, leaf.shape, look, rng, config.stretch, config.distractor_fraction)
        pid = f"p{i:05d}"
        if i % config.png_every == config.png_every // 2:
            name = f"images/{pid}.png"
            png_variant(img, i // config.png_every).save(out_dir / name, format="PNG")
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
