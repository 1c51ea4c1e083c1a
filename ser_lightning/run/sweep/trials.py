"""A sweep folder's trials: their names, their files, and what they wrote.

    <sweep dir>/sweep_state.json   every trial's parameters, command, status, metric (the controller's state)
    <sweep dir>/leaderboard.md     the trials ranked by the sweep's metric
    <sweep dir>/<trial>/trial.log  the trial's output, one `==== ` header per attempt
    <sweep dir>/<trial>/...        the trial's run folder (results.json, or summary.json for a `ser cv` trial)
    <sweep dir>/<trial>/EARLY_STOPPED.json  why hyperband stopped it (early_terminate, hyperband.py)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from ser_lightning.run.rundir import RESULTS, SUMMARY
from ser_lightning.utils.io import read_json

STATE = "sweep_state.json"
LEADERBOARD = "leaderboard.md"
TRIAL_LOG = "trial.log"
ERROR_TAIL_LINES = 60


def trial_name(params: Mapping[str, Any], varying: Sequence[str], exact: bool = True) -> str:
    """Deterministic folder name from the varying parameters, e.g. `layer-3_pooling-qkv`. A short hash of all
    parameters is appended when the readable part is lossy (floats of random/bayes, odd characters, length)."""
    if not varying:
        return "trial-" + _params_hash(params)
    shorts = [k.split(".")[-1] for k in varying]
    keys = shorts if len(set(shorts)) == len(shorts) else [k.replace(".", "_") for k in varying]
    parts = []
    for key, full in zip(keys, varying):
        value = params.get(full)
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, float) and not exact:
            text = f"{value:.3g}"
        elif isinstance(value, (list, tuple)):
            text = "-".join(map(str, value))
        else:
            text = str(value)
        parts.append(f"{key}-{text}")
    raw = "_".join(parts)
    safe = re.sub(r"[^A-Za-z0-9._+-]", "-", raw)
    lossy = (not exact and any(isinstance(params.get(k), float) for k in varying)) or safe != raw or len(safe) > 80
    return f"{safe[:80]}-{_params_hash(params)}" if lossy else safe


def _params_hash(params: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(dict(params), sort_keys=True, default=str).encode()).hexdigest()[:8]


def outputs_metrics(trial_dir: Path) -> Dict[str, float]:
    """The metrics a finished trial wrote, under the names its W&B run logs them."""
    from ser_lightning.tracking import cv_metrics, trial_metrics

    summary = read_json(Path(trial_dir) / SUMMARY)
    if isinstance(summary, dict):
        return cv_metrics(summary)
    results = read_json(Path(trial_dir) / RESULTS)
    if isinstance(results, dict):
        return trial_metrics(results)
    return {}


def std_key(metric: str) -> Optional[str]:
    return metric[: -len("_mean")] + "_std" if metric.endswith("_mean") else None


def fmt_metric(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f} ± {std:.4f}" if std is not None else f"{value:.4f}"


def log_tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    """The end of a trial log; from the last traceback on when there is one."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    rows = text.splitlines()
    start = max((i for i, r in enumerate(rows) if r.startswith("Traceback (most recent call last)")), default=None)
    if start is not None and len(rows) - start <= 4 * lines:
        return "\n".join(rows[start:])
    return "\n".join(rows[-lines:])


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def signal_trial(proc: Any, signum: int) -> None:
    """Signal a trial's process group (a trial runs in a session of its own: its folds' worker processes too)."""
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
