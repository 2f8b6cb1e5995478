"""The whole training run, and the re-run commands on a saved bundle.

Output layout of `run(cfg)`: OUT/rejects.csv, OUT/checkpoints/last.pt, OUT/bundle/ (model files,
see embedder.bundle_io, plus report.json, report.md, plots/), OUT/index/ (manifest.json,
vectors.faiss, meta.sqlite).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from train import distributed, stages
from train.config import ConfigError, TrainConfig
from train.data import bundle_data

logger = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
INDEX_DIR = "index"
CHECKPOINT_DIR = "checkpoints"
REJECTS_FILE = "rejects.csv"
MODEL_MARKERS = (f"{BUNDLE_DIR}/config.json", f"{INDEX_DIR}/manifest.json")  # OUT holds a model


class OutputExistsError(ConfigError):
    """OUT already holds a trained model and neither overwrite nor resume was asked for."""


def check_out(cfg: TrainConfig) -> Path:
    """OUT as a Path; refuses to train over an existing model unless told to."""
    if not cfg.catalog or not cfg.out:
        raise ConfigError(f"catalog and out are required, got catalog={cfg.catalog!r}, "
                          f"out={cfg.out!r}")
    out = Path(cfg.out)
    found = [m for m in MODEL_MARKERS if (out / m).exists()]
    if found and not (cfg.overwrite or cfg.resume):
        raise OutputExistsError(f"{out} already holds a model ({', '.join(found)}); pass "
                                f"--overwrite to replace it, or choose another --out")
    return out


def run(cfg: TrainConfig) -> Path:
    """prepare -> fit -> assemble -> evaluate -> index -> report; returns OUT.

    In a torch.distributed job (train.distributed) every rank prepares (rank 0 first, filling
    the feature cache; its semantic graph is broadcast) and fits; rank 0 alone writes the
    rejects, checkpoints, bundle, report and index.
    """
    rank = distributed.current()
    cfg = cfg.validate()
    out = check_out(cfg)
    logger.info("resolved config: %s", cfg.to_dict())
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with distributed.rank_zero_first():
        prep = stages.prepare(cfg, rejects_path=out / REJECTS_FILE if rank.main else None,
                              timings=timings)
    if rank.parallel:
        prep = dataclasses.replace(prep, graph=distributed.broadcast(prep.graph))
    fitted = stages.fit(prep, out / CHECKPOINT_DIR, timings)
    if not rank.main:
        return out
    assembled = stages.assemble(prep, fitted)
    bundle_dir = assembled.bundle.save(out / BUNDLE_DIR)
    evaluated = stages.evaluate(prep.data, assembled.bundle, cfg.eval_config(), timings)
    manifest = stages.index(prep.data.feats, assembled.bundle, out / INDEX_DIR, cfg, timings)
    timings["total"] = round(time.perf_counter() - t_start, 2)
    stages.report(bundle_dir, prep, fitted, assembled, evaluated, manifest, out / INDEX_DIR,
                  timings)
    logger.info("done in %.1f s: %s", timings["total"], out)
    return out


def evaluate_bundle(bundle_dir: str | Path, catalog: str | Path,
                    cache_dir: str | None = None) -> dict[str, Any]:
    """Re-run evaluation of a saved bundle on the catalog (splits rebuilt from the bundle's
    training config, so an unchanged catalog gives the same test split); rewrites the report,
    keeping its training history and data notes."""
    from embedder.bundle import Bundle
    from train.report import write_report

    bundle = Bundle.load(bundle_dir)
    cfg, data = bundle_data(bundle, catalog, cache_dir=cache_dir)
    evaluated = stages.evaluate(data, bundle, cfg.eval_config())
    previous = Path(bundle_dir) / "report.json"
    report = json.loads(previous.read_text()) if previous.exists() else {}
    history = report.pop("history", [])
    report.update({"evaluation": evaluated.evaluation, "config": cfg.to_dict(),
                   "bundle": {"dir": str(bundle_dir), "fingerprint": bundle.fingerprint}})
    write_report(Path(bundle_dir), report, history, evaluated.artifacts)
    return report
