"""train.sample_catalog: a deterministic, valid, structured catalog that covers every leaf."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from embedder.catalog import read_catalog
from train.sample_catalog import leaves, main, write_sample_catalog


def rows(catalog: Path) -> list[dict[str, str]]:
    with open(catalog, newline="") as f:
        return list(csv.DictReader(f))


def test_fixture_catalog_reads_clean_and_covers_the_tree(sample_catalog: Path) -> None:
    report = read_catalog(sample_catalog)
    assert report.rejects == [] and len(report.products) == 80
    assert report.duplicate_images == []
    counts = Counter(p.category for p in report.products)
    assert set(counts) == {leaf.path for leaf in leaves()}
    assert max(counts.values()) - min(counts.values()) <= 1
    assert {len(p.category) for p in report.products} == {3}
    assert all(set(p.attributes) == {"colour", "gender"} for p in report.products)
    for p in report.products:
        leaf_nouns = next(leaf.nouns for leaf in leaves() if leaf.path == p.category)
        assert any(noun in p.title for noun in leaf_nouns)
        assert p.attributes["colour"].capitalize() in p.title


def test_image_formats_vary(sample_catalog: Path) -> None:
    images = sorted((sample_catalog.parent / "images").iterdir())
    suffixes = Counter(path.suffix for path in images)
    assert suffixes[".jpg"] > suffixes[".png"] > 0
    modes = {Image.open(path).mode for path in images}
    assert modes == {"RGB", "RGBA", "P"}
    assert len({Image.open(path).size for path in images}) > 10


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = write_sample_catalog(tmp_path / "a", n_products=12, seed=3)
    b = write_sample_catalog(tmp_path / "b", n_products=12, seed=3)
    c = write_sample_catalog(tmp_path / "c", n_products=12, seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for row in rows(a):
        assert (a.parent / row["image"]).read_bytes() == (b.parent / row["image"]).read_bytes()


def test_cli_writes_the_requested_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "out"), "--n", "5", "--seed", "1"]) == 0
    assert len(rows(tmp_path / "out" / "catalog.csv")) == 5
    assert "wrote 5 products" in capsys.readouterr().out


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_products must be >= 1, got 0"):
        write_sample_catalog(tmp_path, n_products=0)
    with pytest.raises(ValueError, match=r"got \(8, 4\)"):
        write_sample_catalog(tmp_path, n_products=2, image_size=(8, 4))
