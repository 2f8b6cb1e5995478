"""The training report: report.json (every number), report.md (what a person reads first) and
three PNG plots (train.plots: loss curves, leaf confusion matrix, 2-D map of the space).

report.json = the caller's ``report`` dict plus ``history``. This module reads:
- ``report["evaluation"]``: the dict returned by ``train.evaluate.evaluate`` (required);
- ``report["data"]`` (optional): catalog/split facts, rendered as given. Keys with special
  rendering: ``rejects_by_reason`` (dict reason -> count), ``splits`` (dict name -> rows),
  ``rare_classes`` (dict head -> list of class names below min_per_class, or a list).
- ``report["config"]`` (optional): the resolved training config (a few keys shown in the .md);
- ``report["training"]``, ``["timings_s"]``, ``["index"]``, ``["bundle"]`` (optional dicts), one
  line each under "Training".
Every file is written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from huse_common.atomic import write_atomic
from train.evaluate import INPUTS, METHODS, EvalArtifacts
from train.plots import (
    finite,
    plot_confusion,
    plot_embedding_map,
    plot_loss_curves,
    save_figure,
)

logger = logging.getLogger(__name__)

RUN_KEYS = (("training", "run"), ("timings_s", "seconds"), ("index", "index"),
            ("bundle", "bundle"))  # optional report sections shown under "Training"
CONFIG_KEYS = ("image_backbone", "text_backbone", "embed_dim", "use_tfidf", "w_cls", "w_graph",
               "w_gap", "w_nce", "nce_temperature", "min_per_class", "seed")


def write_report(out_dir: Path, report: dict, history: list[dict],
                 artifacts: EvalArtifacts) -> None:
    """Write report.json, report.md and plots/*.png into ``out_dir`` (created if needed)."""
    if "evaluation" not in report:
        raise ValueError(f"report needs an 'evaluation' section, got keys {sorted(report)}")
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    full = {**report, "history": history}
    write_atomic(out_dir / "report.json",
                 json.dumps(_jsonable(full), indent=2, allow_nan=False).encode())
    write_atomic(out_dir / "report.md", render_markdown(report, history).encode())
    save_figure(plot_loss_curves(history), out_dir / "plots" / "loss_curves.png")
    save_figure(plot_confusion(artifacts), out_dir / "plots" / "confusion_matrix.png")
    save_figure(plot_embedding_map(artifacts), out_dir / "plots" / "embedding_map.png")
    logger.info("report written to %s", out_dir)


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays to Python, nan/inf to None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------- markdown

def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def _delta(x: float | None, ref: float | None) -> str:
    if x is None or ref is None or not (math.isfinite(x) and math.isfinite(ref)):
        return "n/a"
    return f"{100 * (x - ref):+.1f}"


def _table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    """Markdown table; numbers right-aligned, the ``left`` columns (text) left-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i in left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: dict, history: list[dict]) -> str:
    ev = report["evaluation"]
    leaf = ev["leaf_head"]
    lr, knn = ev["baselines"]["logreg"], ev["baselines"]["knn"]
    fused = ev["heads"][leaf]["fused"]["linear"]
    r11 = ev["retrieval"]["image->image"]["1"]
    knn11 = knn["retrieval"]["image->image"]["1"]
    rq = ev["retrieval_queries"]
    parts = [
        "# HUSE training report",
        f"Test split: {ev['n_test']} products (train {ev['n_train']}, val {ev['n_val']}). "
        "All figures are percentages.",
        f"- **Leaf ({leaf}) fused top-1: {_pct(fused['top1'])}** vs baseline (a) logistic "
        f"regression {_pct(lr['top1'])} ({_delta(fused['top1'], lr['top1'])} points).\n"
        f"- **Image->image recall@1: {_pct(r11)}** vs baseline (b) frozen image k-NN "
        f"{_pct(knn11)} ({_delta(r11, knn11)} points).",
        "## Leaf classification",
        _main_table(ev),
        "## Hardest leaf classes (fused input, linear head)",
        _hardest_table(ev),
        "## Retrieval (class-level recall@k)",
        _retrieval_table(ev),
        "Database = the test split; a hit is a retrieved product of the query's leaf class; "
        "x->x queries exclude themselves, so the "
        f"{rq['queries'] - rq['x->x answerable']} of {rq['queries']} queries whose class has "
        "no other test product count as misses there (for HUSE and (b) alike). Classes from "
        f"{ev['protocol']['retrieval_classes_from']}.",
        *(["## Photo and title search against the served index", _photo_section(ev)]
          if "photo_search" in ev else []),
        "## Every level and attribute head (top-1)",
        _levels_table(ev),
        "## Data and splits",
        _data_section(report, ev),
        "## Training",
        _training_section(report, history),
        "## Plots",
        "![loss curves](plots/loss_curves.png)\n\n"
        "![confusion matrix](plots/confusion_matrix.png)\n\n"
        "![embedding map](plots/embedding_map.png)",
        "## Protocol",
        "\n".join([*(f"- {k}: {v}" for k, v in ev["protocol"].items()),
                   f"- evaluation seconds: {_brief(ev.get('seconds', {}))}"]),
    ]
    return "\n\n".join(parts) + "\n"


def _photo_section(ev: dict) -> str:
    """Instance recall@1 and P@10 per column for photo queries, leaf P@10 for title queries:
    the served space against its two baselines, same queries and products."""
    ps = ev["photo_search"]
    columns = sorted({c for s in ps["spaces"].values() for c in s["attr_p10"]})
    header = ["space", "photo: own product first", "photo: leaf P@10",
              *[f"photo: {c} P@10" for c in columns], "title: leaf P@10"]
    rows = [[name, _pct(s["instance_r1"]), _pct(s["leaf_p10"]),
             *[_pct(s["attr_p10"].get(c)) for c in columns], _pct(s["title_leaf_p10"])]
            for name, s in ps["spaces"].items()]
    served = ps["served"]
    note = (f"{ps['queries']} test products' photos, cropped, mirrored and JPEG re-encoded "
            f"(seed {ps['query_seed']}), and their titles, searched against every product; "
            f"P@{ps['k']} counts the {ps['k']} nearest other products sharing the query's value. "
            f"Served space: HUSE beside a {served['visual_dim']}-d visual block (colour "
            f"histogram's share {served.get('colour_weight', 0.0):g}), visual weight "
            f"{served['visual_weight']:g}, recognition threshold "
            f"{served.get('recognition_threshold', served['near_duplicate_threshold']):.3f}, "
            f"near-duplicate threshold {served['near_duplicate_threshold']:.3f} on the "
            f"{'whole block' if served.get('duplicate_colour') else 'instance part'} "
            f"({ps.get('rule', '')}).")
    return _table(header, rows, left=(0,)) + "\n\n" + note


def _main_table(ev: dict) -> str:
    leaf = ev["leaf_head"]
    lr, knn = ev["baselines"]["logreg"], ev["baselines"]["knn"]
    ks = [k for k in ("top1", "top5") if k in lr]
    header = ["model / input", "method", *ks, "macro-F1", "Δ top-1 vs (a)", "other share"]
    rows = []
    for inp in INPUTS:
        for m in METHODS:
            r = ev["heads"][leaf][inp][m]
            rows.append([f"HUSE {inp}", m, *[_pct(r[k]) for k in ks], _pct(r["macro_f1"]),
                         _delta(r["top1"], lr["top1"]), _pct(r.get("other_share"))])
    rows.append(["(a) logistic regression, image+text", f"C={lr['C']:g}",
                 *[_pct(lr[k]) for k in ks], _pct(lr["macro_f1"]), "0.0", "–"])
    rows.append(["(b) k-NN, frozen image", f"k={knn['k']}", *[_pct(knn[k]) for k in ks],
                 _pct(knn["macro_f1"]), _delta(knn["top1"], lr["top1"]), "–"])
    n = ev["heads"][leaf]
    note = (f"{n['n_test_labelled']} labelled test rows over {n['n_classes']} classes; "
            f"{n['n_test_ignored']} rows of classes below min_per_class are left out here. "
            f"Other share: best score below {ev['other_threshold']:g}. Baseline (a) C picked "
            f"by top-1 on the {lr['C_selected_on']} from "
            + ", ".join(f"C={c} ({_pct(t)})" for c, t in lr["C_tried_top1"].items())
            + ("" if lr["converged"] else " (lbfgs hit max_iter)") + ".")
    return _table(header, rows, left=(0, 1)) + "\n\n" + note


def _hardest_table(ev: dict) -> str:
    rows = [[h["class"], str(h["support"]), _pct(h["recall"]),
             f"{h['confused_with']} ({_pct(h['confused_share'])})" if "confused_with" in h
             else "–"] for h in ev.get("hardest_classes", [])]
    return _table(["class", "test items", "recall", "most often predicted as (% of class)"],
                  rows, left=(0, 3)) if rows else "No labelled test rows."


def _retrieval_table(ev: dict) -> str:
    ks = list(next(iter(ev["retrieval"].values())))
    rows = [[f"HUSE {name}", *[_pct(r[k]) for k in ks]] for name, r in ev["retrieval"].items()]
    base = ev["baselines"]["knn"]["retrieval"]["image->image"]
    rows.append(["(b) frozen image->image", *[_pct(base[k]) for k in ks]])
    return _table(["query -> database", *[f"R@{k}" for k in ks]], rows)


def _levels_table(ev: dict) -> str:
    header = ["head", "classes", "labelled test rows",
              *[f"{inp} {m}" for inp in INPUTS for m in METHODS], "fused macro-F1"]
    rows = []
    for head, h in ev["heads"].items():
        rows.append([head, str(h["n_classes"]), str(h["n_test_labelled"]),
                     *[_pct(h[inp][m]["top1"]) for inp in INPUTS for m in METHODS],
                     _pct(h["fused"]["linear"]["macro_f1"])])
    return _table(header, rows)


def _data_section(report: dict, ev: dict) -> str:
    data = dict(report.get("data", {}))
    lines = []
    rejects = data.pop("rejects_by_reason", None)
    splits = data.pop("splits", None)
    rare = data.pop("rare_classes", None)
    for k, v in data.items():
        lines.append(f"- {k.replace('_', ' ')}: {_brief(v)}")
    if rejects:
        lines.append("- rejected rows by reason: " +
                     ", ".join(f"{r} {n}" for r, n in sorted(rejects.items())))
    if splits:
        lines.append("- split sizes: " + ", ".join(f"{s} {n}" for s, n in splits.items()))
    if isinstance(rare, dict):
        for head, names in rare.items():
            lines.append(_rare_line(head, names))
    elif rare:
        lines.append(_rare_line(ev["leaf_head"], rare))
    ignored = [f"{h} {v['n_test_ignored']}" for h, v in ev["heads"].items()
               if v["n_test_ignored"]]
    lines.append("- test rows outside a head's label space (kept in the index and in retrieval, "
                 "left out of classification metrics): " + (", ".join(ignored) or "none"))
    return "\n".join(lines)


def _scalars(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of a nested dict's scalar leaves; lists and None are skipped."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _scalars(v, f"{prefix}{k}.")
        elif v is not None and not isinstance(v, (list, tuple)):
            yield f"{prefix}{k}", v


def _brief(value: Any, limit: int = 15) -> str:
    """A dict or list on one readable line, cut after ``limit`` entries."""
    if isinstance(value, dict):
        items = [f"{k}: {v}" for k, v in _scalars(value)]
    elif isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        return str(value)
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _rare_line(head: str, names: list[str]) -> str:
    return f"- {head}: {len(names)} classes below min_per_class: {_brief(names) or 'none'}"


def _training_section(report: dict, history: list[dict]) -> str:
    lines = ["- no training history given"]
    if history:
        best = max(history, key=lambda h: finite(h.get("val_top1")))
        lines = [f"- {len(history)} epochs ({history[-1].get('step', '?')} steps); best "
                 f"validation top-1 {_pct(best.get('val_top1'))} at epoch {best['epoch']}; "
                 f"final train loss {history[-1]['train_loss']:.4f}, val loss "
                 f"{history[-1]['val_loss']:.4f}."]
    for key, label in RUN_KEYS:
        if report.get(key):
            shown = {k: v for k, v in report[key].items()
                     if k not in ("image_tower_selection", "backbone_tuning")}
            lines.append(f"- {label}: {_brief(shown)}")
    tuning = report.get("training", {}).get("backbone_tuning")
    if tuning:
        curve = ", ".join(f"{p['val_top1']:.1f}" for p in tuning["curve"])
        lines.append(f"- image backbone: blocks {tuning['first_block']}+ and the head conv "
                     f"trained on the leaf classes ({tuning['seconds']:.0f} s; validation leaf "
                     f"top-1 by epoch {curve}; epoch {tuning['best_epoch']} kept)")
    selection = report.get("training", {}).get("image_tower_selection")
    if selection:
        lines += [f"- image tower {selection['chosen']} and w_nce "
                  f"{selection['chosen_w_nce']:g}, chosen on the validation split "
                  f"({selection['rule']}; tolerance {selection['tolerance']}):", "",
                  "| image tower hidden widths | w_nce | best epoch | val fused top-1 "
                  "| val image->text R@1 | val text->image R@1 |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {c['hidden']} | {c['w_nce']:g} | {c['best_epoch']} | "
                  f"{_pct(c['fused_top1'])} | {_pct(c['image_to_text_r1'])} | "
                  f"{_pct(c['text_to_image_r1'])} |" for c in selection["candidates"]]
        lines.append("")
    cfg = report.get("config", {})
    shown = [f"{k}={cfg[k]}" for k in CONFIG_KEYS if k in cfg]
    if shown:
        lines.append("- config: " + ", ".join(shown) + " (full config in report.json)")
    return "\n".join(lines)
