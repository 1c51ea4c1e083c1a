"""The sweep's leaderboard: finished trials ranked by the YAML's metric, written to leaderboard.md and printed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

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


def leaderboard_markdown(sweep: "LocalSweep") -> str:
    trials, metric, varying = sweep.trials, sweep.metric, sweep.varying
    best = ranked(trials, sweep.goal)
    others = [t for t in trials if t not in best]
    counts = {s: sum(t["status"] == s for t in trials) for s in ("finished", "failed", "running", "pending", "interrupted")}
    lines = [
        f"# Sweep {sweep.state.get('source') or sweep.dir.name}",
        "",
        f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + f". Objective: `{metric}` ({sweep.goal}), mean ± std over folds where the trial is a CV.",
        "",
        "| rank | trial | " + " | ".join(varying) + f" | {metric} |",
        "|---|---|" + "---|" * len(varying) + "---|",
    ]
    for i, t in enumerate(best, 1):
        cells = [str(t["params"].get(k)) for k in varying]
        lines.append(f"| {i} | {t['name']} | " + " | ".join(cells) + f" | {fmt_metric(t['metric'], t.get('metric_std'))} |")
    for t in others:
        cells = [str(t["params"].get(k)) for k in varying]
        lines.append(f"| - | {t['name']} | " + " | ".join(cells) + f" | {t['status']} |")
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
            print(f"  {'-':>4}  {t['name']:<{width}}  {t['status']}")
    unfinished = sum(t["status"] in ("running", "interrupted", "pending") for t in trials)
    left = remaining(sweep.config, trials)
    if unfinished == 0 and left == 0:
        more = "sweep complete"
    else:
        todo = [f"{unfinished} unfinished"] if unfinished else []
        todo += [f"{left} not started"] if left else (["no limit (random/bayes): use --count"] if left is None else [])
        more = f"{', '.join(todo)}: run the same command again to continue"
    print(f"[ser sweep] {len(best)}/{len(trials)} trials finished; {more}; state: {sweep.dir / STATE}", flush=True)
