"""Bundle: embed, save, load, embed again (allclose); strict loading; classification output."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from embedder.backbone_tail import TunedTail
from embedder.bundle import BackboneInfo, Bundle, TfidfText, class_centroids
from embedder.bundle_io import CONFIG_FILE, LABELS_FILE, MODEL_FILES, WEIGHTS_FILE
from embedder.errors import BundleError
from embedder.towers import HuseModel, Tower

TITLES = ["red cotton shirt", "blue denim jeans", "black leather boots", "red silk shirt"]


def make_bundle(image_spec, text_spec, image_dim, text_dim, tfidf=True, text_engine=""):
    tf = TfidfText.fit(TITLES, max_features=50) if tfidf else None
    torch.manual_seed(0)
    model = HuseModel(Tower(image_dim, (16,), 8, 0.1),
                      Tower(text_dim + (tf.dim if tf else 0), (16,), 8, 0.1),
                      {"level1": 2, "level2": 3}, logit_scale=4.0)
    labels = {"level1": ["A", "B"], "level2": ["A > x", "A > y", "B > z"]}
    rng = np.random.default_rng(0)
    cents = {h: class_centroids(rng.normal(size=(6, 8)).astype(np.float32),
                                np.arange(6) % n, n) for h, n in (("level1", 2), ("level2", 3))}
    return Bundle.from_trained(
        model, labels, image_backbone=BackboneInfo(image_spec, image_dim),
        text_backbone=BackboneInfo(text_spec, text_dim, text_engine), leaf_head="level2",
        other_threshold=0.6, tfidf=tf, centroids=cents, loss_weights={"w_cls": 1.0},
        train_config={"seed": 0})


@pytest.fixture()
def bundle(tiny_image_backbone_dir, tiny_text_backbone_dir, tiny_image_backbone,
           tiny_text_backbone):
    return make_bundle(f"hf:{tiny_image_backbone_dir}", f"hf:{tiny_text_backbone_dir}",
                       tiny_image_backbone.dim, tiny_text_backbone.dim)


def images():
    return [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "black", "white")]


def test_embed_save_load_embed_roundtrip(bundle, tmp_path):
    before = bundle.embed(images=images(), texts=TITLES)
    assert before.shape == (4, 8) and before.dtype == np.float32
    assert np.allclose(np.linalg.norm(before, axis=1), 1, atol=1e-5)
    bundle.save(tmp_path)
    loaded = Bundle.load(tmp_path)
    after = loaded.embed(images=images(), texts=TITLES)
    assert np.allclose(before, after, atol=1e-6)
    assert loaded.fingerprint == bundle.fingerprint and len(loaded.fingerprint) == 64
    assert loaded.heads == ["level1", "level2"] and loaded.leaf_head == "level2"
    assert loaded.levels == ["level1", "level2"] and loaded.dim == 8
    for h in loaded.heads:
        assert np.array_equal(loaded.centroids[h], bundle.centroids[h])
    assert np.allclose(loaded.embed(texts=TITLES), bundle.embed(texts=TITLES), atol=1e-6)


def test_fusion_is_normalised_sum_of_modalities(bundle):
    img = np.random.default_rng(1).normal(size=(3, bundle.config.image_backbone.dim))
    txt = np.random.default_rng(2).normal(size=(3, bundle.config.text_backbone.dim))
    e_i = bundle.embed_features(image_feats=img)
    e_t = bundle.embed_features(text_feats=txt, titles=TITLES[:3])
    fused = bundle.embed_features(img, txt, titles=TITLES[:3])
    expected = (e_i + e_t) / np.linalg.norm(e_i + e_t, axis=1, keepdims=True)
    assert np.allclose(fused, expected, atol=1e-5)
    with pytest.raises(ValueError, match="titles"):
        bundle.embed_features(text_feats=txt)


def test_classify_returns_k_labels_per_head_and_other_flag(bundle):
    out = bundle.classify(images=images()[:2], texts=TITLES[:2], k=2)
    assert len(out) == 2 and set(out[0]) == {"level1", "level2", "path"}
    ranked = out[0]["level2"]["labels"]
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]
    assert {name for name, _ in ranked} <= set(bundle.labels["level2"])
    assert out[0]["level2"]["other"] == (ranked[0][1] < 0.6)
    emb = bundle.embed(texts=TITLES)
    cent = bundle.classify_embeddings(emb, method="centroid", k=1)
    best = bundle.centroid_scores(emb)["level1"].argmax(axis=1)
    assert [c["level1"]["labels"][0][0] for c in cent] == [bundle.labels["level1"][j]
                                                           for j in best]
    with pytest.raises(ValueError, match="method"):
        bundle.classify_embeddings(emb, method="knn")


@pytest.mark.parametrize("method", ["linear", "centroid"])
def test_path_is_consistent_and_joins_every_level(bundle, method):
    emb = bundle.embed(texts=TITLES)
    scores = (bundle.head_probs(emb) if method == "linear" else bundle.centroid_scores(emb))
    paths = bundle.path_scores(scores, method)
    leaves = bundle.labels["level2"]  # "A > x", "A > y", "B > z"; parents "A", "B"
    parent = [bundle.labels["level1"].index(leaf.split(" > ")[0]) for leaf in leaves]
    for i in range(len(emb)):
        for j, p in enumerate(parent):
            want = (scores["level1"][i, p] * scores["level2"][i, j] if method == "linear"
                    else (scores["level1"][i, p] + scores["level2"][i, j]) / 2)
            assert paths[i, j] == pytest.approx(want, rel=1e-5, abs=1e-6)
    out = bundle.classify_embeddings(emb, method=method, k=3)
    for row, s in zip(out, paths, strict=True):
        assert row["path"]["labels"][0] == (leaves[int(s.argmax())], pytest.approx(s.max()))


def test_load_is_strict_about_weights(bundle, tmp_path):
    bundle.save(tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_FILE))
    state.pop("heads.0.bias")
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(BundleError, match=r"missing keys \['heads.0.bias'\].*extra.weight"):
        Bundle.load(tmp_path)


def test_load_rejects_shape_and_format_mismatch(bundle, tmp_path):
    bundle.save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["embed_dim"] = 16
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(BundleError, match="shape mismatch"):
        Bundle.load(tmp_path)
    config["format_version"] = 99
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(BundleError, match="format_version"):
        Bundle.load(tmp_path)
    with pytest.raises(BundleError, match="cannot read"):
        Bundle.load(tmp_path / "nope")


def test_fingerprint_changes_with_weights(bundle):
    before = bundle.fingerprint
    other = make_bundle(bundle.config.image_backbone.spec, bundle.config.text_backbone.spec,
                        bundle.config.image_backbone.dim, bundle.config.text_backbone.dim)
    assert other.fingerprint == before  # same files, same fingerprint
    other = make_bundle(bundle.config.image_backbone.spec, bundle.config.text_backbone.spec,
                        bundle.config.image_backbone.dim, bundle.config.text_backbone.dim)
    with torch.no_grad():
        other.model.heads[0].bias.add_(1.0)
    assert other.fingerprint != before


def test_tfidf_matches_sklearn():
    from sklearn.feature_extraction.text import TfidfVectorizer

    tf = TfidfText.fit(TITLES, max_features=50)
    ref = TfidfVectorizer(max_features=50, ngram_range=(1, 2), sublinear_tf=True).fit(TITLES)
    queries = ["red shirt shirt", "unknown words only"]
    assert np.allclose(tf.transform(queries), ref.transform(queries).toarray(), atol=1e-6)
    again = TfidfText.from_dict(json.loads(json.dumps(tf.to_dict())))
    assert np.allclose(again.transform(queries), tf.transform(queries))


def _with_served(bundle: Bundle, tail: TunedTail | None = None) -> Bundle:
    """The bundle with a served space (visual block over random image features), and with
    `tail` (embedder.backbone_tail.TunedTail) as its image backbone's tuned tail."""
    import dataclasses

    from embedder.visual import ServedSpace, VisualBlock

    feats = np.random.default_rng(0).normal(size=(20, bundle.config.image_backbone.dim))
    served = ServedSpace(VisualBlock.fit(feats, 4, whiten=0.5), 0.3, 0.8, 0.6)
    image = dataclasses.replace(bundle.config.image_backbone,
                                tuned_from=tail.first_block if tail else 0)
    config = dataclasses.replace(bundle.config, photo_search=served.config(), image_backbone=image)
    return Bundle(config, bundle.model, bundle.labels, bundle.centroids, bundle.tfidf,
                  served=served, image_tail=tail)


