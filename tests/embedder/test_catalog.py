"""embedder.catalog: a catalog with every kind of bad row gives the right report, never a crash."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedder.catalog import MAX_TITLE_CHARS, ColumnMap, RowLimits, read_catalog
from embedder.errors import CatalogError
from embedder.images import ImageLimits, sha256_bytes


def encode(img: Image.Image, fmt: str, **save_args) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def noise_image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def write_images(root: Path) -> dict[str, bytes]:
    """One file per case; returns name -> bytes written."""
    sixteen = np.full((30, 30), 40000, dtype=np.uint16)
    rotated_exif = Image.Exif()
    rotated_exif[0x0112] = 8
    good = encode(noise_image(0), "JPEG")
    files = {
        "good.jpg": good,
        "good_copy.jpg": good,  # same bytes, another product -> duplicate image
        "other.jpg": encode(noise_image(1), "JPEG"),
        "cmyk.jpg": encode(Image.new("CMYK", (30, 30), (10, 200, 30, 5)), "JPEG"),
        "palette.png": encode(noise_image(2).convert("P"), "PNG"),
        "alpha.png": encode(noise_image(3).convert("RGBA"), "PNG"),
        "sixteen.png": encode(Image.fromarray(sixteen), "PNG"),
        "rotated.jpg": encode(noise_image(4), "JPEG", exif=rotated_exif.tobytes()),
        "truncated.jpg": good[: len(good) // 3],
        "text.jpg": b"this is not an image at all",
        "tiny.png": encode(Image.new("RGB", (5, 5)), "PNG"),
        "huge.png": encode(Image.new("1", (400, 300)), "PNG"),  # > max_pixels set below
    }
    (root / "img").mkdir()
    for name, data in files.items():
        (root / "img" / name).write_bytes(data)
    return files


# (id, title, image, category, expected reject reason or None)
ROWS = [
    ("1", "Good shirt", "img/good.jpg", "Apparel > Topwear > Shirts", None),
    ("2", "Same photo", "img/good_copy.jpg", "Apparel > Topwear > Shirts", None),
    ("1", "Duplicate id", "img/other.jpg", "Apparel > Topwear > Shirts", "duplicate_id"),
    ("3", "", "img/other.jpg", "Apparel > Topwear > Shirts", "empty_title"),
    ("4", "No file", "img/missing.jpg", "Apparel > Topwear > Shirts", "missing_image"),
    ("5", "No image given", "", "Apparel > Topwear > Shirts", "missing_image"),
    ("6", "Cut file", "img/truncated.jpg", "Apparel > Topwear > Shirts", "truncated"),
    ("7", "Text file", "img/text.jpg", "Apparel > Topwear > Shirts", "not_an_image"),
    ("8", "Tiny", "img/tiny.png", "Apparel > Topwear > Shirts", "too_small"),
    ("9", "Bomb", "img/huge.png", "Apparel > Topwear > Shirts", "too_many_pixels"),
    ("10", "No category", "img/other.jpg", "", "empty_category"),
    ("11", "Hole in category", "img/other.jpg", "Apparel >  > Shirts", "empty_category"),
    ("", "No id", "img/other.jpg", "Apparel > Topwear > Shirts", "missing_id"),
    ("..", "Dot-segment id", "img/other.jpg", "Apparel > Topwear > Shirts", "bad_id"),
    ("12", "CMYK", "img/cmyk.jpg", "Footwear > Shoes", None),
    ("13", "Palette", "img/palette.png", "Footwear > Shoes", None),
    ("14", "Alpha", "img/alpha.png", "Footwear > Sandals", None),
    ("15", "Sixteen bit", "img/sixteen.png", "Home > Decor > Lamps", None),
    ("16", "Rotated", "img/rotated.jpg", "Home > Decor > Lamps", None),
]
LIMITS = ImageLimits(max_pixels=100_000, min_side=16)


@pytest.fixture()
def bad_catalog(tmp_path: Path) -> Path:
    files = write_images(tmp_path)
    assert files["good.jpg"] == files["good_copy.jpg"]
    path = tmp_path / "catalog.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "title", "image", "category", "colour"])
        for pid, title, image, category, _ in ROWS:
            writer.writerow([pid, title, image, category, "red"])
        f.write("17,Too many cells,img/other.jpg,Home > Decor,red,surprise\n")
    with open(path, "ab") as f:
        f.write(b"\xff18,Latin-1 caf\xe9,img/other.jpg,Home > Decor,red\n")
    return path


def test_every_bad_row_is_reported_and_skipped(bad_catalog: Path, tmp_path: Path) -> None:
    report = read_catalog(bad_catalog, limits=LIMITS, rejects_path=tmp_path / "rejects.csv")
    expected = {i: reason for i, (*_, reason) in enumerate(ROWS, start=1) if reason}
    expected[len(ROWS) + 1] = "bad_row"
    expected[len(ROWS) + 2] = "bad_encoding"
    assert {r.row: r.reason for r in report.rejects} == expected
    assert [p.id for p in report.products] == ["1", "2", "12", "13", "14", "15", "16"]
    assert (report.rejects[0].row, report.rejects[0].id) == (3, "1")  # sorted by row, id kept
    assert report.n_rows == len(ROWS) + 2

    summary = report.summary()
    assert summary["rows"] == len(ROWS) + 2
    assert summary["accepted"] == 7 and summary["rejected"] == len(expected)
    assert summary["rejects_by_reason"]["missing_image"] == 2
    assert summary["rejects_by_reason"]["empty_category"] == 2
    assert summary["duplicate_images"] == 1

    with open(tmp_path / "rejects.csv", newline="", encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    assert [int(r["row"]) for r in written] == sorted(expected)
    assert {r["reason"] for r in written} == set(expected.values())
    assert all(r["detail"] for r in written)


def test_products_carry_fields_hash_and_duplicates(bad_catalog: Path) -> None:
    report = read_catalog(bad_catalog, limits=LIMITS)
    by_id = {p.id: p for p in report.products}
    good = by_id["1"]
    assert good.title == "Good shirt"
    assert good.category == ("Apparel", "Topwear", "Shirts")
    assert good.category_path == "Apparel > Topwear > Shirts"
    assert good.attributes == {"colour": "red"}
    assert good.image_path == bad_catalog.parent / "img" / "good.jpg"
    assert good.image_sha256 == sha256_bytes(good.image_path.read_bytes())
    assert by_id["12"].category == ("Footwear", "Shoes")
    assert report.duplicate_images == [("2", "1")]


def test_jsonl_with_overridden_columns_and_bad_lines(tmp_path: Path) -> None:
    write_images(tmp_path)
    absolute = str(tmp_path / "img" / "other.jpg")
    lines = [
        json.dumps({"sku": "a", "name": "Alpha", "pic": "img/good.jpg", "path": "X/Y", "n": 3}),
        "{not json",
        json.dumps(["a", "list"]),
        "",
        json.dumps({"sku": 7, "name": "Seven", "pic": absolute, "path": "X/Z", "tags": ["t"]}),
        json.dumps({"sku": "b", "name": "Bad", "pic": "img/text.jpg", "path": "X/Y"}),
    ]
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n")
    columns = ColumnMap(id="sku", title="name", image="pic", category="path", category_sep="/")
    report = read_catalog(path, columns=columns, limits=LIMITS, workers=1)
    assert [(r.row, r.reason) for r in report.rejects] == [
        (2, "bad_json"),
        (3, "bad_json"),
        (6, "not_an_image"),
    ]
    first, second = report.products
    assert first.attributes == {"n": "3"} and first.category == ("X", "Y")
    assert second.id == "7" and second.image_path == Path(absolute)
    assert second.attributes == {"tags": '["t"]'}


def test_oversized_cells_and_long_titles_reject_only_their_rows(tmp_path: Path) -> None:
    write_images(tmp_path)
    big = "x" * (csv.field_size_limit() + 10)
    multiline = 'line "one"\n' + big + "\nlast line"  # quoted, with newlines and quotes
    path = tmp_path / "catalog.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["title", "id", "image", "category", "notes"])
        writer.writerow(["Good", "1", "img/good.jpg", "A > B", "fine"])
        writer.writerow(["Big note", "2", "img/other.jpg", "A > B", big])
        writer.writerow(["Quoted note", "3", "img/other.jpg", "A > B", multiline])
        writer.writerow([big, "4", "img/other.jpg", "A > B", "id comes after the big cell"])
        writer.writerow(["t" * (MAX_TITLE_CHARS + 1), "5", "img/other.jpg", "A > B", ""])
        writer.writerow(["t" * MAX_TITLE_CHARS, "6", "img/other.jpg", "A > B", "after all"])
    report = read_catalog(path, limits=LIMITS)
    assert [(r.row, r.id, r.reason) for r in report.rejects] == [
        (2, "2", "field_too_large"),
        (3, "3", "field_too_large"),
        (4, None, "field_too_large"),
        (5, "5", "title_too_long"),
    ]
    assert "field limit" in report.rejects[0].detail
    assert str(MAX_TITLE_CHARS) in report.rejects[3].detail
    assert [p.id for p in report.products] == ["1", "6"]
    assert report.products[1].attributes == {"notes": "after all"}
    assert report.n_rows == 6


def test_jsonl_long_lines_and_cells_are_rejects(tmp_path: Path) -> None:
    write_images(tmp_path)
    limits = RowLimits(max_cell_chars=500, max_line_bytes=2000, max_title_chars=50)

    def line(pid: str, title: str = "Shirt", **cells: str) -> str:
        record = {"id": pid, "title": title, "image": "img/good.jpg", "category": "A", **cells}
        return json.dumps(record, ensure_ascii=False)

    notes = {f"note{i}": "n" * 350 for i in range(5)}
    at_limit = line("2", **notes)
    notes["note0"] += "n" * (limits.max_line_bytes - len(at_limit.encode()))
    at_limit = line("2", **notes)
    assert len(at_limit.encode()) == limits.max_line_bytes
    lines = [
        line("1"),
        at_limit,
        line("3", note="é" * 1000),  # 1,000 chars but 2,000+ bytes
        line("4", note="n" * 501),
        line("5", title="T" * 51),
        line("6"),
    ]
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")  # no newline after the last line
    report = read_catalog(path, limits=LIMITS, row_limits=limits)
    assert [(r.row, r.id, r.reason) for r in report.rejects] == [
        (3, None, "line_too_large"),
        (4, "4", "field_too_large"),
        (5, "5", "title_too_long"),
    ]
    assert report.rejects[1].detail == "cell(s) ['note'] over 500 chars"
    assert [p.id for p in report.products] == ["1", "2", "6"]
    assert report.n_rows == 6


def test_an_id_is_claimed_only_by_an_accepted_row(tmp_path: Path) -> None:
    write_images(tmp_path)
    path = tmp_path / "catalog.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "title", "image", "category"])
        writer.writerow(["A", "Cut photo", "img/truncated.jpg", "X > Y"])
        writer.writerow(["B", "Bee", "img/other.jpg", "X > Y"])
        writer.writerow(["A", "Good photo", "img/good.jpg", "X > Y"])
        writer.writerow(["A", "Second good", "img/cmyk.jpg", "X > Y"])
        writer.writerow(["B", "", "img/other.jpg", "X > Y"])
        writer.writerow(["C", "Sea", "img/palette.png", "X > Y"])
    report = read_catalog(path, limits=LIMITS)
    assert [(p.id, p.title) for p in report.products] == [
        ("B", "Bee"),
        ("A", "Good photo"),
        ("C", "Sea"),
    ]
    assert [(r.row, r.id, r.reason) for r in report.rejects] == [
        (1, "A", "truncated"),
        (4, "A", "duplicate_id"),
        (5, "B", "empty_title"),
    ]
    assert report.rejects[1].detail == "id 'A' already taken by accepted row 3"


def test_row_limits_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_title_chars=0"):
        RowLimits(max_title_chars=0)
    catalog = tmp_path / "c.csv"
    catalog.write_text("id,title,image,category\n")
    too_big = RowLimits(max_cell_chars=csv.field_size_limit() + 1)
    with pytest.raises(ValueError, match="exceeds csv.field_size_limit"):
        read_catalog(catalog, row_limits=too_big)


def test_whole_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(tmp_path / "absent.csv")
    bad_header = tmp_path / "c.csv"
    bad_header.write_text("id,name,image,category\n1,x,y,z\n")
    with pytest.raises(CatalogError, match=r"missing column\(s\) \['title'\]"):
        read_catalog(bad_header)
    other = tmp_path / "c.parquet"
    other.write_text("x")
    with pytest.raises(CatalogError, match="unknown format"):
        read_catalog(other)
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        read_catalog(bad_header, workers=0)


def test_fifty_rows_of_the_real_catalog(shared_data_dir: Path, tmp_path: Path) -> None:
    source = shared_data_dir / "fashion-products" / "catalog.csv"
    if not source.is_file():
        pytest.skip(f"{source} absent")
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))[:50]
    for row in rows:
        row["image"] = str(source.parent / row["image"])
    subset = tmp_path / "subset.csv"
    with open(subset, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = read_catalog(subset)
    assert report.rejects == []
    assert len(report.products) == 50
    assert all(len(p.category) == 3 for p in report.products)
    assert {"gender", "baseColour", "season", "year", "usage"} == set(report.products[0].attributes)
