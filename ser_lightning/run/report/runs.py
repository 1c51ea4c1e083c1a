"""The runs a report is about: loading CV / single-fold / sweep folders, and the configuration keys that differ."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ser_lightning.run.rundir import CONFIG_YAML, PER_RUN_KEYS, RESULTS, SUMMARY, fold_dir, is_volatile
from ser_lightning.run.sweep.trials import STATE as SWEEP_STATE
from ser_lightning.utils.io import read_json


class ReportError(ValueError):
    pass


@dataclass
class Run:
    name: str
    path: Path
    kind: str  # cv | train
    summary: Dict[str, Any]
    folds: List[Dict[str, Any]]
    config: Dict[str, Any] = field(default_factory=dict)  # flattened config of the (first) fold
    params: Dict[str, Any] = field(default_factory=dict)  # sweep parameters, when the run is a sweep trial

    def value(self, key: str, default: Any = None) -> Any:
        """A configuration value as the run used it: its config.yaml first (overrides given after the sweep's
        parameters win there), then the sweep parameter (a run without config.yaml). `model.layer` of a run that
        fused `model.layers` is None: it was not used (the schema default -1 would read as "the last layer")."""
        if key == "model.layer" and self.value("model.layers"):
            return None
        if key in self.config:
            return self.config[key]
        return self.params.get(key, default)

    def fold_dir(self, result: Dict[str, Any]) -> Optional[Path]:
        """The folder a fold's results.json came from (a CV's fold_K, or the run itself)."""
        if self.kind == "train":
            return self.path
        from ser_lightning.run.rundir import fold_dir

        return fold_dir(self.path, result["fold"])

    def stat(self, key: str) -> Tuple[float, float]:
        s = self.summary.get(key) or {}
        return float(s.get("mean", float("nan"))), float(s.get("std", 0.0))

    @property
    def class_names(self) -> List[str]:
        return list(self.summary["class_names"])

    @property
    def layer(self) -> Optional[int]:
        layers = self.summary.get("layers") or []
        return int(layers[0]) if len(layers) == 1 else None


# ---------------------------------------------------------------------------------------------- loading
def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = d
    return out


def _config(folder: Path) -> Dict[str, Any]:
    import yaml

    try:
        return _flatten(yaml.safe_load((folder / CONFIG_YAML).read_text()) or {})
    except (OSError, yaml.YAMLError):
        return {}


def load_run(path: Path, name: Optional[str] = None, params: Optional[Dict[str, Any]] = None) -> Run:
    """A CV folder (summary.json) or a single-fold folder (results.json)."""
    path = Path(path)
    summary = read_json(path / SUMMARY)
    if isinstance(summary, dict):
        folds = [r for k in summary.get("folds", []) if isinstance(r := read_json(fold_dir(path, k) / RESULTS), dict)]
        cfg = _config(fold_dir(path, summary["folds"][0])) if summary.get("folds") else {}
        return Run(name or path.name, path, "cv", summary, folds, cfg, dict(params or {}))
    results = read_json(path / RESULTS)
    if isinstance(results, dict) and "test/ua" in results:
        from ser_lightning.run.cv import summarize

        return Run(name or path.name, path, "train", summarize([results]), [results], _config(path), dict(params or {}))
    raise ReportError(f"{path} holds no finished run (no summary.json or results.json)")


def collect(inputs: Sequence[Path]) -> Tuple[List[Run], List[Dict[str, Any]]]:
    """Runs (and failed sweep trials) found in the given folders."""
    runs: List[Run] = []
    failed: List[Dict[str, Any]] = []
    for folder in map(Path, inputs):
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder")
        state = read_json(folder / SWEEP_STATE)
        if isinstance(state, dict):
            for t in state.get("trials", []):
                if t.get("status") == "finished":
                    try:
                        runs.append(load_run(folder / t["name"], t["name"], t.get("params")))
                    except ReportError:
                        failed.append({**t, "status": "finished, outputs missing"})
                elif t.get("status") in ("failed", "running", "interrupted", "pending"):
                    failed.append(t)
            continue
        if (folder / SUMMARY).is_file() or (folder / RESULTS).is_file():
            runs.append(load_run(folder))
            continue
        children = [c for c in sorted(folder.iterdir()) if (c / SUMMARY).is_file() or (c / RESULTS).is_file()]
        if not children:
            raise ReportError(f"{folder}: no CV (summary.json), fold (results.json) or sweep (sweep_state.json) here")
        runs += [load_run(c) for c in children]
    if not runs:
        raise ReportError("no finished runs to report on")
    _unique_names(runs)
    return runs, failed


def _unique_names(runs: List[Run]) -> None:
    counts: Dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in runs:
        if counts[r.name] > 1:
            r.name = f"{r.path.parent.name}/{r.name}"


def schema_defaults() -> Dict[str, Any]:
    from omegaconf import OmegaConf

    from ser_lightning.config import SERConfig

    schema = OmegaConf.to_container(OmegaConf.structured(SERConfig), resolve=False, throw_on_missing=False)
    return _flatten(schema)


def never_differs(key: str) -> bool:
    """A configuration key that never makes two runs different: where / how a run is written, logged or cached
    (rundir.VOLATILE_KEYS), or what tells the runs of one configuration apart (rundir.PER_RUN_KEYS: its fold,
    the corpus' place on a machine)."""
    return is_volatile(key) or key in PER_RUN_KEYS


def differing_keys(runs: Sequence[Run]) -> List[str]:
    """Configuration keys whose value differs between runs (what the leaderboard shows)."""
    if len(runs) < 2:
        return []
    from ser_lightning.config import GROUPS

    # group selections (data=ravdess) are not config keys: what they set shows up as data.*, model.*, ...
    # (`experiment` is also a config key, so an experiment's name still shows when it differs)
    keys = sorted({k for r in runs for k in r.config} | {k for r in runs for k in r.params if k not in GROUPS})
    defaults = schema_defaults()
    out = []
    for k in keys:
        if never_differs(k):
            continue
        # a key missing from a run's config.yaml was added to the schema after that run: it ran with the default
        values = {repr(r.value(k, defaults.get(k))) for r in runs}
        if len(values) > 1:
            out.append(k)
    return out

