"""Every experiment preset and every sweep YAML's parameter combinations compose through the real `compose`.

The overrides a sweep trial gets are rendered by the code `ser sweep` and `wandb agent` use
(ser_lightning.run.sweep: agent_args -> agent_command / local_argv -> ser_overrides), so a list such as
`model.layers: [3, 4, 5, 6]` reaches `compose` exactly as a trial would pass it (`model.layers=[3, 4, 5, 6]`).
Grid / `values` parameters contribute every value; distributions contribute their two ends (min, max).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ser_lightning.config import GROUPS, available, compose
from ser_lightning.run.sweep.agent import agent_args, agent_command, local_argv, ser_overrides
from ser_lightning.run.sweep.config import load_sweep_config, varying_keys

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiment"
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
# mandatory values (`???` in the schema): a dummy is supplied only when the YAML under test does not set them
REQUIRED = {"data.root": "/nonexistent/corpus", "model.encoder": "random:test"}
TRIAL_DIR = Path("/nonexistent/sweep/trial-0")


def _flatten(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _dummies(set_keys):
    return [f"{k}={v}" for k, v in REQUIRED.items() if k not in set_keys]


# ------------------------------------------------------------------------------------------------- presets
PRESETS = available("experiment")


def test_there_are_presets_and_sweeps():
    assert PRESETS and SWEEPS
    assert sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")) == PRESETS


@pytest.mark.parametrize("name", PRESETS, ids=[f"experiment/{n}.yaml" for n in PRESETS])
def test_preset_composes_to_its_own_values(name):
    raw = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text()) or {}
    defaults = raw.pop("defaults", None) or {}
    expected = dict(_flatten(raw))
    cfg = compose([f"experiment={name}"] + _dummies(expected))
    assert cfg.experiment == name
    for group, choice in dict(defaults).items():
        assert group in GROUPS, f"{name}.yaml: defaults names an unknown group {group!r}"
        assert choice in available(group), f"{name}.yaml: defaults: {group}: {choice!r} is not in configs/{group}/"
    wrong = {}
    for key, value in expected.items():
        composed = _plain(OmegaConf.select(cfg, key, default="<absent>"))
        if composed != value:
            wrong[key] = (composed, value)
    assert not wrong, f"experiment/{name}.yaml: composed != preset: " + "; ".join(
        f"{k} = {c!r} (preset: {v!r})" for k, (c, v) in wrong.items()
    )


# ------------------------------------------------------------------------------------------------- sweeps
def _axis(key, spec):
    """The values a parameter contributes: its `value`, every one of its `values`, or a distribution's ends."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    assert "min" in spec and "max" in spec, f"{key}: a distribution without min/max: {spec}"
    lo, hi = spec["min"], spec["max"]
    if spec.get("distribution", "").startswith("int_"):
        lo, hi = int(lo), int(hi)
    return [lo, hi]


def _combinations(config):
    keys = list(config["parameters"])
    axes = [_axis(k, config["parameters"][k]) for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def _case_id(path, config, index, params):
    varying = varying_keys(config)
    label = ",".join(f"{k}={params[k]}".replace(" ", "") for k in varying)
    return f"{path.name}#{index}:{label}"


CASES, IDS = [], []
for _path in SWEEPS:
    _config = load_sweep_config(_path)  # the real loader: a YAML the schema rejects fails collection, naming it
    for _i, _params in enumerate(_combinations(_config)):
        CASES.append((_path, _params))
        IDS.append(_case_id(_path, _config, _i, _params))


def test_sweep_cases_cover_every_sweep():
    assert {p for p, _ in CASES} == set(SWEEPS)


def _check(cfg, params, fixed, where):
    wrong = {}
    for key, value in {**fixed, **params}.items():
        if key in GROUPS and key != "experiment":
            continue  # a group selection (data=ravdess) is a file, not a value
        composed = _plain(OmegaConf.select(cfg, key, default="<absent>"))
        if composed != value:
            wrong[key] = (composed, value)
    assert not wrong, f"{where}: " + "; ".join(f"{k} = {c!r} (sweep: {v!r})" for k, (c, v) in wrong.items())


@pytest.mark.parametrize("path, params", CASES, ids=IDS)
def test_sweep_combination_composes(path, params):
    config = load_sweep_config(path)
    where = f"{path.name} {params}"
    rendered = agent_args(params)["args_no_hyphens"]
    assert rendered == [f"{k}={v}" for k, v in params.items()]

    # what `wandb agent` would run: ${args_no_hyphens} expanded in place, the YAML's fixed args kept
    agent = agent_command(config, params, env={})
    agent_overrides = ser_overrides(agent)
    assert agent_overrides is not None, f"{path.name}: its command does not run ser: {agent}"
    assert all(r in agent_overrides for r in rendered), f"{where}: {rendered} not all in {agent_overrides}"
    fixed = dict(o.split("=", 1) for o in agent_overrides if o not in rendered and "=" in o)
    fixed_values = {k: yaml.safe_load(v) for k, v in fixed.items() if k != "output_dir"}
    set_keys = set(params) | set(fixed)

    # what `ser sweep` runs: the same command with this Python, output_dir replaced by the trial folder
    local = local_argv(config, params, TRIAL_DIR, _dummies(set_keys))
    overrides = ser_overrides(local)
    assert overrides is not None, f"{path.name}: the local command does not run ser: {local}"
    assert [o for o in overrides if o.startswith("output_dir=")] == [f"output_dir={TRIAL_DIR}"]
    cfg = compose(overrides)
    assert cfg.output_dir == str(TRIAL_DIR)
    _check(cfg, params, fixed_values, f"{where} (ser sweep)")

    # the agent's form composes too, and its output_dir (interpolating the parameters) resolves
    cfg = compose(agent_overrides + _dummies(set_keys))
    _check(cfg, params, fixed_values, f"{where} (wandb agent)")
    out = OmegaConf.to_container(cfg, resolve=True)["output_dir"]
    assert "${" not in out, f"{where}: output_dir {out!r} left unresolved"
