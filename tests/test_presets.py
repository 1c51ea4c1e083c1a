"""Every experiment preset and every sweep YAML's parameter combinations compose through the real `compose`
(the overrides a sweep trial gets are rendered by the same code `ser sweep` and `wandb agent` use)."""

import itertools
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ser_lightning.config import available, compose
from ser_lightning.run.sweep.agent import agent_command, ser_overrides
from ser_lightning.run.sweep.config import load_sweep_config

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
REQUIRED = {"data.root": "/nonexistent/corpus", "model.encoder": "random:test"}


def _flatten(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _with_required(overrides):
    given = {o.split("=", 1)[0] for o in overrides}
    return list(overrides) + [f"{k}={v}" for k, v in REQUIRED.items() if k not in given]


@pytest.mark.parametrize("name", available("experiment"))
def test_every_experiment_preset_composes_to_its_own_values(name):
    raw = yaml.safe_load((ROOT / "configs" / "experiment" / f"{name}.yaml").read_text())
    raw.pop("defaults", None)
    cfg = compose(_with_required([f"experiment={name}"]))
    assert cfg.experiment == name
    for key, value in _flatten(raw):
        composed = OmegaConf.select(cfg, key)
        composed = OmegaConf.to_container(composed) if OmegaConf.is_config(composed) else composed
        if key in REQUIRED and composed == REQUIRED[key]:
            continue  # a placeholder such as openai/whisper-base stays the preset's; only unset values get dummies
        assert composed == value, f"{name}: {key} = {composed!r}, the preset says {value!r}"


def _grid(parameters):
    """Every combination of `values` lists; a distribution contributes its two ends."""
    axes = []
    for key, spec in parameters.items():
        if "value" in spec:
            axes.append([(key, spec["value"])])
        elif "values" in spec:
            axes.append([(key, v) for v in spec["values"]])
        else:
            lo, hi = spec.get("min"), spec.get("max")
            cast = int if spec.get("distribution", "").startswith(("int", "q_")) and isinstance(lo, int) else (lambda v: v)
            axes.append([(key, cast(lo)), (key, cast(hi))])
    return [dict(combo) for combo in itertools.product(*axes)]


CASES = [(path, i, params) for path in SWEEPS for i, params in enumerate(_grid(load_sweep_config(path)["parameters"]))]


@pytest.mark.parametrize("path, index, params", CASES, ids=[f"{p.stem}-{i}" for p, i, _ in CASES])
def test_every_sweep_combination_composes(path, index, params):
    config = load_sweep_config(path)
    overrides = ser_overrides(agent_command(config, params, env={}))
    assert overrides is not None, f"{path.name}: its command does not run ser"
    overrides = [o for o in overrides if not o.startswith("output_dir=")]
    cfg = compose(_with_required(overrides))
    for key, value in params.items():
        if key in ("experiment", "data", "model", "trainer") and "." not in key:
            continue  # group selections
        composed = OmegaConf.select(cfg, key)
        composed = OmegaConf.to_container(composed) if OmegaConf.is_config(composed) else composed
        assert composed == value or str(composed) == str(value), f"{path.name} #{index}: {key} = {composed!r} != {value!r}"
