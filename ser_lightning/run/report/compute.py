"""Accuracy against compute: mean test UA of each configuration against its FLOPs, with the Pareto front.

One point per run the report covers (a CV: `summary.json` `compute`; a single fold: `results.json` `compute`,
both written by run/compute.py with torch.utils.flop_counter): UA mean ± std over folds against
- total GFLOPs (`total_gflops`: encoding the corpus + training), log x;
- inference GFLOPs per clip (`inference_gflops_per_clip`: encoder + head on one clip), log x.
The Pareto front maximises UA and minimises FLOPs: a point is on it when no other point has >= UA and <= FLOPs
with one of the two strict (two identical points are both on it). Runs without compute figures are named as
skipped, never dropped silently. The section appears only when at least one run has compute figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ser_lightning.run.report.doc import Doc, pct
from ser_lightning.run.report.runs import Run

# cost key -> (compute field, axis label, image / table name)
COSTS: Dict[str, Tuple[str, str, str]] = {
    "total": ("total_gflops", "total GFLOPs (encode + training)", "ua_vs_total_gflops"),
    "inference": ("inference_gflops_per_clip", "inference GFLOPs per clip (encoder + head)", "ua_vs_inference_gflops"),
}
TOLERANCE = 0.01  # "within 1 UA point of the best" (UA is a fraction)


@dataclass(frozen=True)
class Point:
    name: str
    ua: float  # mean test UA over folds, fraction
    ua_std: float
    total: float  # total GFLOPs (encode + training)
    inference: float  # inference GFLOPs per clip
    trainable_parameters: Optional[int] = None

    def cost(self, cost: str) -> float:
        return float(getattr(self, cost))


def run_compute(run: Run) -> Optional[Dict[str, Any]]:
    """A run's compute figures: the CV summary's, else (a single `ser train` fold) its results.json's."""
    c = run.summary.get("compute")
    if not isinstance(c, dict) and run.kind == "train" and run.folds:
        c = run.folds[0].get("compute")
    return c if isinstance(c, dict) else None


