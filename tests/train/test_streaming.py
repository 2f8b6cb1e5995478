"""Training from feature shards (`pytest -k stream`): train.streaming against the in-memory path.

- one shard: the streamed run draws the same batches as the in-memory one, so weights, splits,
  labels and every metric agree (float rounding only);
- several shards, shuffled in a buffer: the batch order differs; splits and labels are the
  same, metrics within the tolerance measured on this catalog;
- a resumed streamed run equals an uninterrupted one (shard order and buffer shuffle come from
  the checkpointed generator);
- the streamed fit reads no whole feature array: its traced peak memory barely moves when the
  catalog grows 4x.
"""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from embedder.catalog import Product
from embedder.shards import (
    FeatureShards,
    ShardData,
    plan_shards,
    shard_manifest,
    write_manifest,
    write_shard,
)
from train import data as train_data
from train import stages
from train.config import StreamConfig
from train.pipeline import BUNDLE_DIR, CHECKPOINT_DIR, run
from train.streaming import ShardedFeatures


def _streamed(cfg, out: Path, **stream) -> object:
    return dataclasses.replace(cfg, out=str(out), streaming=StreamConfig(min_products=0,
                                                                         **stream))


def _report(out: Path) -> dict:
    return json.loads((Path(out) / BUNDLE_DIR / "report.json").read_text())


def _close(a: dict, b: dict, atol: float) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=atol) for k in a)