def test_served_space_round_trips_and_shapes_index_rows(bundle, tmp_path):
    served = _with_served(bundle)
    again = Bundle.load(served.save(tmp_path / "b"))
    assert again.fingerprint == served.fingerprint and again.index_dim == bundle.dim + 4
    assert np.allclose(again.served.block.components, served.served.block.components)
    assert again.served.visual_weight == 0.3 and again.near_duplicate_threshold == 0.8
    assert again.served.recognition == 0.6
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, bundle.config.image_backbone.dim)).astype(np.float32)
    text = rng.normal(size=(3, bundle.config.text_backbone.dim)).astype(np.float32)
    rows = again.index_vectors(image, text, ["a red shirt", "blue jeans", "a watch"])
    assert rows.shape == (3, again.index_dim)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert np.allclose(rows[:, :bundle.dim] * np.sqrt(2),
                       bundle.embed_features(image, text, ["a red shirt", "blue jeans",
                                                           "a watch"]), atol=1e-5)
    (tmp_path / "b" / "visual.npz").unlink()
    with pytest.raises(BundleError, match="visual.npz"):
        Bundle.load(tmp_path / "b")


def test_fingerprint_covers_every_file_labels_included(bundle, tmp_path):
    """Swapping labels.json (same heads, same sizes, other order) changes the fingerprint, so
    an index built for the original bundle refuses the tampered one."""
    from index.errors import IndexMismatchError
    from index.store import ProductIndex

    bundle = _with_served(bundle, TunedTail(13, b"tail weights", b"{}"))
    bundle.save(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(MODEL_FILES)
    assert Bundle.load(tmp_path / "b").fingerprint == bundle.fingerprint
    store = ProductIndex.create(tmp_path / "ix", d=bundle.index_dim,
                                bundle_fingerprint=bundle.fingerprint, factory="Flat")
    store.close()
    for name in MODEL_FILES:
        copy = tmp_path / name
        shutil.copytree(tmp_path / "b", copy)
        if name == LABELS_FILE:
            doc = json.loads((copy / name).read_text())
            doc["heads"]["level2"] = doc["heads"]["level2"][::-1]
            (copy / name).write_text(json.dumps(doc))
        else:
            (copy / name).write_bytes((copy / name).read_bytes() + b" ")
        try:
            tampered = Bundle.load(copy)
        except BundleError:
            continue  # a file that no longer parses is refused outright
        assert tampered.fingerprint != bundle.fingerprint, name
        with pytest.raises(IndexMismatchError):
            ProductIndex.open(tmp_path / "ix", expected_fingerprint=tampered.fingerprint)


def test_a_tuned_tail_round_trips_and_must_match_the_config(bundle, tmp_path):
    import dataclasses

    from embedder.backbone_tail import TAIL_WEIGHTS_FILE

    tail = TunedTail(13, b"tail weights", b"{}")
    tuned = _with_served(bundle, tail)
    again = Bundle.load(tuned.save(tmp_path / "b"))
    assert again.image_tail == tail and again.fingerprint == tuned.fingerprint
    with pytest.raises(BundleError, match="tuned tail from 0"):
        Bundle(tuned.config, bundle.model, bundle.labels, bundle.centroids, bundle.tfidf,
               served=tuned.served)
    untuned = dataclasses.replace(tuned.config, image_backbone=bundle.config.image_backbone)
    with pytest.raises(BundleError, match="tuned from block 0"):
        Bundle(untuned, bundle.model, bundle.labels, bundle.centroids, bundle.tfidf,
               served=tuned.served, image_tail=tail)
    (tmp_path / "b" / TAIL_WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match=TAIL_WEIGHTS_FILE):
        Bundle.load(tmp_path / "b")
    _with_served(bundle).save(tmp_path / "b")  # re-saved untuned: no stale tail file is left
    assert not (tmp_path / "b" / "image_tail_int8.json").exists()


def test_save_is_deterministic_and_drops_stale_optional_files(bundle, tmp_path):
    bundle.save(tmp_path)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bundle.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    plain = make_bundle("a", "b", bundle.config.image_backbone.dim,
                        bundle.config.text_backbone.dim, tfidf=False)
    plain.save(tmp_path)
    assert not (tmp_path / "tfidf.json").exists()
    assert Bundle.load(tmp_path).fingerprint == plain.fingerprint


def test_old_bundle_keeps_unknown_training_keys_as_provenance(bundle, tmp_path):
    """A bundle written by an older trainer (renamed/removed options, an unknown top-level key)
    loads, writes those keys back unchanged, and rebuilds a training config without them."""
    from train.data import config_from_bundle

    bundle.save(tmp_path)
    doc = json.loads((tmp_path / CONFIG_FILE).read_text())
    doc["train_config"] = {"seed": 3, "lr": "fast", "old_option": [1, 2]}
    doc["written_by"] = "an older trainer"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(doc))
    old = Bundle.load(tmp_path)
    assert old.config.train_config["old_option"] == [1, 2]
    assert old.config.to_dict()["written_by"] == "an older trainer"
    cfg = config_from_bundle(old)
    assert cfg.seed == 3 and cfg.lr == type(cfg)().lr


