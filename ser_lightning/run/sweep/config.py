"""The sweep YAML: load it, validate it (the `sweeps` package's JSON schema + what ser needs), what it varies."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping

from ser_lightning.config import ConfigError
from ser_lightning.run.sweep.agent import DEFAULT_COMMAND
from ser_lightning.run.sweep.hyperband import validate_early_terminate

SERVER_KEYS = ("run_cap",)  # W&B server sweep keys missing from the sweeps 0.2 JSON schema


def load_sweep_config(path: Path | str) -> Dict[str, Any]:
    """Read and validate a W&B sweep YAML (the `sweeps` package's JSON schema + what ser needs)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    config = yaml.safe_load(path.read_text())
    problems = validate_sweep_config(config)
    if problems:
        raise ConfigError(f"{path}: invalid sweep config:\n  " + "\n  ".join(problems))
    return config


def validate_sweep_config(config: Any) -> List[str]:
    """Problems of a sweep config (empty list = valid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sweeps import schema_violations_from_proposed_config

    if not isinstance(config, dict):
        return ["a sweep config is a mapping (method, metric, parameters, command, ...)"]
    # keys the W&B server knows but sweeps 0.2's schema predates are checked here instead; early_terminate too
    # (the schema's message for it is "... is not valid under any of the given schemas"; ours is stricter)
    try:
        skip = SERVER_KEYS + ("early_terminate",)
        problems = list(schema_violations_from_proposed_config({k: v for k, v in config.items() if k not in skip}))
    except ValueError as e:
        return [str(e)]
    if "early_terminate" in config:
        problems += validate_early_terminate(config["early_terminate"])
    cap = config.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        problems.append(f"run_cap must be a positive integer (got {cap!r})")
    if config.get("method") not in ("grid", "random", "bayes"):
        problems.append(f"method must be grid, random or bayes (got {config.get('method')!r})")
    if not isinstance(config.get("metric"), dict) or "name" not in config["metric"]:
        problems.append("a metric (name, goal) is needed to rank trials")
    if not isinstance(config.get("parameters"), dict) or not config["parameters"]:
        problems.append("parameters must list at least one parameter")
    command = [str(c) for c in (config.get("command") or DEFAULT_COMMAND)]
    if not {"${args_no_hyphens}", "${args}"} & set(command):
        problems.append("command must pass the parameters with ${args_no_hyphens} (ser takes key=value overrides)")
    if "${args_json_file}" in command:
        problems.append("${args_json_file} is not supported by ser (use ${args_no_hyphens})")
    if "${program}" in command and not config.get("program"):
        problems.append("command uses ${program} but the config has no program")
    return problems


def _py(value: Any) -> Any:
    """numpy scalars / arrays from the sweeps package -> plain Python (OmegaConf rejects numpy types)."""
    if isinstance(value, dict):
        return {k: _py(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_py(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def varying_keys(config: Mapping[str, Any]) -> List[str]:
    """Parameters the sweep varies (everything but `value:` constants), sorted."""
    return sorted(k for k, spec in config["parameters"].items() if not (isinstance(spec, dict) and "value" in spec))
