"""The CLI and the pipeline: config precedence, fast --help, a short end-to-end run."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from embedder.bundle import Bundle
from index.store import ProductIndex
from train.config import TrainConfig, apply_overrides, parse_set, resolve_config
from train.huse import build_parser, main
from train.pipeline import BUNDLE_DIR, INDEX_DIR


def test_config_precedence_defaults_file_then_set(tmp_path):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"lr": 0.01, "max_epochs": 7, "image_towers": [[64, 64]]}))
    cfg = resolve_config(
        preset, ["lr=3e-4", "attribute_heads=('gender',)", "fusion_image_weight=0.5"])
    assert cfg.lr == 3e-4 and cfg.max_epochs == 7 and cfg.image_towers == ((64, 64),)
    assert cfg.attribute_heads == ("gender",) and cfg.patience == TrainConfig().patience
    assert resolve_config(None, ["oversample_percentile=50"]).oversample_percentile == 50.0
    assert parse_set(["image_backbone=hf:/x/y"]) == {"image_backbone": "hf:/x/y"}


def test_config_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ValueError, match="unknown config keys \\['lrr'\\]"):
        apply_overrides(TrainConfig(), {"lrr": 1})
    with pytest.raises(TypeError, match="max_epochs: 'ten'"):
        resolve_config(None, ["max_epochs='ten'"])
    with pytest.raises(TypeError, match="use_tfidf"):
        apply_overrides(TrainConfig(), {"use_tfidf": 1})
    with pytest.raises(ValueError, match="dropout"):
        resolve_config(None, ["dropout=1.5"])


def test_help_does_not_import_torch():
    code = ("import sys; from train.huse import build_parser; build_parser().format_help(); "
            "bad = [m for m in ('torch', 'faiss', 'sklearn', 'transformers') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "sample-catalog" in build_parser().format_help()


def test_cli_requires_catalog_and_out(capsys):
    assert main([]) == 2
    assert "--catalog and --out are required" in capsys.readouterr().err


def test_end_to_end_run_writes_loadable_bundle_report_and_index(trained_run):
    cfg, out = trained_run
    bundle = Bundle.load(out / BUNDLE_DIR)
    assert bundle.heads == ["level1", "level2", "level3", "attr:gender"]
    assert bundle.leaf_head == "level3" and bundle.dim == 16
    assert bundle.config.train_config["max_epochs"] == 3
    for name in ("report.json", "report.md", "plots/loss_curves.png",
                 "plots/confusion_matrix.png", "plots/embedding_map.png", "tfidf.json"):
        assert (out / BUNDLE_DIR / name).is_file(), name
    report = json.loads((out / BUNDLE_DIR / "report.json").read_text())
    assert len(report["history"]) == 3
    assert report["bundle"]["fingerprint"] == bundle.fingerprint
    assert report["data"]["splits"]["test"] > 0
    assert "level3" in report["evaluation"]["heads"]
    assert (out / "rejects.csv").is_file()

    store = ProductIndex.open(out / INDEX_DIR, expected_fingerprint=bundle.fingerprint)
    try:
        assert len(store) == report["data"]["accepted"]
        first = store.get(store_ids(out)[0])
        assert " > " in first.category and not first.image.startswith("/")
        assert (out / first.image).is_file()  # adopted into the model dir (#13)
        hits = store.search(store.vector(first.id)[None, :], 1)
        assert hits[0][0].id == first.id and hits[0][0].score == pytest.approx(1.0, abs=1e-4)
    finally:
        store.close()


def store_ids(out):
    import csv

    catalog = json.loads((out / BUNDLE_DIR / "report.json").read_text())["data"]["catalog"]
    with open(catalog, newline="") as f:
        return [row["id"] for row in csv.DictReader(f)]


def test_training_reduces_loss_and_embeds_catalog(trained_run):
    cfg, out = trained_run
    hist = json.loads((out / BUNDLE_DIR / "report.json").read_text())["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    bundle = Bundle.load(out / BUNDLE_DIR)
    emb = bundle.embed(texts=["red cotton shirt", "blue shoe"])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_evaluate_bundle_reproduces_the_report(trained_run, tmp_path):
    from train.pipeline import evaluate_bundle

    cfg, out = trained_run
    bundle_dir = shutil.copytree(out / BUNDLE_DIR, tmp_path / BUNDLE_DIR)  # fixture stays as is
    before = json.loads((bundle_dir / "report.json").read_text())
    after = evaluate_bundle(bundle_dir, cfg.catalog, cache_dir=cfg.cache_dir)
    leaf = before["evaluation"]["leaf_head"]
    assert after["evaluation"]["heads"][leaf] == before["evaluation"]["heads"][leaf]
    assert json.loads((bundle_dir / "report.json").read_text())["history"] == before["history"]
