"""Photo queries, the served-vector layout and the #11 metrics on hand-made data."""

import io

import numpy as np
import pytest
from PIL import Image

from embedder.visual import (
    VisualBlock,
    instance_queries,
    query_vectors,
    split_stored,
    stored_vectors,
)
from train.photo_eval import (
    PhotoQueryConfig,
    instance_recall_at_1,
    photo_query,
    precision_at_k,
    query_seed,
    ranked_ids,
)
from train.photo_search import (
    PhotoGrid,
    choose_served_space,
    duplicate_threshold,
    listing_threshold,
    pick,
)


def _image() -> Image.Image:
    x = np.zeros((60, 80, 3), np.uint8)
    x[:, :40] = (255, 0, 0)  # left half red, right half blue
    x[:, 40:] = (0, 0, 255)
    return Image.fromarray(x)


def test_photo_query_is_a_cropped_mirrored_jpeg_and_seeded():
    data = photo_query(_image(), seed=3)
    assert data == photo_query(_image(), seed=3)
    assert data != photo_query(_image(), seed=4)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG"
    w, h = img.size
    assert 80 * 0.8 <= w < 80 and 60 * 0.8 <= h < 60
    row = np.asarray(img.convert("RGB"))[h // 2]
    left, right = row[2], row[-3]
    assert left[2] > 200 and right[0] > 200  # mirrored: blue now on the left
    unmirrored = photo_query(_image(), seed=3, cfg=PhotoQueryConfig(mirror=False))
    assert np.asarray(Image.open(io.BytesIO(unmirrored)).convert("RGB"))[h // 2, 2][0] > 200
    assert query_seed("a", 0) == query_seed("a", 0) != query_seed("b", 0)


def test_metrics_count_self_first_and_the_others_shared_values():
    ranked = [["a", "b", "c"], ["x", "b", "a"]]
    assert instance_recall_at_1(["a", "b"], ranked) == 0.5
    values = {"leaf": {"a": "L1", "b": "L1", "c": "L2", "x": "L1"}}
    p = precision_at_k(["a", "b"], ranked, values, k=2)
    # a: others b (L1), c (L2) -> 1/2; b: others x (L1), a (L1) -> 2/2
    assert p["leaf"] == pytest.approx(0.75)
    assert ranked_ids(np.array([[0.1, 0.9, 0.5]]), ["p", "q", "r"], 2) == [["q", "r"]]


def test_served_vector_scores_are_the_weighted_cosines():
    rng = np.random.default_rng(0)
    h, v = rng.normal(size=(5, 8)), rng.normal(size=(5, 4))
    db = stored_vectors(h, v)
    assert np.allclose(np.linalg.norm(db, axis=1), 1.0, atol=1e-5)
    hn = h / np.linalg.norm(h, axis=1, keepdims=True)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    for w in (0.0, 0.3, 1.0):
        q = query_vectors(h[:2], v[:2], w, 4)
        want = (1 - w) * hn[:2] @ hn.T + w * vn[:2] @ vn.T
        assert np.allclose(q @ db.T, want, atol=1e-5)
    text = query_vectors(h[:1], None, 0.7, 4)  # no image: HUSE alone, knob ignored
    assert np.allclose(text @ db.T, hn[:1] @ hn.T, atol=1e-5)
    plain = VisualBlock(np.zeros(3, np.float32), np.zeros((4, 3), np.float32))  # r = 4
    assert np.allclose(instance_queries(db, 8, plain) @ db.T, vn @ vn.T, atol=1e-5)
    sh, sv = split_stored(db, 8)
    assert np.allclose(sh, hn, atol=1e-5) and np.allclose(sv, vn, atol=1e-5)
    no_image = stored_vectors(h[:1], np.zeros((1, 4)))
    assert np.allclose(np.linalg.norm(no_image), 1.0) and not no_image[0, 8:].any()
    with pytest.raises(ValueError, match="visual_weight"):
        query_vectors(h, v, 1.5, 4)


def test_visual_block_round_trips_and_projects_to_unit_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    block = VisualBlock.fit(x, 6)
    z = block.transform(x)
    assert z.shape == (50, 6) and np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    again = VisualBlock.from_arrays(block.arrays())
    assert np.allclose(again.transform(x), z)
    with pytest.raises(ValueError, match="visual dim"):
        VisualBlock.fit(x, 17)
    with pytest.raises(ValueError, match="image features"):
        block.transform(x[:, :5])


def test_visual_block_weighs_the_colour_histogram_columns():
    rng = np.random.default_rng(3)
    deep, colour = rng.normal(size=(40, 16)), np.abs(rng.normal(size=(40, 8)))
    x = np.hstack([deep, colour]).astype(np.float32)
    fitted = VisualBlock.fit(x, 6, colour_dim=8)
    assert (fitted.dim, fitted.in_dim) == (14, 24)
    plain = VisualBlock(fitted.mean, fitted.components)  # the same PCA, no colour columns
    pca = plain.transform(deep)
    cn = colour / np.linalg.norm(colour, axis=1, keepdims=True)
    for c in (0.0, 0.3, 0.9):
        z = fitted.with_colour_weight(c).transform(x)
        assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
        assert np.allclose(z @ z.T, (1 - c) * pca @ pca.T + c * cn @ cn.T, atol=1e-5)
    block = fitted.with_colour_weight(0.3)
    z = block.transform(x)
    assert np.allclose(block.instance(z), pca, atol=1e-5)  # the colour columns left out
    db = stored_vectors(rng.normal(size=(40, 5)), z)
    assert np.allclose(instance_queries(db, 5, block) @ db.T, pca @ pca.T, atol=1e-5)
    again = VisualBlock.from_arrays(block.arrays())
    assert (again.colour_dim, again.colour_weight) == (8, 0.3)
    assert np.allclose(again.transform(x), block.transform(x))
    old = {k: v for k, v in block.arrays().items() if not k.startswith("colour")}
    assert VisualBlock.from_arrays(old).colour_dim == 0  # bundles from before the colour block
    for bad in (1.0, 1.5):  # colour alone would leave nothing to recognise a product by
        with pytest.raises(ValueError, match="colour_weight"):
            fitted.with_colour_weight(bad)


def test_selection_rule_keeps_leaf_precision_then_maximises_look_alikes():
    def row(w, c, leaf, colour, usage):
        return {"visual_weight": w, "colour_weight": c, "instance_r1": 0.99, "leaf_p10": leaf,
                "queries": 10_000, "attr_p10": {"colour": colour, "usage": usage}}

    rows = [row(0.1, 0.0, 0.920, 0.25, 0.8), row(0.1, 0.2, 0.915, 0.35, 0.8),
            row(0.1, 0.3, 0.905, 0.40, 0.8), row(0.2, 0.2, 0.912, 0.35, 0.8)]
    assert pick(rows, 0.97)["colour_weight"] == 0.0  # no tolerance: the best leaf precision
    best = pick(rows, 0.97, leaf_tolerance=0.01)  # 0.905 is outside the band
    assert (best["colour_weight"], best["visual_weight"]) == (0.2, 0.1)  # tie: smaller weight
    assert pick(rows, 0.97, leaf_tolerance=0.02)["colour_weight"] == 0.3
    bare = [{**r, "attr_p10": {}} for r in rows]  # no attribute columns: leaf precision
    assert pick(bare, 0.97, leaf_tolerance=0.02)["colour_weight"] == 0.0


def test_selection_rule_finds_the_product_then_maximises_leaf_precision():
    def row(w, r1, leaf, colour):
        return {"visual_weight": w, "instance_r1": r1, "leaf_p10": leaf, "queries": 10_000,
                "attr_p10": {"colour": colour}}

    rows = [row(0.0, 0.2, 0.95, 0.1), row(0.3, 0.98, 0.9, 0.25), row(0.6, 0.98, 0.85, 0.31),
            row(1.0, 0.99, 0.7, 0.35)]
    assert pick(rows, 0.97)["visual_weight"] == 0.3
    assert pick(rows, 0.995)["visual_weight"] == 1.0  # none qualifies: best instance recall
    few = [{**r, "queries": 100} for r in rows]  # 0.98 - 0.014 < 0.97: too few to be sure
    assert pick(few, 0.97)["visual_weight"] == 1.0


def test_choice_on_planted_data_recognises_products_and_keeps_their_class():
    rng = np.random.default_rng(2)
    n = 40
    ids = [str(i) for i in range(n)]
    table = {"leaf": {str(i): f"L{i % 4}" for i in range(n)}}
    centres = rng.normal(size=(4, 8))
    huse = centres[np.arange(n) % 4] + 0.1 * rng.normal(size=(n, 8))  # class structure only
    image = rng.normal(size=(n, 12)).astype(np.float32)  # instance structure only
    q = image[:10] + 0.05 * rng.normal(size=(10, 12)).astype(np.float32)
    grid = PhotoGrid(visual_dims=(12,), whiten=(0.0,), weights=(0.0, 0.5, 1.0),
                     min_instance_r1=0.97)
    served, choice = choose_served_space(huse, image, np.arange(n), centres[np.arange(10) % 4],
                                         q, np.arange(10), ids, table, grid)
    scores = {s["visual_weight"]: s for s in choice.validation}
    assert scores[0.0]["instance_r1"] < 0.97 <= scores[0.5]["instance_r1"]
    assert served.visual_weight == 0.5 and choice.setting["visual_weight"] == 0.5
    assert scores[0.5]["leaf_p10"] > scores[1.0]["leaf_p10"]
    visual = served.block.transform(image)
    t = duplicate_threshold(visual, served.block.transform(q), np.arange(10))
    assert t == pytest.approx(served.recognition, abs=1e-6)
    assert choice.to_dict()["recognition_threshold"] == pytest.approx(t, abs=1e-6)
    assert (served.block.transform(q) * visual[:10]).sum(axis=1).min() >= t > 0.5
    listing = listing_threshold(visual, np.arange(10), grid.duplicate_max_rate, t)
    assert served.near_duplicate_threshold == pytest.approx(listing, abs=1e-6)
    assert listing >= t


def test_listing_threshold_flags_at_most_the_allowed_share_by_chance():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.arange(0, 200, 2)
    sims = x[rows] @ x.T
    sims[np.arange(len(rows)), rows] = -np.inf
    nearest_other = sims.max(axis=1)
    for rate in (0.02, 0.1, 0.3):
        t = listing_threshold(x, rows, rate, floor=-1.0)
        assert np.mean(nearest_other >= t) <= rate + 1 / len(rows)
        assert np.mean(nearest_other >= t) > rate - 2 / len(rows)  # not needlessly strict
    assert listing_threshold(x, rows, 0.02, floor=0.99) == 0.99  # never below recognition


def test_build_tunes_an_approximate_index_on_the_served_query_kinds(tmp_path):
    """IVF lists follow whole index rows, but a title (HUSE alone) or a recognition probe (the
    visual block's instance part alone) leaves most of a row empty, so its neighbours spread
    over more lists. Tuned on perturbed rows alone the build stops at an effort where probes
    still miss a third of their neighbours here; with the served query kinds every kind
    reaches the target."""
    from embedder.visual import ServedSpace
    from index.build import BuildConfig, build_product_index
    from index.store import ProductRecord

    rng = np.random.default_rng(5)
    n, d = 2000, 8
    huse = np.eye(d)[np.arange(n) % 8] + 0.3 * rng.normal(size=(n, d))
    feats = rng.normal(size=(n, 24)).astype(np.float32)
    block = VisualBlock.fit(feats, 12)
    served = ServedSpace(block, visual_weight=0.5, near_duplicate_threshold=0.9)
    visual = block.transform(feats)
    visual[:10] = 0  # products without an image
    stored = served.stored(huse, visual)
    probes = served.probe_queries(stored[:400])
    assert set(probes) == {"title", "instance probe"}
    title = probes["title"]
    assert np.allclose(title[:, d:], 0) and np.allclose(title, served.query(huse[:400], None))
    assert len(probes["instance probe"]) == 390  # rows with an image only
    assert np.allclose(probes["instance probe"][:, :d], 0)
    records = [ProductRecord(id=f"p{i}", title=f"t{i}", category=f"C{i % 8}", image="",
                             attributes={}) for i in range(n)]
    config = BuildConfig(n_eval_queries=400, target_recall=0.9, timed_queries=10)
    plain = build_product_index(tmp_path / "plain", records, stored, "fp", factory="IVF32,Flat",
                                config=config)["build"]
    served_kinds = build_product_index(tmp_path / "kinds", records, stored, "fp",
                                       factory="IVF32,Flat", config=config,
                                       query_sets=probes)["build"]
    by_kind = served_kinds["recall_at_10_by_queries"]
    assert set(by_kind) == {"perturbed", "title", "instance probe"}
    assert min(by_kind.values()) == served_kinds["recall_at_10"] >= 0.9
    assert served_kinds["search_effort"] > plain["search_effort"]
    up_to_plain = [t for t in served_kinds["tuning"]
                   if t["search_effort"] <= plain["search_effort"]]
    assert up_to_plain  # where the perturbed rows alone would have stopped, probes miss:
    assert all(t["recall_at_10_by_queries"]["instance probe"] < 0.9 for t in up_to_plain)


def test_served_search_recognises_the_product_then_lists_its_neighbours(tmp_path):
    from embedder.visual import ServedSpace, served_search
    from index.build import build_product_index
    from index.store import ProductIndex, ProductRecord

    rng = np.random.default_rng(3)
    n, d = 12, 8
    centres = rng.normal(size=(3, d))
    huse = centres[np.arange(n) % 3] + 0.05 * rng.normal(size=(n, d))
    feats = rng.normal(size=(n, 20)).astype(np.float32)
    block = VisualBlock.fit(feats, 6)
    visual = block.transform(feats)
    served = ServedSpace(block, visual_weight=0.3, near_duplicate_threshold=0.9)
    records = [ProductRecord(id=f"p{i}", title=f"t{i}", category=f"C{i % 3}", image="",
                             attributes={}) for i in range(n)]
    build_product_index(tmp_path / "ix", records, served.stored(huse, visual), "fp",
                        factory="Flat")
    with ProductIndex.open(tmp_path / "ix", expected_fingerprint="fp") as index:
        photo = block.transform(feats[4:5] + 0.01 * rng.normal(size=(1, 20)))[0]
        photo_huse = centres[1]  # the photo's HUSE side knows only the class
        hits, recognised = served_search(index, served, photo_huse, photo, k=4)
        assert recognised == "p4" and hits[0].id == "p4"
        assert {h.id for h in hits[1:]} == {"p1", "p7", "p10"}  # p4's class neighbours
        hits, recognised = served_search(index, served, photo_huse, photo, k=4, visual_weight=0)
        assert recognised is None and {h.id for h in hits} == {"p1", "p4", "p7", "p10"}
        far = block.transform(rng.normal(size=(1, 20)))[0]  # looks like nothing indexed
        hits, recognised = served_search(index, served, photo_huse, far, k=3)
        assert recognised is None and len(hits) == 3
        hits, recognised = served_search(index, served, centres[2], None, k=4)  # a title
        assert recognised is None and {h.id for h in hits} == {"p2", "p5", "p8", "p11"}
        # recognition reads its own threshold, not the (stricter) near-duplicate listing one
        strict_listing = ServedSpace(block, 0.3, near_duplicate_threshold=1.5,
                                     recognition_threshold=0.9)
        assert served_search(index, strict_listing, photo_huse, photo, k=4)[1] == "p4"
        strict_recognition = ServedSpace(block, 0.3, near_duplicate_threshold=0.9,
                                         recognition_threshold=1.5)
        assert served_search(index, strict_recognition, photo_huse, photo, k=4)[1] is None


def test_recognition_and_near_duplicates_leave_the_shared_colour_out(tmp_path):
    """Every product has the same colour histogram: with the colour weighing 0.6 of the visual
    block, whole-block cosines would all be >= 0.6; the instance cosine still tells them apart.
    A bundle that lists duplicates by the whole block (duplicate_colour) scores by it."""
    import dataclasses

    from embedder.visual import ServedSpace, near_duplicates_of, served_search
    from index.build import build_product_index
    from index.store import ProductIndex, ProductRecord

    rng = np.random.default_rng(4)
    n = 12
    deep = rng.normal(size=(n, 20)).astype(np.float32)
    colour = np.tile(np.abs(rng.normal(size=(1, 8))), (n, 1)).astype(np.float32)
    block = VisualBlock.fit(np.hstack([deep, colour]), 6, colour_dim=8).with_colour_weight(0.6)
    visual = block.transform(np.hstack([deep, colour]))
    huse = rng.normal(size=(n, 8))
    served = ServedSpace(block, visual_weight=0.3, near_duplicate_threshold=0.9)
    records = [ProductRecord(id=f"p{i}", title=f"t{i}", category="C", image="", attributes={})
               for i in range(n)]
    build_product_index(tmp_path / "ix", records, served.stored(huse, visual), "fp",
                        factory="Flat")
    with ProductIndex.open(tmp_path / "ix", expected_fingerprint="fp") as index:
        photo = block.transform(np.hstack([deep[4:5] + 0.01 * rng.normal(size=(1, 20)),
                                           colour[:1]]))[0]
        hits, recognised = served_search(index, served, huse[4], photo, k=3)
        assert recognised == "p4" and hits[0].score == pytest.approx(
            float(block.instance(photo[None])[0] @ block.instance(visual[4:5])[0]), abs=1e-4)
        other = served_search(index, served, huse[4],
                              block.transform(np.hstack([rng.normal(size=(1, 20)),
                                                         colour[:1]]))[0], k=3)
        assert other[1] is None  # an unseen item in the same colour is not recognised
        inst = block.instance(visual)
        instance_cos = np.delete(inst @ inst[4], 4)
        whole_cos = np.delete(visual @ visual[4], 4)  # 0.4 * instance + 0.6 (shared colour)
        t = float(whole_cos.max()) - 1e-3
        found = near_duplicates_of(index, "p4", 8, served, threshold=t)
        assert len(found) == int((instance_cos >= t).sum()) < int((whole_cos >= t).sum())
        assert all(h.score == pytest.approx(float(inst[int(h.id[1:])] @ inst[4]), abs=1e-4)
                   for h in near_duplicates_of(index, "p4", 8, served, threshold=-1.0))
        whole = dataclasses.replace(served, duplicate_colour=True)
        assert len(near_duplicates_of(index, "p4", 8, whole, threshold=t, k=11)) == int(
            (whole_cos >= t).sum())
        assert all(h.score == pytest.approx(float(visual[int(h.id[1:])] @ visual[4]), abs=1e-4)
                   for h in near_duplicates_of(index, "p4", 8, whole, threshold=-1.0))


def test_duplicate_listing_takes_the_colour_only_where_it_finds_more_copies():
    """Copies keep their product's colour; other products of a look-alike pair differ in
    colour: the whole block lists more copies at the same chance rate. With one colour for
    every product, the colour cannot help and the instance part is kept."""
    from train.photo_search import duplicate_listing

    rng = np.random.default_rng(7)
    n, pairs = 80, 40
    base = rng.normal(size=(pairs, 24))
    deep = np.repeat(base, 2, axis=0) + 0.35 * rng.normal(size=(n, 24))  # look-alike pairs
    colours = np.abs(rng.normal(size=(n, 8)))
    image = np.hstack([deep, colours]).astype(np.float32)
    own = np.arange(0, n, 2)
    copies = np.hstack([deep[own] + 0.3 * rng.normal(size=(len(own), 24)),
                        colours[own] * (1 + 0.02 * rng.normal(size=(len(own), 8)))])
    block = VisualBlock.fit(image, 12, colour_dim=8).with_colour_weight(0.6)
    chosen = duplicate_listing(block, image, copies.astype(np.float32), own, max_rate=0.05)
    shares = chosen["copies_listed"]
    assert chosen["colour"] and shares["whole block"] > shares["instance part"]
    same = image.copy()
    same[:, 24:] = colours[0]
    same_copies = copies.copy()
    same_copies[:, 24:] = colours[0]
    block = VisualBlock.fit(same, 12, colour_dim=8).with_colour_weight(0.6)
    assert not duplicate_listing(block, same, same_copies.astype(np.float32), own, 0.05)["colour"]
