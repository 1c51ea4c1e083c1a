"""Typed configuration: groups, overrides, clear errors with the valid choices, CLI exit codes."""

import subprocess
import sys

import pytest

from ser_lightning.config import ConfigError, available, compose


def test_groups_and_overrides():
    cfg = compose(["data=ravdess", "model.layer=4", "model.pooling=attentive", "--optim.lr=0.002"])
    assert cfg.data.name == "ravdess" and cfg.model.layer == 4 and cfg.model.pooling == "attentive"
    assert cfg.optim.lr == 0.002  # `--key=value` (wandb ${args}) works like key=value (${args_no_hyphens})
    assert cfg.trainer.max_epochs == 30 and cfg.data.batch_size == 16 and cfg.optim.warmup_ratio == 0.1


def test_wrong_type_is_a_clear_error():
    with pytest.raises(ConfigError, match="model.layer"):
        compose(["model.layer=six"])


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.poolin'.*pooling"):
        compose(["model.poolin=qkv"])


def test_unknown_group_lists_available():
    with pytest.raises(ConfigError, match=r"unknown data 'ravdes'; available: .*ravdess"):
        compose(["data=ravdes"])
    assert "ravdess" in available("data")


def test_unknown_choice_lists_choices():
    with pytest.raises(ConfigError, match="mean, qkv"):
        compose(["model.pooling=max"])
    with pytest.raises(ConfigError, match="'clip', '30' or a number"):
        compose(["model.input_seconds=long"])
    with pytest.raises(ConfigError, match=r"\(0, 30\]"):
        compose(["model.input_seconds=45"])


def test_cli_exit_codes_and_messages():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "ser_lightning.cli", *args], capture_output=True, text=True)

    r = run("train", "data=nope")
    assert r.returncode == 2 and "available:" in r.stderr
    r = run("train", "data=ravdess")  # model.encoder is mandatory
    assert r.returncode == 2 and "model.encoder" in r.stderr
    r = run("config", "data=ravdess", "model.encoder=random:test", "model.layer=3")
    assert r.returncode == 0 and "layer: 3" in r.stdout


def test_config_fields_lists_every_field_with_help(capsys):
    """`ser config --fields` (README) prints every schema field, nested sections included, with its help."""
    from dataclasses import fields as dc_fields

    from ser_lightning.cli import main
    from ser_lightning.config import SERConfig

    assert main(["config", "--fields"]) == 0
    out = capsys.readouterr().out
    def check(section_cls, prefix):
        for f in dc_fields(section_cls):
            if hasattr(f.default_factory, "__dataclass_fields__"):  # a nested section (model.cma): its help, then its fields
                line = next((l for l in out.splitlines() if l.strip().startswith(f"{prefix}{f.name}: ")), None)
                assert line is not None and f.metadata["help"] in line, f"{prefix}{f.name} missing"
                check(f.default_factory, f"{prefix}{f.name}.")
                continue
            line = next((l for l in out.splitlines() if l.strip().startswith(f"{prefix}{f.name} = ")), None)
            assert line is not None, f"{prefix}{f.name} missing"
            assert f.metadata["help"] in line

    for section in dc_fields(SERConfig):
        if hasattr(section.default_factory, "__dataclass_fields__"):
            check(section.default_factory, f"{section.name}.")
    assert "model.cma.heads = 4:" in out
    assert "ensemble.members = 1:" in out and "model.context = 'none':" in out


def test_an_experiment_can_extend_another_one_as_a_one_knob_delta(tmp_path):
    """`defaults: {experiment: BASE}`: BASE's settings, then the preset's; groups picked by either are kept; CLI
    overrides still win; a circle of presets is an error naming it."""
    import shutil

    from ser_lightning.config import ConfigError, compose, config_dir

    point = compose(["experiment=compute_tiny_en"])
    base = compose(["experiment=compute_base", "model.encoder=openai/whisper-tiny.en", "model.layer=3"])
    for section in ("data", "model", "optim", "trainer", "ensemble"):
        assert point[section] == base[section], section
    assert point.experiment == "compute_tiny_en" and point.data.name == "ravdess"
    assert compose(["experiment=compute_tiny_en", "model.layer=2"]).model.layer == 2
    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    (root / "experiment" / "a.yaml").write_text("defaults:\n  experiment: b\n")
    (root / "experiment" / "b.yaml").write_text("defaults:\n  experiment: a\n")
    with pytest.raises(ConfigError, match="in a circle: a -> b -> a"):
        compose(["experiment=a"], root=root)
