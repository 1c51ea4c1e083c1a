"""Matplotlib figures shared by train / cv / report (Agg backend: no display needed).

Every figure is written atomically (a temp file beside it, then renamed), so concurrent writers (DDP ranks,
sweep workers) never leave a half-written PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> Path:
    import io

    from ser_lightning.utils.io import atomic_write_bytes

    plt = _plt()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())  # temp file + rename, the usual permissions, stale temps cleanable
    return Path(path)


def normalise_rows(cm: Sequence[Sequence[int]]) -> np.ndarray:
    """Row-normalised confusion matrix (rows = true class; an empty row stays 0)."""
    m = np.asarray(cm, dtype=float)
    return m / np.maximum(m.sum(1, keepdims=True), 1)


def confusion_png(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = "") -> Path:
    plt = _plt()
    m = np.asarray(cm, dtype=float)
    norm = normalise_rows(cm)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(m[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def recall_bars_png(runs: Mapping[str, Mapping[str, Tuple[float, float]]], class_names: Sequence[str], path: Path,
                    title: str = "per-class recall (mean ± std over folds)") -> Path:  # fmt: skip
    """Grouped bars: one group per class, one bar per run (`runs[name][class] = (mean, std)`)."""
    plt = _plt()
    names = list(runs)
    n, k = len(class_names), max(len(names), 1)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n * max(1, k / 2) + 2), 4.2))
    x = np.arange(n)
    for i, name in enumerate(names):
        means = [100 * runs[name].get(c, (np.nan, 0.0))[0] for c in class_names]
        stds = [100 * runs[name].get(c, (np.nan, 0.0))[1] for c in class_names]
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if len(names) > 1:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def layer_curve_png(series: Mapping[str, Sequence[Mapping[str, float]]], path: Path, title: str = "") -> Path:
    """WA and UA against encoder layer, one line per series (pooling), error bars = std over folds
    (the paper's figure 5). Each point: {"layer", "wa", "wa_std", "ua", "ua_std"} (fractions)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, metric in zip(axes, ("wa", "ua")):
        for name, points in series.items():
            pts = sorted(points, key=lambda p: p["layer"])
            xs = [p["layer"] for p in pts]
            ax.errorbar(xs, [100 * p[metric] for p in pts], yerr=[100 * p.get(f"{metric}_std", 0.0) for p in pts],
                        marker="o", capsize=3, label=name)  # fmt: skip
        ax.set_xlabel("encoder layer")
        ax.set_ylabel(f"{metric.upper()} (%)")
        ax.set_title(metric.upper(), fontsize=10)
        ax.grid(alpha=0.3)
        layers = sorted({p["layer"] for pts in series.values() for p in pts})
        if layers:
            ax.set_xticks(layers)
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def leaderboard_png(names: List[str], means: List[float], stds: List[float], path: Path, metric: str = "UA",
                    title: Optional[str] = None) -> Path:  # fmt: skip
    """Horizontal bars of a metric (mean ± std), best on top."""
    plt = _plt()
    order = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.32 * len(names)))
    y = np.arange(len(names))[::-1]
    ax.barh(y, [100 * means[i] for i in order], xerr=[100 * stds[i] for i in order], capsize=2, color="#4c72b0")
    ax.set_yticks(y, [names[i] for i in order], fontsize=7)
    ax.set_xlabel(f"{metric} (%)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def per_fold_confusions(results: Sequence[Mapping], class_names: Sequence[str], folder: Path) -> Dict[int, Path]:
    """One normalised confusion PNG per fold result (`fold_<k>.png`)."""
    out = {}
    for r in results:
        k = int(r["fold"])
        out[k] = confusion_png(r["confusion_matrix"], class_names, Path(folder) / f"confusion_fold_{k}.png",
                               title=f"fold {k}: UA {100 * r['test/ua']:.1f}  WA {100 * r['test/wa']:.1f} (n={r['n_test']})")  # fmt: skip
    return out


def attention_maps_png(maps: Sequence[Tuple[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """One row per clip, one column per head: attention weights (query frame x key frame), real frames only."""
    plt = _plt()
    heads = max(m.shape[0] for _, m in maps)
    fig, axes = plt.subplots(len(maps), heads, figsize=(2.2 * heads, 2.2 * len(maps)), squeeze=False)
    for row, (name, m) in enumerate(maps):
        for h in range(heads):
            ax = axes[row][h]
            ax.imshow(m[h], aspect="auto", cmap="viridis", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"{name}\nquery frame", fontsize=7)
            if row == len(maps) - 1:
                ax.set_xlabel("key frame", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