def _numbers(d: object, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a nested dict, by dotted key."""
    if isinstance(d, dict):
        out: dict[str, float] = {}
        for k, v in d.items():
            out.update(_numbers(v, f"{prefix}{k}."))
        return out
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        return {prefix[:-1]: float(d)}
    return {}


def test_stream_one_shard_equals_in_memory_run(trained_run, tmp_path, monkeypatch,
                                               read_checkpoints):
    cfg, _ = trained_run
    # both runs here: torch's thread count (which other tests change) moves float rounding
    memory_out = run(dataclasses.replace(cfg, out=str(tmp_path / "memory")))
    monkeypatch.setattr(train_data, "load_features", _refuse)  # streaming never loads arrays
    out = run(_streamed(cfg, tmp_path / "stream"))
    mem, st = _report(memory_out), _report(out)
    assert "features streamed from 1 shards" in st["data"]["streaming"]
    assert mem["data"]["splits"] == st["data"]["splits"]
    assert mem["label_spaces"] == st["label_spaces"]
    assert [h["epoch"] for h in mem["history"]] == [h["epoch"] for h in st["history"]]
    # the same batches, dropout masks and float operations: equal to the bit (measured)
    pairs = list(zip(read_checkpoints(memory_out), read_checkpoints(out), strict=True))
    assert len(pairs) == len(cfg.image_towers) + len(cfg.w_nce_alternatives)
    assert all(_close(a["model"], b["model"], atol=0.0) for a, b in pairs)
    a, b = _numbers(mem["evaluation"]), _numbers(st["evaluation"])
    a = {k: v for k, v in a.items() if ".seconds." not in f".{k}."}
    assert a.keys() <= b.keys()
    assert {k: b[k] for k in a} == a  # every metric, baselines and photo search included
    assert (out / "index" / "manifest.json").is_file()


def _refuse(*args, **kwargs):
    raise AssertionError("the streamed run called load_features")


# 5 shuffled shards vs in memory, this config, seeds 0-5 (notes of issue 10): fused leaf top-1
# equal in every seed (the tiny config learns little: 0-9 %), final train loss -3.1 % to +1.5 %.
# The bounds allow about 2x that.
TOP1_TOLERANCE = 0.1
LOSS_TOLERANCE = 0.06


def _fused_top1(report: dict) -> float:
    evaluation = report["evaluation"]
    return evaluation["heads"][evaluation["leaf_head"]]["fused"]["linear"]["top1"]


def test_stream_shuffled_shards_match_within_tolerance_and_resume_exactly(
        trained_run, tmp_path, monkeypatch, read_checkpoints):
    cfg, memory_out = trained_run
    shards = {"shard_size": 16, "shuffle_shards": 2}  # 80 products: 5 shards, 3 buffers
    full = _streamed(cfg, tmp_path / "full", **shards)
    run(full)
    mem, st = _report(memory_out), _report(tmp_path / "full")
    assert "features streamed from 5 shards" in st["data"]["streaming"]
    assert mem["data"]["splits"] == st["data"]["splits"]
    assert mem["label_spaces"] == st["label_spaces"]
    assert abs(_fused_top1(st) - _fused_top1(mem)) <= TOP1_TOLERANCE
    for a, b in zip(read_checkpoints(memory_out, towers_only=True),
                    read_checkpoints(tmp_path / "full", towers_only=True), strict=True):
        loss_mem, loss_st = a["history"][-1]["train_loss"], b["history"][-1]["train_loss"]
        assert abs(loss_st - loss_mem) <= LOSS_TOLERANCE * loss_mem  # each image tower
    # the batches did change
    assert not any(_close(a["model"], b["model"], atol=1e-3) for a, b in zip(
        read_checkpoints(memory_out), read_checkpoints(tmp_path / "full"), strict=True))

    part = dataclasses.replace(full, out=str(tmp_path / "resumed"), max_epochs=2)
    resumed = dataclasses.replace(part, max_epochs=cfg.max_epochs, resume=True)
    for c in (part, resumed):
        stages.fit(stages.prepare(c), Path(c.out) / CHECKPOINT_DIR)
    for a, b in zip(read_checkpoints(tmp_path / "full"), read_checkpoints(tmp_path / "resumed"),
                    strict=True):
        assert [h["epoch"] for h in b["history"]] == [1, 2, 3]
        assert a["history"] == b["history"]
        assert _close(a["model"], b["model"], atol=0.0)
        assert _close(a["best_state"], b["best_state"], atol=0.0)

    # `build-index` with the streamed bundle streams too: the run's own index vectors
    from embedder.bundle import Bundle
    from index.store import ProductIndex
    from train.build_index import build_index

    monkeypatch.setattr(train_data, "load_features", _refuse)
    bundle = Bundle.load(tmp_path / "full" / BUNDLE_DIR)
    built = build_index(tmp_path / "full" / BUNDLE_DIR, cfg.catalog, tmp_path / "idx",
                        cache_dir=cfg.cache_dir)
    with (ProductIndex.open(built, expected_fingerprint=bundle.fingerprint) as again,
          ProductIndex.open(tmp_path / "full" / "index",
                            expected_fingerprint=bundle.fingerprint) as own):
        ids = [h.id for h in own.search(np.ones((1, bundle.index_dim), np.float32), 80)[0]]
        assert len(again) == len(own) == len(ids) == 80
        for i in ids:
            np.testing.assert_allclose(again.vector(i), own.vector(i), atol=1e-6, rtol=0)


# --- synthetic shards: the batch stream itself, and memory ---

LEAVES = 8
DI, DT = 384, 128


def synthetic_features(directory: Path, n: int, shard_size: int,
                       text_backbone) -> ShardedFeatures:
    """n products over LEAVES leaf classes in shards of random features around class
    prototypes; image column 0 holds the row number, so a batch names its rows."""
    from embedder.bundle_config import BackboneInfo

    rng = np.random.default_rng(0)
    protos = rng.normal(size=(LEAVES, DI + DT)).astype(np.float32)
    leaf = np.arange(n) % LEAVES
    products = [Product(id=f"p{i}", title=f"leaf{leaf[i]} item {i % 97}",
                        image_path=Path(f"p{i}.jpg"), category=(f"Top{leaf[i] % 2}",
                                                                f"Leaf{leaf[i]}"),
                        image_sha256=f"{i:064x}") for i in range(n)]
    ids, keys = [p.id for p in products], [p.image_sha256 for p in products]
    plan = plan_shards(ids, keys, keys, ["image", "text"], shard_size)
    for spec in plan:
        rows = np.arange(spec.start, spec.stop)
        x = protos[leaf[rows]] + rng.normal(size=(len(rows), DI + DT)).astype(np.float32)
        x[:, 0] = rows
        write_shard(directory / spec.file, ShardData(ids[spec.start:spec.stop],
                                                     keys[spec.start:spec.stop],
                                                     keys[spec.start:spec.stop],
                                                     x[:, :DI], x[:, DI:]))
    backbones = {"image": {"spec": "synthetic", "dim": DI, "namespace": "image"},
                 "text": {"spec": "synthetic", "dim": DT, "namespace": "text"}}
    write_manifest(directory, shard_manifest(n, shard_size, backbones, plan))
    return ShardedFeatures(products, FeatureShards(directory), BackboneInfo("synthetic", DI),
                           text_backbone, {"valid": n})


def _source(feats: ShardedFeatures, train_idx: np.ndarray, shuffle_shards: int):
    from train.streaming import ShardTrainData

    y = {"level2": (np.arange(len(feats.products)) % LEAVES).astype(np.int64)}
    return ShardTrainData(feats, None, y, train_idx, np.zeros(0, np.int64), "level2",
                          np.zeros((LEAVES, LEAVES), np.float32), shuffle_shards)


def test_stream_epochs_cover_training_rows_once_in_fresh_orders(tmp_path, tiny_text_backbone):
    from train.distributed import Rank

    feats = synthetic_features(tmp_path, 1000, 100, tiny_text_backbone)
    rng = np.random.default_rng(1)
    train_idx = np.sort(np.concatenate([rng.choice(1000, 700, replace=False),
                                        rng.choice(1000, 50)]))  # with oversampled repeats
    source = _source(feats, train_idx, shuffle_shards=3)
    gen = torch.Generator().manual_seed(0)
    orders = []
    for _ in range(2):
        batches = list(source.epoch(gen, 64, Rank()))
        assert [len(b[0]) for b in batches] == [64] * 11 + [750 - 11 * 64]
        rows = np.concatenate([b[0][:, 0] for b in batches]).astype(np.int64)
        assert sorted(rows.tolist()) == train_idx.tolist()  # every training row, repeats too
        assert all((b[2]["level2"] == b[0][:, 0].astype(np.int64) % LEAVES).all()
                   for b in batches)  # labels travel with their rows
        orders.append(rows)
    assert not np.array_equal(orders[0], orders[1])  # a fresh shard order and shuffle
    assert not np.array_equal(orders[0], np.sort(orders[0]))

    # two ranks: equal halves of the same global batches, from the same generator state
    halves = [list(source.epoch(torch.Generator().manual_seed(7), 64, Rank(r, 2)))
              for r in range(2)]
    whole = list(source.epoch(torch.Generator().manual_seed(7), 64, Rank()))
    assert len(halves[0]) == len(halves[1]) == len(whole)
    for h0, h1, w in zip(*halves, whole, strict=True):
        per = len(w[0]) // 2
        np.testing.assert_array_equal(np.concatenate([h0[0], h1[0]]), w[0][:2 * per])


def _fit_peak(tmp_path: Path, n: int, text_backbone, monkeypatch) -> int:
    """Peak traced bytes of the streamed fit (towers + one epoch) on n synthetic products."""
    from train.config import TrainConfig

    monkeypatch.setattr(train_data, "load_features", _refuse)
    (tmp_path / str(n)).mkdir()
    feats = synthetic_features(tmp_path / str(n), n, 500, text_backbone)
    cfg = TrainConfig(embed_dim=8, image_towers=((16,),), w_nce_alternatives=(), text_tower=(16,),
                      batch_size=128,
                      max_epochs=1, tfidf_max_features=64, device="cpu", min_per_class=1,
                      photo_visual_dims=(),
                      streaming=StreamConfig(min_products=0, shuffle_shards=2, max_val_rows=500,
                                             max_test_rows=500, max_train_sample=500))
    prep = stages.prepare(cfg, feats=feats)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only wait for each other
    tracemalloc.start()
    try:
        stages.fit(prep, None)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        torch.set_num_threads(threads)


def test_stream_fit_memory_does_not_grow_with_the_catalog(tmp_path, tiny_text_backbone,
                                                          monkeypatch):
    small, large = 4_000, 16_000
    peaks = [_fit_peak(tmp_path, n, tiny_text_backbone, monkeypatch) for n in (small, large)]
    data_growth = (large - small) * (DI + DT) * 4  # bytes the in-memory arrays would add
    assert peaks[1] - peaks[0] < 0.1 * data_growth, peaks


def test_stream_reads_given_shards_in_memory_or_streamed(trained_run, tmp_path, monkeypatch):
    """`--features-shards DIR`: a small catalog loads the shards whole (the in-memory path's
    features to the bit), past the threshold it streams from them; shards of other backbones
    or another catalog are refused by name."""
    from embedder.errors import FeatureCacheError
    from train.huse import main
    from train.streaming import load_training_features

    cfg, _ = trained_run
    written = load_training_features(_streamed(cfg, tmp_path / "w", shard_size=32))
    assert len(written.shards.files) == 3
    given = dataclasses.replace(cfg, streaming=StreamConfig(shards=str(written.shards.directory)))
    memory, from_shards = train_data.load_features(cfg.catalog, cfg), load_training_features(given)
    assert not from_shards.streamed
    np.testing.assert_array_equal(from_shards.image, memory.image)
    np.testing.assert_array_equal(from_shards.text, memory.text)
    streamed = load_training_features(dataclasses.replace(
        given, streaming=dataclasses.replace(given.streaming, min_products=10)))
    assert streamed.streamed and streamed.shards.directory == written.shards.directory

    other = dataclasses.replace(given, image_backbone="efficientnet-lite0")
    with pytest.raises(FeatureCacheError, match="--set image_backbone="):
        load_training_features(other)
    manifest = json.loads((written.shards.directory / "manifest.json").read_text())
    manifest["n_products"] -= 1
    (written.shards.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureCacheError, match="another catalog|valid ones"):
        load_training_features(given)

    seen = {}

    def fake_run(c):
        seen["cfg"] = c
        (tmp_path / "cli" / BUNDLE_DIR).mkdir(parents=True)
        (tmp_path / "cli" / BUNDLE_DIR / "report.md").write_text("report")
        return tmp_path / "cli"

    monkeypatch.setattr("train.pipeline.run", fake_run)
    assert main(["--catalog", cfg.catalog, "--out", str(tmp_path / "cli"),
                 "--features-shards", "123", "--no-progress"]) == 0
    assert seen["cfg"].streaming.shards == "123"  # a path, even one that reads as a number
