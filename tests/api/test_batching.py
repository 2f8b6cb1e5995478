"""EmbedBatcher: concurrent requests share model calls, kinds never mix, errors reach callers."""

from __future__ import annotations

import threading
from concurrent.futures import wait

import numpy as np
import pytest

from api.batching import BatchConfig, EmbedBatcher


class RecordingEmbed:
    """embed(images, texts) that records each call and encodes inputs into the output rows."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[list | None, list | None]] = []
        self.gate = gate
        self.lock = threading.Lock()

    def __call__(self, images, texts):
        if self.gate is not None:
            self.gate.wait(5)
        with self.lock:
            self.calls.append((images, texts))
        n = len(images if images is not None else texts)
        out = np.zeros((n, 3), np.float32)
        for i in range(n):
            out[i, 0] = images[i] if images is not None else -1
            out[i, 1] = len(texts[i]) if texts is not None else -1
        return out


def test_concurrent_requests_share_one_call_per_kind():
    embed = RecordingEmbed()
    batcher = EmbedBatcher(embed, BatchConfig(max_batch=64, max_wait_ms=1000, image_max=64))
    futures = [batcher.submit(image=i) for i in range(5)]
    futures += [batcher.submit(text="x" * n) for n in range(1, 4)]
    futures += [batcher.submit(image=7, text="abcd")]
    wait(futures, timeout=5)
    batcher.close()
    kinds = sorted(
        (
            "fused" if im is not None and tx is not None else "image" if im is not None else "text",
            len(im if im is not None else tx),
        )
        for im, tx in embed.calls
    )
    assert kinds == [("fused", 1), ("image", 5), ("text", 3)]
    # Each request gets its own row back.
    assert [f.result()[0] for f in futures[:5]] == [0, 1, 2, 3, 4]
    assert [f.result()[1] for f in futures[5:8]] == [1, 2, 3]
    assert futures[8].result().tolist() == [7, 4, 0]


def test_batches_never_exceed_max_batch():
    gate = threading.Event()
    embed = RecordingEmbed(gate)
    batcher = EmbedBatcher(embed, BatchConfig(max_batch=4, max_wait_ms=50))
    futures = [batcher.submit(text=str(i)) for i in range(10)]
    gate.set()
    wait(futures, timeout=5)
    batcher.close()
    sizes = [len(tx) for _, tx in embed.calls]
    assert sum(sizes) == 10 and max(sizes) <= 4


def test_disabled_runs_one_call_per_request():
    embed = RecordingEmbed()
    batcher = EmbedBatcher(embed, BatchConfig(enabled=False, unbatched_workers=3))
    futures = [batcher.submit(image=i) for i in range(6)]
    wait(futures, timeout=5)
    batcher.close()
    assert len(embed.calls) == 6
    assert sorted(f.result()[0] for f in futures) == list(range(6))


def test_embed_error_reaches_every_waiting_request_and_worker_survives():
    def failing(images, texts):
        if texts and texts[0] == "boom":
            raise RuntimeError("model failed")
        return np.ones((len(texts), 2), np.float32)

    batcher = EmbedBatcher(failing, BatchConfig(max_wait_ms=0))
    with pytest.raises(RuntimeError, match="model failed"):
        batcher.submit(text="boom").result(timeout=5)
    assert batcher.submit(text="fine").result(timeout=5).tolist() == [1.0, 1.0]
    batcher.close()


def test_submit_validates_and_close_refuses_new_work():
    batcher = EmbedBatcher(RecordingEmbed())
    with pytest.raises(ValueError, match="neither"):
        batcher.submit()
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(text="late")


def test_bad_config_names_values():
    with pytest.raises(ValueError, match="max_batch=0"):
        BatchConfig(max_batch=0)


def test_image_batches_are_capped_text_batches_are_not():
    gate = threading.Event()
    embed = RecordingEmbed(gate)
    batcher = EmbedBatcher(embed, BatchConfig(max_batch=64, max_wait_ms=200, image_max=3))
    futures = [batcher.submit(image=i) for i in range(7)]
    futures += [batcher.submit(text="x" * n) for n in range(1, 9)]
    gate.set()
    wait(futures, timeout=5)
    batcher.close()
    image_sizes = [len(im) for im, tx in embed.calls if im is not None]
    assert sorted(image_sizes) != [1] * 7 and max(image_sizes) == 3 and sum(image_sizes) == 7
    assert max(len(tx) for im, tx in embed.calls if im is None) > 3  # text still coalesces
    assert sorted(f.result()[0] for f in futures[:7]) == list(range(7))
