"""train.report: report.json, report.md and the three plots from a real evaluation."""

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from train.evaluate import EvalConfig, evaluate
from train.plots import short_name
from train.report import render_markdown, write_report

PLOTS = ("loss_curves.png", "confusion_matrix.png", "embedding_map.png")


@pytest.fixture(scope="module")
def written(tmp_path_factory, case):
    ev, art = evaluate(case.bundle, case.train, case.test, EvalConfig(knn_k=5), val=case.val)
    report = {
        "evaluation": ev,
        "data": {"catalog": "synthetic", "n_products": 199, "n_rejected": 2,
                 "rejects_by_reason": {"truncated": 1, "not_an_image": 1},
                 "splits": {"train": 122, "val": 24, "test": 51},
                 "rare_classes": {"level2": ["Footwear > Clogs"]}},
        "config": {"embed_dim": 8, "seed": 0},
        "timings_s": {"training": 1.5, "evaluation": 0.5},
        "index": {"factory": "Flat", "build": {"recall_at_10": 1.0, "tuning": [1, 2]}},
    }
    out = tmp_path_factory.mktemp("bundle")
    write_report(out, report, case.history, art)
    return out, report, case.history, art


def _strict_json(path: Path) -> dict:
    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")
    return json.loads(path.read_text(), parse_constant=no_nan)


def test_files_are_written_completely(written):
    out, report, history, _ = written
    assert sorted(p.name for p in out.iterdir()) == ["plots", "report.json", "report.md"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(PLOTS)  # no .tmp left
    for name in PLOTS:
        with Image.open(out / "plots" / name) as im:
            im.load()
            assert im.format == "PNG" and im.width >= 600 and im.height >= 400


def test_report_json_holds_every_number(written):
    out, report, history, _ = written
    saved = _strict_json(out / "report.json")
    assert saved["history"] == json.loads(json.dumps(history))
    ev = report["evaluation"]
    assert saved["evaluation"]["heads"]["level2"]["fused"]["linear"]["top1"] == pytest.approx(
        ev["heads"]["level2"]["fused"]["linear"]["top1"])
    assert saved["evaluation"]["baselines"]["logreg"]["C"] == ev["baselines"]["logreg"]["C"]
    assert saved["data"]["splits"] == {"train": 122, "val": 24, "test": 51}


def test_report_md_tables(written):
    out, report, _, _ = written
    md = (out / "report.md").read_text()
    ev = report["evaluation"]
    fused = ev["heads"]["level2"]["fused"]["linear"]
    lr = ev["baselines"]["logreg"]
    assert f"| HUSE fused | linear | {100 * fused['top1']:.1f} |" in md
    delta = f"{100 * (fused['top1'] - lr['top1']):+.1f}"
    assert f"fused top-1: {100 * fused['top1']:.1f}** vs baseline (a)" in md
    assert f"({delta} points)" in md
    assert f"| (a) logistic regression, image+text | C={lr['C']:g} | {100 * lr['top1']:.1f} |" in md
    assert "| (b) frozen image->image |" in md
    hard = ev["hardest_classes"][0]
    assert f"| {hard['class']} | {hard['support']} | {100 * hard['recall']:.1f} |" in md
    assert "so the 0 of 51 queries whose class has no other test product" in md
    for pair in ("image->text", "text->image", "fused->fused"):
        assert f"| HUSE {pair} |" in md
    assert "| level1 | 2 | 51 |" in md and "| level2 | 4 | 48 |" in md
    assert "- level2: 1 classes below min_per_class: Footwear > Clogs" in md
    assert "rejected rows by reason: not_an_image 1, truncated 1" in md
    assert "left out of classification metrics): level2 3" in md
    assert f"{len(_strict_json(out / 'report.json')['history'])} epochs" in md
    assert "- seconds: training: 1.5, evaluation: 0.5" in md
    assert "- index: factory: Flat, build.recall_at_10: 1.0\n" in md  # lists left out
    assert "- config: embed_dim=8, seed=0" in md
    assert "- evaluation seconds: embed test split: " in md
    for name in PLOTS:
        assert f"(plots/{name})" in md


def test_nan_becomes_null_and_n_a(written, tmp_path):
    _, report, history, art = written
    ev = json.loads(json.dumps(report["evaluation"]))
    ev["heads"]["level2"]["image"]["centroid"]["macro_f1"] = math.nan
    md = render_markdown({"evaluation": ev}, history)
    row = next(line for line in md.splitlines() if line.startswith("| HUSE image | centroid |"))
    assert row.split(" | ")[4] == "n/a"
    write_report(tmp_path, {"evaluation": ev}, history, art)
    saved = _strict_json(tmp_path / "report.json")
    assert saved["evaluation"]["heads"]["level2"]["image"]["centroid"]["macro_f1"] is None


def test_empty_history_and_bad_report(written, tmp_path):
    _, report, _, art = written
    write_report(tmp_path, report, [], art)
    assert "no training history given" in (tmp_path / "report.md").read_text()
    assert _strict_json(tmp_path / "report.json")["history"] == []
    with Image.open(tmp_path / "plots" / "loss_curves.png") as im:
        assert im.format == "PNG"
    with pytest.raises(ValueError, match="'evaluation'"):
        write_report(tmp_path, {"data": {}}, [], art)


def test_short_names():
    assert short_name("Apparel > Topwear > Tshirts") == "Tshirts"
    long = "Accessories > Bags > A very long leaf class name indeed"
    assert short_name(long) == "A very long leaf clas…" and len(short_name(long)) == 22