def test_preprocess_then_embed_pixels_equals_embed_images(bundle):
    pixels = bundle.preprocess(images())
    assert pixels.shape[0] == 4 and pixels.ndim == 4
    assert np.allclose(bundle.embed(pixels=pixels, texts=TITLES),
                       bundle.embed(images=images(), texts=TITLES), atol=1e-6)


def test_served_text_features_follow_the_engine_the_bundle_was_trained_with(
        tmp_path, monkeypatch):
    """int8 and fp32 title features differ: "auto" serves the kind the towers were trained on
    (where both run), an explicit engine wins, and bundles without the record keep "auto"."""
    import embedder.backbones as backbones
    from embedder.backbones import INT8_ENGINE, matching_engine

    monkeypatch.setattr(backbones, "resolve_engine",
                        lambda spec, device, engine: engine if engine != "auto" else (
                            "torch" if device != "cpu" else
                            INT8_ENGINE if spec == "minilm" else "onnx"))
    assert matching_engine("minilm", "cpu", "onnx") == "onnx"  # fp32 features: fp32 export
    assert matching_engine("minilm", "cpu", "torch") == "onnx"
    assert matching_engine("minilm", "cpu", INT8_ENGINE) == "auto"
    assert matching_engine("minilm", "cpu", "") == "auto"  # not recorded: as before
    assert matching_engine("minilm", "cuda", INT8_ENGINE) == "auto"  # no int8 on torch
    assert matching_engine("efficientnet-lite0", "cpu", "onnx") == "auto"

    saved = make_bundle("a", "minilm", 4, 6, tfidf=False, text_engine="onnx").save(tmp_path)
    assert json.loads((saved / "config.json").read_text())["text_backbone"]["engine"] == "onnx"
    asked = []

    def fake_load(spec, device=None, engine="auto", **_):
        asked.append(engine)
        return SimpleNamespace(dim=6, engine=engine)

    monkeypatch.setattr(backbones, "load_backbone", fake_load)
    assert Bundle.load(saved, device="cpu").backbone("text").engine == "onnx"
    assert Bundle.load(saved, device="cpu", text_engine=INT8_ENGINE).backbone("text").engine \
        == INT8_ENGINE
    old = make_bundle("a", "minilm", 4, 6, tfidf=False)  # no engine recorded
    assert "engine" not in old.config.to_dict()["text_backbone"]
    assert old.backbone("text").engine == "auto" and asked == ["onnx", INT8_ENGINE, "auto"]
