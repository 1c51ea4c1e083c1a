"""The sweep's leaderboard: finished trials ranked by the YAML's metric, written to leaderboard.md and printed; the
others (early-stopped by hyperband, failed, unfinished) listed after them with their status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from ser_lightning.run.sweep.hyperband import EARLY_STOPPED, MARKER
from ser_lightning.run.sweep.trials import LEADERBOARD, STATE, fmt_metric
from ser_lightning.utils.io import atomic_write_text

if TYPE_CHECKING:
    from ser_lightning.run.sweep.controller import LocalSweep


def ranked(trials: Sequence[Dict[str, Any]], goal: str) -> List[Dict[str, Any]]:
    """The finished trials with a metric, best first."""
    done = [t for t in trials if t["status"] == "finished" and t.get("metric") is not None]
    return sorted(done, key=lambda t: t["metric"], reverse=goal == "maximize")


def remaining(config: Mapping[str, Any], trials: Sequence[Dict[str, Any]]) -> Optional[int]:
    """Trials the sweep has not run yet (None: unbounded random / bayes search without run_cap)."""
    cap = config.get("run_cap")
    left = None if cap is None else int(cap) - len(trials)
    if config["method"] == "grid":
        size = 1
        for spec in config["parameters"].values():
            if isinstance(spec, dict) and "values" in spec:
                size *= len(spec["values"])
            elif isinstance(spec, dict) and spec.get("distribution") == "int_uniform":
                size *= int(spec["max"]) - int(spec["min"]) + 1
        left = size - len(trials) if left is None else min(left, size - len(trials))
    return None if left is None else max(0, left)


def status_text(trial: Mapping[str, Any]) -> str:
    """A trial's status for the leaderboard; an early-stopped one with its bracket, value and the cut."""
    stop = trial.get("early_stopped")
    if trial["status"] == EARLY_STOPPED and isinstance(stop, Mapping):
        sign = "<" if stop.get("maximize", True) else ">"
        return f"{EARLY_STOPPED} (epoch {stop['bracket_epoch']}: {stop['value']:.4f} {sign} cut {stop['cut']:.4f})"
    return str(trial["status"])


# FLOPs columns (run/compute.py, read back as compute/<name> metrics): the trial's inference cost per clip (encoder +
# head) and its whole cost (a CV: the corpus encoded once + every fold's training; a `ser train` trial: its total)
COMPUTE_COLUMNS = {"inference GFLOPs/clip": ("compute/inference_gflops_per_clip",),
                   "total GFLOPs": ("compute/cv_total_gflops", "compute/total_gflops")}  # fmt: skip


def compute_cells(trial: Mapping[str, Any]) -> List[str]:
    """The trial's FLOPs columns; '-' where its outputs carry no figures (failed, unfinished, older runs)."""
    metrics = trial.get("metrics") or {}
    cells = []
    for keys in COMPUTE_COLUMNS.values():
        value = next((metrics[k] for k in keys if isinstance(metrics.get(k), (int, float))), None)
        cells.append("-" if value is None else f"{value:.4g}")
    return cells


def leaderboard_markdown(sweep: "LocalSweep") -> str:
    trials, metric, varying = sweep.trials, sweep.metric, sweep.varying
    best = ranked(trials, sweep.goal)
    others = [t for t in trials if t not in best]
    statuses = ("finished", EARLY_STOPPED, "failed", "running", "pending", "interrupted")
    counts = {s: sum(t["status"] == s for t in trials) for s in statuses}
    lines = [
        f"# Sweep {sweep.state.get('source') or sweep.dir.name}",
        "",
        f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + f". Objective: `{metric}` ({sweep.goal}), mean ± std over folds where the trial is a CV.",
        "",
        "| rank | trial | " + " | ".join(varying) + f" | {metric} | " + " | ".join(COMPUTE_COLUMNS) + " |",
        "|---|---|" + "---|" * len(varying) + "---|" + "---|" * len(COMPUTE_COLUMNS),
    ]
    for i, t in enumerate(best, 1):
        cells = [str(t["params"].get(k)) for k in varying]
        lines.append(f"| {i} | {t['name']} | " + " | ".join(cells) + f" | {fmt_metric(t['metric'], t.get('metric_std'))} | "
                     + " | ".join(compute_cells(t)) + " |")  # fmt: skip
    for t in others:
        cells = [str(t["params"].get(k)) for k in varying]
        lines.append(f"| - | {t['name']} | " + " | ".join(cells) + f" | {status_text(t)} | "
                     + " | ".join(compute_cells(t)) + " |")  # fmt: skip
    stopped = [t for t in trials if t["status"] == EARLY_STOPPED and isinstance(t.get("early_stopped"), Mapping)]
    if stopped:
        lines += ["", "## Early-stopped trials (hyperband)", ""]
        lines += [f"- `{t['name']}`: {t['early_stopped']['reason']} — `{t['name']}/{MARKER}`" for t in stopped]
    failed = [t for t in trials if t["status"] == "failed"]
    if failed:
        lines += ["", "## Failed trials", ""]
        for t in failed:
            last = (t.get("error") or "").strip().splitlines()[-1:] or ["?"]
            lines.append(f"- `{t['name']}` (exit {t.get('returncode')}): {last[0][:300]} — log: `{t.get('log')}`")
    return "\n".join(lines) + "\n"


def print_leaderboard(sweep: "LocalSweep") -> None:
    """Write <sweep dir>/leaderboard.md and print the ranking with what is left to run."""
    atomic_write_text(sweep.dir / LEADERBOARD, leaderboard_markdown(sweep))
    trials, metric = sweep.trials, sweep.metric
    best = ranked(trials, sweep.goal)
    width = max([len(t["name"]) for t in trials] + [5])
    print(f"\n[ser sweep] leaderboard: {metric} ({sweep.goal}) -> {sweep.dir / LEADERBOARD}")
    print(f"  {'rank':>4}  {'trial':<{width}}  {metric}")
    for i, t in enumerate(best, 1):
        print(f"  {i:>4}  {t['name']:<{width}}  {fmt_metric(t['metric'], t.get('metric_std'))}")
    for t in trials:
        if t not in best:
            print(f"  {'-':>4}  {t['name']:<{width}}  {status_text(t)}")
    unfinished = sum(t["status"] in ("running", "interrupted", "pending") for t in trials)
    left = remaining(sweep.config, trials)
    if unfinished == 0 and left == 0:
        more = "sweep complete"
    else:
        todo = [f"{unfinished} unfinished"] if unfinished else []
        todo += [f"{left} not started"] if left else (["no limit (random/bayes): use --count"] if left is None else [])
        more = f"{', '.join(todo)}: run the same command again to continue"
    stopped = sum(t["status"] == EARLY_STOPPED for t in trials)
    early = f" ({stopped} early-stopped by hyperband)" if stopped else ""
    print(f"[ser sweep] {len(best)}/{len(trials)} trials finished{early}; {more}; state: {sweep.dir / STATE}", flush=True)