def _positive(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def points(runs: Sequence[Run]) -> Tuple[List[Point], List[Tuple[str, str]]]:
    """(the plottable points, [(run name, why skipped)])."""
    pts: List[Point] = []
    skipped: List[Tuple[str, str]] = []
    for r in runs:
        c = run_compute(r)
        if c is None:
            skipped.append((r.name, "no compute figures"))
            continue
        ua, std = r.stat("test/ua")
        total, inference = _positive(c.get("total_gflops")), _positive(c.get("inference_gflops_per_clip"))
        if not math.isfinite(ua) or total is None or inference is None:
            missing = [k for k, v in (("test/ua", ua if math.isfinite(ua) else None), ("total_gflops", total),
                                      ("inference_gflops_per_clip", inference)) if v is None]  # fmt: skip
            skipped.append((r.name, "no usable " + ", ".join(missing)))
            continue
        params = c.get("trainable_parameters")
        pts.append(Point(r.name, ua, std if math.isfinite(std) else 0.0, total, inference,
                         int(params) if isinstance(params, (int, float)) else None))  # fmt: skip
    return pts, skipped


def pareto_front(pts: Sequence[Point], cost: str = "total") -> List[Point]:
    """The points no other point dominates (>= UA and <= cost, one strict), cheapest first."""

    def dominated(p: Point) -> bool:
        return any(q.ua >= p.ua and q.cost(cost) <= p.cost(cost) and (q.ua > p.ua or q.cost(cost) < p.cost(cost))
                   for q in pts)  # fmt: skip

    return sorted((p for p in pts if not dominated(p)), key=lambda p: (p.cost(cost), -p.ua, p.name))


def cheapest_within(pts: Sequence[Point], cost: str = "total", tolerance: float = TOLERANCE) -> Optional[Point]:
    """The cheapest point whose UA is within `tolerance` (1 UA point) of the best UA; ties: higher UA, then name."""
    if not pts:
        return None
    best = max(p.ua for p in pts)
    near = [p for p in pts if p.ua >= best - tolerance - 1e-12]
    return min(near, key=lambda p: (p.cost(cost), -p.ua, p.name))


def pareto_png(pts: Sequence[Point], front: Sequence[Point], cost: str, path: Path, title: str = "") -> Path:
    """UA (mean ± std) against a cost on a log x axis; the front as a step line (best UA reachable at each cost)."""
    from ser_lightning.run.plots import _plt, _save

    plt = _plt()
    field, xlabel, _ = COSTS[cost]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    on = {p.name for p in front}
    for group, color, label in (([p for p in pts if p.name not in on], "#8c8c8c", "dominated"),
                                (list(front), "#c44e52", "Pareto front")):  # fmt: skip
        if group:
            ax.errorbar([p.cost(cost) for p in group], [100 * p.ua for p in group],
                        yerr=[100 * p.ua_std for p in group], fmt="o", capsize=3, color=color, label=label)  # fmt: skip
    if front:
        xs = [p.cost(cost) for p in front] + [max(p.cost(cost) for p in pts)]
        ys = [100 * p.ua for p in front] + [100 * front[-1].ua]
        ax.step(xs, ys, where="post", color="#c44e52", alpha=0.7)
    for p in pts:
        ax.annotate(p.name, (p.cost(cost), 100 * p.ua), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test UA (%), mean ± std over folds")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or f"UA against {field}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _g(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


FRONT_HEADER = ["run", "UA mean ± std (%)", "total GFLOPs", "inference GFLOPs/clip", "trainable params"]
WANDB_HEADER = ["run", "ua_mean", "ua_std", "total_gflops", "inference_gflops_per_clip", "trainable_parameters"]


def front_rows(front: Sequence[Point]) -> List[List[Any]]:
    return [[p.name, pct(p.ua, p.ua_std), _g(p.total), _g(p.inference),
             "-" if p.trainable_parameters is None else f"{p.trainable_parameters:,}"] for p in front]  # fmt: skip


def compute_section(doc: Doc, runs: Sequence[Run], images: Path) -> Tuple[Dict[str, Path], Dict[str, Any]]:
    """Add the "Accuracy against compute" section to `doc` and write its PNGs under `images`; returns (images,
    tables for W&B: the fronts with numeric cells). Nothing when no run has compute figures."""
    pts, skipped = points(runs)
    if not pts:
        return {}, {}
    out: Dict[str, Path] = {}
    tables: Dict[str, Any] = {}
    doc.h("Accuracy against compute")
    doc.p("Mean test UA over folds (± std) against FLOPs counted by torch.utils.flop_counter, log scale. The Pareto "
          "front (red step line) holds the configurations no other one beats on both: >= UA for <= FLOPs.")  # fmt: skip
    best = max(pts, key=lambda p: p.ua)
    for cost, what in (("total", "total GFLOPs (encoding the corpus + training)"),
                       ("inference", "inference GFLOPs per clip")):  # fmt: skip
        _, _, name = COSTS[cost]
        front = pareto_front(pts, cost)
        out[name] = pareto_png(pts, front, cost, images / f"{name}.png", title=f"UA against {what}")
        doc.img(out[name], f"UA (mean ± std over folds) against {what}; Pareto front as a step line")
        doc.p(f"Pareto front on {what} ({len(front)} of {len(pts)} configurations), cheapest first:")
        doc.table(FRONT_HEADER, front_rows(front))
        cheap = cheapest_within(pts, cost)
        assert cheap is not None
        saving = best.cost(cost) / cheap.cost(cost)
        doc.p(f"Cheapest configuration within 1 UA point of the best plotted one ({best.name}, UA "
              f"{pct(best.ua, best.ua_std)}) on {what}: **{cheap.name}**, UA {pct(cheap.ua, cheap.ua_std)}, "
              f"{_g(cheap.cost(cost))} GFLOPs"
              + (f" ({saving:.3g}x fewer than the best)." if cheap is not best else " (the best itself)."))  # fmt: skip
        tables[f"pareto_{cost}"] = (WANDB_HEADER, [[p.name, p.ua, p.ua_std, p.total, p.inference,
                                                    p.trainable_parameters] for p in front])  # fmt: skip
    if skipped:
        doc.p("Skipped, not plotted (a run without compute figures was made before FLOPs were counted): "
              + ", ".join(f"{n} ({why})" for n, why in skipped) + ".")  # fmt: skip
    return out, tables
