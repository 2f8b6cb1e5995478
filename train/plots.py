"""The report's PNG plots: loss curves, the leaf confusion matrix and a 2-D map of the
universal space (t-SNE). matplotlib is imported inside the functions (Agg backend)."""

from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from huse_common.atomic import write_atomic
from huse_common.categories import last_level, levels_of
from train.evaluate import EvalArtifacts

DPI = 120
LABEL_CHARS = 22  # class names on plot axes are cut to this many characters
MAX_MAP_GROUPS = 12  # legend entries on the embedding map; smaller groups are merged


def finite(x: float | None) -> float:
    """x, or -inf for a missing or non-finite number (so it never wins a max)."""
    return x if x is not None and math.isfinite(x) else -math.inf


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    write_atomic(path, buf.getvalue())


def short_name(name: str, limit: int = LABEL_CHARS) -> str:
    """Last part of a category path, cut to ``limit`` characters with an ellipsis."""
    tail = last_level(name)
    return tail if len(tail) <= limit else tail[: limit - 1] + "…"


def _short_names(names: list[str]) -> list[str]:
    """Short names; where two collide, show their parents too ("Men > Shirts")."""
    short = [short_name(n) for n in names]
    dup = {s for s, c in Counter(short).items() if c > 1}
    return [short_name(" / ".join(levels_of(n)[-2:]), 2 * LABEL_CHARS) if s in dup else s
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
    top1 = np.array([100 * finite(h.get("val_top1")) for h in history])
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
