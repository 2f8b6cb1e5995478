"""train.evaluate on a real (tiny, trained) Bundle over synthetic frozen features."""

import numpy as np
import pytest

from train.data import LabeledFeatures
from train.evaluate import EvalConfig, evaluate, hardest_classes
from train.metrics import class_recall_at_k, topk_accuracy


@pytest.fixture(scope="module")
def result(case):
    return evaluate(case.bundle, case.train, case.test, EvalConfig(knn_k=5), val=case.val)


def test_every_head_input_and_method_is_reported(case, result):
    ev, _ = result
    assert ev["leaf_head"] == "level2"
    assert (ev["n_train"], ev["n_val"], ev["n_test"]) == (122, 24, 51)
    assert set(ev["heads"]) == {"level1", "level2"}
    assert ev["heads"]["level2"]["n_test_ignored"] == 3
    assert ev["heads"]["level1"]["n_test_ignored"] == 0
    for head in ev["heads"].values():
        for inp in ("image", "text", "fused"):
            for method in ("linear", "centroid"):
                r = head[inp][method]
                assert set(r) == {"top1", "top5", "macro_f1", "other_share"}
                assert all(0.0 <= v <= 1.0 for v in r.values())
                assert r["top5"] >= r["top1"]
    assert set(ev["retrieval"]) == {"image->image", "image->text", "text->image", "text->text",
                                    "fused->fused", "image->fused", "text->fused"}
    assert "baseline (a) logistic regression" in ev["seconds"]
    assert all(v >= 0 for v in ev["seconds"].values())


def test_numbers_match_the_bundle_scores(case, result):
    ev, _ = result
    b, t = case.bundle, case.test
    fused = b.embed_features(t.image, t.text, t.titles)
    y = t.labels["level2"]
    probs = b.head_probs(fused)["level2"]
    cent = b.centroid_scores(fused)["level2"]
    got = ev["heads"]["level2"]["fused"]
    assert got["linear"]["top1"] == pytest.approx(topk_accuracy(probs, y, 1))
    assert got["centroid"]["top1"] == pytest.approx(topk_accuracy(cent, y, 1))
    assert got["linear"]["other_share"] == pytest.approx(np.mean(probs.max(1) < 0.5))
    # the trained bundle separates these classes well above chance (25 %)
    assert got["linear"]["top1"] > 0.8
    assert ev["heads"]["level1"]["fused"]["linear"]["top1"] > 0.9


def test_retrieval_protocol(case, result):
    ev, _ = result
    b, t = case.bundle, case.test
    cls = np.unique(t.categories, return_inverse=True)[1].astype(np.int64)
    img = b.embed_features(image_feats=t.image)
    txt = b.embed_features(text_feats=t.text, titles=t.titles)
    expected = {
        "image->image": class_recall_at_k(img, cls, img, cls, (1, 5, 10), exclude_self=True),
        "image->text": class_recall_at_k(img, cls, txt, cls, (1, 5, 10), exclude_self=False),
    }
    for name, rec in expected.items():
        assert ev["retrieval"][name] == pytest.approx({str(k): v for k, v in rec.items()})
    v = case.val  # the same protocol on the validation split, for choices between models
    v_cls = np.unique(v.categories, return_inverse=True)[1].astype(np.int64)
    v_img = b.embed_features(image_feats=v.image)
    v_txt = b.embed_features(text_feats=v.text, titles=v.titles)
    want = class_recall_at_k(v_txt, v_cls, v_img, v_cls, (1, 5, 10), exclude_self=False)
    assert ev["validation_retrieval"]["text->image"] == pytest.approx(
        {str(k): x for k, x in want.items()})
    # 4 classes x 12 test items and 3 rare items (one class): all have a same-class neighbour
    assert ev["retrieval_queries"] == {"queries": 51, "x->x answerable": 51}
    # rare-class products are queries too: without category paths they are skipped
    no_paths = LabeledFeatures(t.product_ids, t.titles, t.image, t.text, t.labels)
    ev2, _ = evaluate(b, case.train, no_paths, EvalConfig(knn_k=5), val=case.val)
    y = t.labels["level2"]
    skip_rare = class_recall_at_k(img, y, img, y, (1, 5, 10), exclude_self=True)
    assert ev2["retrieval"]["image->image"] == pytest.approx(
        {str(k): v for k, v in skip_rare.items()})


def test_baselines(case, result):
    ev, _ = result
    lr, knn = ev["baselines"]["logreg"], ev["baselines"]["knn"]
    assert lr["C_selected_on"] == "validation split"
    assert set(lr["C_tried_top1"]) == {"0.1", "1", "10"}
    assert lr["top1"] > 0.9 and lr["converged"]
    assert knn["k"] == 5 and knn["top1"] > 0.8
    t = case.test
    x = t.image / np.linalg.norm(t.image, axis=1, keepdims=True)
    cls = np.unique(t.categories, return_inverse=True)[1].astype(np.int64)
    rec = class_recall_at_k(x, cls, x, cls, (1, 5, 10), exclude_self=True)
    assert knn["retrieval"]["image->image"] == pytest.approx({str(k): v for k, v in rec.items()})


def test_logreg_without_val_uses_a_training_holdout(case):
    ev, _ = evaluate(case.bundle, case.train, case.test, EvalConfig(logreg_cs=(0.1,)))
    lr = ev["baselines"]["logreg"]
    assert "hold-out of the training split" in lr["C_selected_on"]
    assert lr["C"] == 0.1 and lr["top1"] > 0.9
    assert ev["n_val"] == 0 and ev["validation_retrieval"] == {}


def test_artifacts(case, result):
    _, art = result
    assert art.confusion_classes == case.leaves  # 12 test items each, by index
    assert art.confusion.shape == (4, 5)
    np.testing.assert_array_equal(art.confusion.sum(axis=1), [12, 12, 12, 12])
    assert art.map_embeddings.shape == (51, 8)
    assert art.map_groups.count("Footwear") == 27 and art.map_groups.count("Apparel") == 24
    _, small = evaluate(case.bundle, case.train, case.test,
                        EvalConfig(map_max_points=10, max_confusion_classes=2, logreg_cs=(0.1,)))
    assert small.map_embeddings.shape == (10, 8) and len(small.map_groups) == 10
    assert small.confusion.shape == (2, 3)


def test_hardest_classes():
    y_true = np.array([0, 0, 0, 1, 1, 2, -1])
    y_pred = np.array([0, 1, 1, 1, 1, 2, 0])
    got = hardest_classes(y_true, y_pred, ["a", "b", "c", "d"], limit=2)
    assert got == [
        {"class": "a", "support": 3, "recall": pytest.approx(1 / 3), "confused_with": "b",
         "confused_share": pytest.approx(2 / 3)},
        {"class": "b", "support": 2, "recall": 1.0},  # ties on recall: larger class first
    ]


def test_hardest_classes_in_the_evaluation(case, result):
    ev, _ = result
    hard = ev["hardest_classes"]
    assert 1 <= len(hard) <= 4
    assert [h["recall"] for h in hard] == sorted(h["recall"] for h in hard)
    assert all(h["class"] in case.leaves and h["support"] == 12 for h in hard)


def test_bad_inputs(case):
    t = case.test
    with pytest.raises(ValueError, match="titles"):
        LabeledFeatures(t.product_ids, t.titles[:-1], t.image, t.text, t.labels)
    missing = LabeledFeatures(t.product_ids, t.titles, t.image, t.text,
                              {"level2": t.labels["level2"]})
    with pytest.raises(ValueError, match="level1"):
        evaluate(case.bundle, case.train, missing)
    with pytest.raises(ValueError, match="knn_k=0"):
        EvalConfig(knn_k=0)
