"""`early_terminate: {type: hyperband, ...}` of a sweep YAML: its validation, and how the local controller applies it.

Under `wandb agent` the W&B server applies the section itself (to the metric's history in the trial's W&B run);
`ser sweep` applies it here, from the per-epoch validation metrics each trial writes to its folder:

- Brackets: after min_iter, min_iter*eta, min_iter*eta^2, ... epochs (W&B's `min_iter` form), or with `max_iter`
  and `s` W&B's other form: int(max_iter/eta^k) for k = 1..s (those >= 1). Epochs count from 1: bracket b is
  reached once a run has finished b validation epochs (W&B's server indexes its history from 0 instead).
- The value compared: the sweep's metric per epoch. A validation metric (`cv/val/ua_best_mean`, `val/ua_best`,
  `val/loss`, ...) maps to its key in the runs' `history.jsonl` (`val/ua`, `val/loss`), with the sweep's goal; a
  test metric (`cv/test/ua_mean`: only known at the end) falls back to `val/ua`, maximised (the default
  checkpoint monitor). A run's value at bracket b is its BEST value over its first b epochs; a trial's value is
  the mean over its runs (`history.jsonl` below its folder: the folds of a `ser cv`, the members of an ensemble)
  that have reached b, taken the first time the controller sees one there and then kept in sweep_state.json
  (`hyperband: {b: value}`). With sequential folds that is the first fold, so trials compare like with like.
- The cut (W&B's threshold): over the n trials of the sweep with a value at b (this one included, whatever
  their status), sorted best first, the value at index int(n/eta) (0-based): about the top 1/eta survive. A trial
  strictly worse than the cut is stopped. Nothing is cut while fewer than eta trials have reached b (W&B cuts from
  the second trial on, which with trials run one after another would stop the second trial for being behind the
  first alone). Like W&B, a running trial is judged at every poll at the LAST bracket it has reached, against
  every value recorded there so far: with parallel workers, one that passed a bracket while few trials had reached
  it can still be stopped there when better ones arrive, until it reaches the next bracket. (With one worker the
  other trials do not change while a trial runs: it is judged once per bracket, when it reaches it.)
- A stopped trial gets SIGTERM on its process group (ser saves and exits 143; SIGKILL after a grace period), is
  recorded `early_stopped` (not failed; never resumed nor retried) and its folder gets EARLY_STOPPED.json (the
  bracket, its value, the cut, how many trials reached the bracket, the reason in words).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ser_lightning.run.sweep.trials import utc_now
from ser_lightning.utils.io import atomic_write_json

HISTORY = "history.jsonl"  # run/callbacks.py HISTORY (not imported: that module loads torch and lightning)
MARKER = "EARLY_STOPPED.json"
EARLY_STOPPED = "early_stopped"  # the trial status
EARLY_STOP_GRACE_S = 60.0  # an early-stopped trial gets SIGTERM, then SIGKILL after this long
DEFAULT_ETA = 3
KEYS = ("type", "min_iter", "max_iter", "s", "eta")
ALLOWED = ("allowed: early_terminate: {type: hyperband, min_iter: integer >= 1, eta: number >= 2 (default 3)}, or "
           "{type: hyperband, max_iter: integer >= 1, s: integer >= 1, eta: number >= 2}")  # fmt: skip
FALLBACK_KEY = "val/ua"


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_early_terminate(et: Any) -> List[str]:
    """Problems of an `early_terminate` section (empty list = valid for `ser sweep` and for `wandb sweep`)."""
    if not isinstance(et, dict):
        return [f"early_terminate must be a mapping (got {et!r}); {ALLOWED}"]
    problems = []
    if et.get("type") != "hyperband":
        problems.append(f"early_terminate type {et.get('type')!r} is not supported (W&B sweeps have only hyperband)")
    unknown = sorted(str(k) for k in et if k not in KEYS)
    if unknown:
        problems.append(f"early_terminate has unknown key(s) {', '.join(unknown)}")
    for key in ("min_iter", "max_iter", "s"):
        if key in et and not (_int(et[key]) and et[key] >= 1):
            problems.append(f"early_terminate {key} must be an integer >= 1 (got {et[key]!r})")
    eta = et.get("eta", DEFAULT_ETA)
    if not (isinstance(eta, (int, float)) and not isinstance(eta, bool) and math.isfinite(eta) and eta >= 2):
        problems.append(f"early_terminate eta must be a number >= 2 (got {eta!r})")
    if "max_iter" in et and "s" not in et:
        problems.append("early_terminate max_iter needs s (the number of brackets below max_iter)")
    elif "max_iter" not in et and "min_iter" not in et:
        problems.append("early_terminate needs min_iter (or max_iter and s)")
    if not problems and not brackets(et):
        problems.append(f"early_terminate max_iter {et['max_iter']} / eta gives no bracket >= 1 epoch")
    return [f"{p}; {ALLOWED}" for p in problems]


def brackets(et: Mapping[str, Any], limit: int = 10**4) -> List[int]:
    """The bracket epochs, ascending (W&B's `hyperband_stop_runs` bands; the min_iter form's up to `limit` epochs)."""
    eta = et.get("eta", DEFAULT_ETA)
    if "max_iter" in et:
        out, band = [], float(et["max_iter"])
        for _ in range(int(et["s"])):
            band /= eta
            if band < 1:
                break
            out.append(int(band))
        return sorted(set(out))
    out, band = [int(et["min_iter"])], float(et["min_iter"]) * eta
    while band <= limit:
        out.append(int(band))
        band *= eta
    return sorted(set(out))


def epoch_metric(sweep_metric: str, goal: str) -> Tuple[str, bool]:
    """(the history.jsonl key judged per epoch, maximise?) for a sweep metric (see the module docstring)."""
    name = sweep_metric[len("cv/") :] if sweep_metric.startswith("cv/") else sweep_metric
    name = name[: -len("_mean")] if name.endswith("_mean") else name
    if name.startswith("val/") and not name.endswith("_std"):
        return (name[: -len("_best")] if name.endswith("_best") else name), goal == "maximize"
    return FALLBACK_KEY, True


def read_history(path: Path) -> List[Dict[str, Any]]:
    """The entries of a history.jsonl (a torn or foreign line is skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and _int(entry.get("epoch")):
            out.append(entry)
    return out


def trial_histories(trial_dir: Path) -> List[List[Dict[str, Any]]]:
    """Every run's history below a trial folder (its own, its folds', its ensemble members')."""
    return [read_history(p) for p in sorted(Path(trial_dir).rglob(HISTORY))]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def best_at(history: Sequence[Mapping[str, Any]], key: str, epoch: int, maximize: bool) -> Optional[float]:
    """One run's best `key` over its first `epoch` epochs; None until it has finished epoch `epoch` (with `key`)."""
    if not any(e.get("epoch") == epoch - 1 and _finite(e.get(key)) for e in history):
        return None
    values = [float(e[key]) for e in history if _int(e.get("epoch")) and e["epoch"] < epoch and _finite(e.get(key))]
    return max(values) if maximize else min(values)


def bracket_value(histories: Sequence[Sequence[Mapping[str, Any]]], key: str, epoch: int, maximize: bool) -> Optional[float]:
    """A trial's value at a bracket: the mean of best_at over its runs that reached it (None: none did)."""
    values = [v for v in (best_at(h, key, epoch, maximize) for h in histories) if v is not None]
    return sum(values) / len(values) if values else None


def bracket_cut(values: Sequence[float], eta: float, maximize: bool) -> Optional[float]:
    """W&B's threshold over the values of the trials at a bracket: the int(n/eta)-th best; None while n < eta."""
    if len(values) < eta:
        return None
    ordered = sorted(values, reverse=maximize)
    return ordered[int(len(ordered) / eta)]


def worse(value: float, cut: float, maximize: bool) -> bool:
    return value < cut if maximize else value > cut


class Hyperband:
    """The controller's side: record the brackets running trials reach, and judge them."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        et = config["early_terminate"]
        self.eta = et.get("eta", DEFAULT_ETA)
        self.brackets = brackets(et)
        self.sweep_metric = config["metric"]["name"]
        self.key, self.maximize = epoch_metric(self.sweep_metric, config["metric"].get("goal", "minimize"))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Optional["Hyperband"]:
        return cls(config) if config.get("early_terminate") else None

    def describe(self) -> str:
        shown = ", ".join(map(str, self.brackets[:6])) + (", ..." if len(self.brackets) > 6 else "")
        return (f"hyperband: brackets after {shown} epochs, eta {self.eta}, on the best {self.key} so far "
                f"({'max' if self.maximize else 'min'}imised; mean over the runs of a trial that reached the bracket)")  # fmt: skip

    def observe(self, trial: Dict[str, Any], trial_dir: Path) -> List[int]:
        """Record in trial['hyperband'] the brackets the trial has newly reached; returns them."""
        seen = trial.setdefault("hyperband", {})
        todo = [b for b in self.brackets if str(b) not in seen]
        if not todo:
            return []
        histories = trial_histories(trial_dir)
        new = []
        for b in todo:
            value = bracket_value(histories, self.key, b, self.maximize)
            if value is None:
                break  # brackets are ascending: a later one is not reached either
            seen[str(b)] = value
            new.append(b)
        return new

    def judge(self, trial: Mapping[str, Any], trials: Sequence[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
        """The decision to stop `trial` (one of `trials`): at the last bracket it has reached, its value is worse
        than the cut over every trial of `trials` with a value there. None: it goes on."""
        reached = [int(b) for b in (trial.get("hyperband") or {})]
        if not reached:
            return None
        b = max(reached)
        value = trial["hyperband"][str(b)]
        values = [t["hyperband"][str(b)] for t in trials if str(b) in (t.get("hyperband") or {})]
        cut = bracket_cut(values, self.eta, self.maximize)
        if cut is None or not worse(value, cut, self.maximize):
            return None
        relation, n = ("below" if self.maximize else "above"), len(values)
        reason = (f"hyperband: after {b} epoch{'s' * (b > 1)} its best {self.key} was {value:.4f}, {relation} the cut "
                  f"{cut:.4f} (the value ranked {int(n / self.eta) + 1} of the {n} trials of this sweep that reached "
                  f"epoch {b}; eta {self.eta})")  # fmt: skip
        return {"bracket_epoch": b, "value": value, "cut": cut, "trials_at_bracket": n, "eta": self.eta,
                "brackets": self.brackets, "metric": self.key, "maximize": self.maximize,
                "value_is": f"the best {self.key} of its first {b} epoch(s), mean over its runs (folds) that reached it",
                "sweep_metric": self.sweep_metric, "reason": reason}  # fmt: skip

    def poll(self, sweep_dir: Path, trials: Sequence[Dict[str, Any]], running: Sequence[str]) -> Tuple[bool, List[str]]:
        """Observe the running trials (their folders are sweep_dir/<name>), then judge each; a trial to stop gets
        trial['early_stopped'] = the decision. Returns (anything recorded?, the names of the trials to stop now)."""
        by_name = {t["name"]: t for t in trials}
        changed = any([bool(self.observe(by_name[name], Path(sweep_dir) / name)) for name in running])
        stop = []
        for name in running:
            trial = by_name[name]
            decision = None if trial.get("early_stopped") else self.judge(trial, trials)
            if decision is not None:
                trial["early_stopped"] = dict(decision, stopped_at=utc_now())
                stop.append(name)
                print(f"[ser sweep] stop   {name}: {decision['reason']}", flush=True)
        return changed or bool(stop), stop


def mark_early_stopped(sweep_dir: Path, trial: Dict[str, Any]) -> None:
    """A trial that hyperband stopped has ended: status early_stopped, and EARLY_STOPPED.json in its folder."""
    trial.update({"status": EARLY_STOPPED, "metric": None, "error": None})
    marker = Path(sweep_dir) / trial["name"] / MARKER
    atomic_write_json(marker, dict(trial["early_stopped"], trial=trial["name"], status=EARLY_STOPPED))
    print(f"[ser sweep] early-stopped {trial['name']} -> {marker}", flush=True)


def settle_early_stopped(sweep_dir: Path, trials: Sequence[Dict[str, Any]]) -> None:
    """On start: a trial stopped by hyperband while the controller itself was stopped (decided, not yet seen to
    end: left running / interrupted in the state) stays stopped, it is not resumed."""
    for trial in trials:
        if trial["status"] in ("running", "interrupted") and trial.get("early_stopped"):
            mark_early_stopped(sweep_dir, trial)
