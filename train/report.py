"""The training report: report.json (every number), report.md (what a person reads first) and
three PNG plots (loss curves, leaf confusion matrix, 2-D map of the universal space).

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

import io
import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from huse_common.atomic import write_atomic
from train.evaluate import INPUTS, METHODS, EvalArtifacts

logger = logging.getLogger(__name__)

DPI = 120
LABEL_CHARS = 22  # class names on plot axes are cut to this many characters
MAX_MAP_GROUPS = 12  # legend entries on the embedding map; smaller groups are merged
RUN_KEYS = (("training", "run"), ("timings_s", "seconds"), ("index", "index"),
            ("bundle", "bundle"))  # optional report sections shown under "Training"
CONFIG_KEYS = ("image_backbone", "text_backbone", "embed_dim", "use_tfidf", "w_cls", "w_graph",
               "w_gap", "min_per_class", "seed")


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
    _save_figure(plot_loss_curves(history), out_dir / "plots" / "loss_curves.png")
    _save_figure(plot_confusion(artifacts), out_dir / "plots" / "confusion_matrix.png")
    _save_figure(plot_embedding_map(artifacts), out_dir / "plots" / "embedding_map.png")
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

def _finite(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) else -math.inf


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
        best = max(history, key=lambda h: _finite(h.get("val_top1")))
        lines = [f"- {len(history)} epochs ({history[-1].get('step', '?')} steps); best "
                 f"validation top-1 {_pct(best.get('val_top1'))} at epoch {best['epoch']}; "
                 f"final train loss {history[-1]['train_loss']:.4f}, val loss "
                 f"{history[-1]['val_loss']:.4f}."]
    for key, label in RUN_KEYS:
        if report.get(key):
            lines.append(f"- {label}: {_brief(report[key])}")
    cfg = report.get("config", {})
    shown = [f"{k}={cfg[k]}" for k in CONFIG_KEYS if k in cfg]
    if shown:
        lines.append("- config: " + ", ".join(shown) + " (full config in report.json)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    write_atomic(path, buf.getvalue())


def short_name(name: str, limit: int = LABEL_CHARS) -> str:
    """Last part of a category path, cut to ``limit`` characters with an ellipsis."""
    tail = name.split(" > ")[-1].strip()
    return tail if len(tail) <= limit else tail[: limit - 1] + "…"


def _short_names(names: list[str]) -> list[str]:
    """Short names; where two collide, show their parents too ("Men > Shirts")."""
    short = [short_name(n) for n in names]
    dup = {s for s, c in Counter(short).items() if c > 1}
    return [short_name(" / ".join(n.split(" > ")[-2:]), 2 * LABEL_CHARS) if s in dup else s
            for s, n in zip(short, names, strict=True)]


def plot_loss_curves(history: list[dict]) -> Any:
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    if not history:
        for a in (ax, ax2):
            a.text(0.5, 0.5, "no training history", ha="center", va="center")
            a.set_axis_off()
        return fig
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "-o", ms=3, lw=2, label="train (total)")
    ax.plot(epochs, [h["val_loss"] for h in history], "-o", ms=3, lw=2, label="validation (total)")
    for key, label in (("train_cls", "train classification"), ("train_graph", "train graph"),
                       ("train_gap", "train cross-modal gap")):
        if all(key in h for h in history):
            ax.plot(epochs, [h[key] for h in history], "--", lw=1.2, label=label)
    ax.set(title="Losses", xlabel="epoch", ylabel="loss")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    top1 = np.array([100 * _finite(h.get("val_top1")) for h in history])
    if np.isfinite(top1).any():  # no validation split -> nothing to draw
        ax2.plot(epochs, np.where(np.isfinite(top1), top1, np.nan), "-o", ms=3, lw=2,
                 color="tab:green")
        best = int(np.argmax(top1))
        ax2.axvline(epochs[best], color="grey", ls=":", lw=1)
        right_half = epochs[best] > (epochs[0] + epochs[-1]) / 2  # keep the label inside
        ax2.annotate(f"best {top1[best]:.1f}% (epoch {epochs[best]})", (epochs[best], top1[best]),
                     textcoords="offset points", xytext=(-6 if right_half else 6, -14),
                     ha="right" if right_half else "left", fontsize=9)
    ax2.set(title="Validation top-1 (fused, leaf)", xlabel="epoch", ylabel="top-1 (%)")
    ax2.grid(alpha=0.3)
    fig.suptitle("Training curves", fontweight="bold")
    fig.tight_layout()
    return fig


def plot_confusion(artifacts: EvalArtifacts) -> Any:
    """Row-normalised confusion of the largest leaf classes, with an 'other classes' column."""
    plt = _pyplot()
    cm = np.asarray(artifacts.confusion, dtype=np.float64)
    m = len(artifacts.confusion_classes)
    size = max(5.0, 0.42 * m + 3.5)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    if m == 0:
        ax.text(0.5, 0.5, "no labelled test rows", ha="center", va="center")
        ax.set_axis_off()
        return fig
    support = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    names = _short_names(artifacts.confusion_classes)
    ax.set_xticks(range(m + 1), [*names, "other classes"], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(m), [f"{n} ({int(s)})" for n, s in zip(names, support[:, 0],
                                                                   strict=True)], fontsize=8)
    ax.axvline(m - 0.5, color="grey", lw=0.8)
    if m <= 30:
        for i, j in zip(*np.nonzero(cm), strict=True):
            ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black",
                    fontweight="bold" if i == j else "normal")
    for i in range(m):  # outline the diagonal: the correct predictions
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="#444", lw=0.8))
    ax.set(xlabel="predicted class", ylabel="true class (test items)")
    ax.set_title(f"Confusion of the {m} largest leaf classes (% of row)\n"
                 f"{artifacts.confusion_source}", fontsize=11)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="share of the true class")
    fig.tight_layout()
    return fig


def _tsne_2d(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(x)
    if n < 4:  # t-SNE needs perplexity < n; a handful of points is shown by PCA alone
        return PCA(n_components=2, random_state=seed).fit_transform(x) if n > 2 else x[:, :2]
    x = PCA(n_components=min(50, n - 1, x.shape[1]), random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, (n - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                metric="cosine").fit_transform(x)


def plot_embedding_map(artifacts: EvalArtifacts) -> Any:
    """t-SNE of the fused test embeddings, coloured by top-level category."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 7.5))
    x = np.asarray(artifacts.map_embeddings, dtype=np.float32)
    if len(x) < 2:
        ax.text(0.5, 0.5, "too few test items for a map", ha="center", va="center")
        ax.set_axis_off()
        return fig
    xy = _tsne_2d(x, artifacts.seed)
    counts = Counter(artifacts.map_groups)
    keep = [g for g, _ in counts.most_common(MAX_MAP_GROUPS)]
    groups = np.array([g if g in keep else "other groups" for g in artifacts.map_groups])
    order = keep + (["other groups"] if len(counts) > len(keep) else [])
    cmap = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    for i, g in enumerate(order):
        sel = groups == g
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8 if len(x) > 1000 else 14, alpha=0.75,
                   color=cmap(i % cmap.N),
                   label=f"{short_name(g, 28)} ({int(sel.sum())})", linewidths=0)
    ax.legend(title="top-level category", fontsize=8, title_fontsize=9, markerscale=2,
              loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set(xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2")
    ax.set_title(f"Universal space: {len(x)} fused test embeddings (PCA + t-SNE)", fontsize=11)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig
