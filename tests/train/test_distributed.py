"""Data-parallel training (`pytest -k ddp`): 2 ranks on CPU with gloo (torch.multiprocessing
spawn + a file store, as CI runs it) through train.pipeline.run on the sample catalog.

- every rank trains against the same semantic graph and ends with the same weights;
- only rank 0 assembles and writes the bundle, report and index (the first job runs whole;
  the others stop after the checkpoint, which is what they compare);
- a resumed 2-rank run equals an uninterrupted one (per-rank dropout streams restored);
- without dropout, 2 ranks equal 1 rank up to float rounding (the global batch is gathered for
  every loss term); with dropout the masks differ, and the metrics agree within the tolerance
  measured on this catalog (docs/scale.md, notes of issue 10);
- streamed from feature shards (train.streaming, one shard), 2 ranks take the same slices of
  the same batches as in memory: the weights are the in-memory 2-rank run's to the bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from train import stages
from train.config import StreamConfig
from train.pipeline import BUNDLE_DIR, CHECKPOINT_DIR, run

WORLD = 2
WEIGHTS = "towers.safetensors"
# 1 rank vs 2 ranks with dropout on this config (80-product sample, 3 epochs), seeds 0-3: test
# fused leaf top-1 moved by at most 0.045 (1 of 22 test products) and the final train loss by at
# most 2.7% (notes of issue 10). The bounds allow about 3x and 2x that.
TOP1_TOLERANCE = 0.15
LOSS_TOLERANCE = 0.05


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode() + np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


class _FitDone(Exception):
    """Ends a fit-only job on rank 0 (the checkpoint is what it is for)."""


def _rank_worker(rank: int, store: str, jobs: list, results: str) -> None:
    """One rank: join the job, run every pipeline job (the first whole, the others up to the
    checkpoint), record what this rank saw."""
    from train import distributed, stages

    torch.set_num_threads(1)
    distributed.init(rank, WORLD, f"file://{store}", backend="gloo")
    seen: list[dict] = []
    real_fit, real_assemble = stages.fit, stages.assemble

    def fit(prep, *args, **kwargs):
        fitted = real_fit(prep, *args, **kwargs)
        state = {k: v.detach().cpu().numpy() for k, v in fitted.model.state_dict().items()}
        seen.append({"stage": "fit", "graph": _digest({"A": prep.graph}),
                     "model": _digest(state)})
        return fitted

    def assemble(*args, **kwargs):
        seen.append({"stage": "assemble"})
        return real_assemble(*args, **kwargs)

    def fit_only(*args, **kwargs):
        raise _FitDone

    stages.fit, stages.assemble = fit, assemble
    try:
        for n, cfg in enumerate(jobs):
            if n:  # fit-only: stop rank 0 once it has written the checkpoint
                stages.assemble = fit_only
            try:
                run(cfg)
            except _FitDone:
                pass
    finally:
        distributed.shutdown()
    Path(results, f"rank{rank}.json").write_text(json.dumps(seen))
    # Leave without interpreter finalization: gloo's worker threads can still be torn down
    # then and abort the process (SIGABRT, "terminate called without an active exception";
    # pytorch/pytorch#179291) after every result is written, which failed a CI run.
    os._exit(0)


def _same_tensors(a: dict, b: dict, atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=atol) for k in a
    )


def _report(out: Path) -> dict:
    return json.loads((out / BUNDLE_DIR / "report.json").read_text())


def _fused_top1(report: dict) -> float:
    """Test-split leaf top-1 of the fused embedding's linear head."""
    evaluation = report["evaluation"]
    return evaluation["heads"][evaluation["leaf_head"]]["fused"]["linear"]["top1"]


def test_ddp_two_ranks_match_one_and_resume_exactly(trained_run, tmp_path, read_checkpoints):
    cfg, one_rank = trained_run
    full = dataclasses.replace(cfg, out=str(tmp_path / "full"))
    part = dataclasses.replace(cfg, out=str(tmp_path / "resumed"), max_epochs=2)
    resumed = dataclasses.replace(part, max_epochs=cfg.max_epochs, resume=True)
    still = dataclasses.replace(cfg, out=str(tmp_path / "still"), dropout=0.0)
    streamed = dataclasses.replace(still, out=str(tmp_path / "streamed"),
                                   streaming=StreamConfig(min_products=0))
    jobs = [full, part, resumed, still, streamed]
    mp.spawn(_rank_worker, args=(str(tmp_path / "store"), jobs, str(tmp_path)), nprocs=WORLD,
             join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    fits = [[s for s in rank_seen if s["stage"] == "fit"] for rank_seen in seen]
    assert len(fits[0]) == len(fits[1]) == len(jobs)
    assert fits[0] == fits[1]  # same semantic graph and same final weights on every rank
    assert [len([s for s in r if s["stage"] == "assemble"]) for r in seen] == [1, 0]
    assert (tmp_path / "full" / BUNDLE_DIR / WEIGHTS).is_file()  # rank 0 wrote the bundle
    full_ckpts = read_checkpoints(tmp_path / "full")
    # one per candidate: every image tower, then the chosen one per alternative InfoNCE weight
    assert len(full_ckpts) == len(cfg.image_towers) + len(cfg.w_nce_alternatives) > 1

    # resumed after 2 of 3 epochs == uninterrupted, to the bit, every candidate
    for a, b in zip(full_ckpts, read_checkpoints(tmp_path / "resumed"), strict=True):
        assert a["history"] == b["history"] and len(a["rng_by_rank"]) == WORLD
        assert _same_tensors(a["model"], b["model"])
        assert _same_tensors(a["best_state"], b["best_state"])

    # no dropout: 2 ranks == 1 rank up to float rounding (one process, same stages)
    single = dataclasses.replace(still, out=str(tmp_path / "single"))
    stages.fit(stages.prepare(single), tmp_path / "single" / CHECKPOINT_DIR)
    for x, y, z in zip(read_checkpoints(tmp_path / "single"), read_checkpoints(tmp_path / "still"),
                       read_checkpoints(tmp_path / "streamed"), strict=True):
        assert _same_tensors(x["model"], y["model"], atol=1e-4)
        assert _same_tensors(z["model"], y["model"])

    # with dropout: the same metrics within the measured tolerance
    one, two = _report(one_rank), _report(tmp_path / "full")
    assert abs(_fused_top1(two) - _fused_top1(one)) <= TOP1_TOLERANCE
    for a, b in zip(read_checkpoints(one_rank, towers_only=True),
                    read_checkpoints(tmp_path / "full", towers_only=True), strict=True):
        loss_one, loss_two = a["history"][-1]["train_loss"], b["history"][-1]["train_loss"]
        assert abs(loss_two - loss_one) <= LOSS_TOLERANCE * loss_one  # each image tower
