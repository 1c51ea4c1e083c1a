"""The one builder (features/pipeline.py, run/build.py): model.compile really compiles what runs, input policies
are validated by the parser the encoder uses, one device rule for every job, and the cache key holds the
encoder's compute dtype. Also the head's HeadConfig round trip through head.json."""

import json

import numpy as np
import pytest
from omegaconf import OmegaConf
import torch

from ser_lightning.config import compose
from ser_lightning.features.encoder import load_encoder
from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend
from ser_lightning.features.pipeline import (AudioSettings, encoder_device, feature_spec, load_config_encoder,
                                             open_feature_cache)  # fmt: skip


def _mels(encoder, seconds=(1.0, 2.5)):
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(int(16000 * s)) * 0.1).astype(np.float32) for s in seconds]
    return LogMelFrontend(encoder.num_mel_bins)(waves, LengthPolicy.parse("clip"))


def test_model_compile_runs_compiled_blocks_with_the_same_features():
    """model.compile=true: the masked forward calls the blocks one by one, so the blocks must be what is compiled;
    dynamo's frame counter shows compiled frames running, and the features equal the eager encoder's."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager = load_config_encoder(compose(["model.encoder=random:test", "trainer.accelerator=cpu"]))
    compiled = load_config_encoder(compose(["model.encoder=random:test", "trainer.accelerator=cpu", "model.compile=true"]))
    assert compiled.compiled and not eager.compiled
    feats, frames, content = _mels(eager)
    before = counters["frames"]["ok"]
    out_c = compiled(feats, frames, content, [1, 2])
    assert counters["frames"]["ok"] > before, "no compiled frame ran: model.compile had no effect"
    out_e = eager(feats, frames, content, [1, 2])
    for k in (1, 2):
        torch.testing.assert_close(out_c.layers[k], out_e.layers[k], rtol=1e-4, atol=1e-4)


def test_train_builds_a_compiled_encoder_when_asked(tmp_path):
    from ser_lightning.run.build import build_datamodule

    cfg = compose(["model.encoder=random:test", "trainer.accelerator=cpu", "model.compile=true", "data.root=/nowhere"])
    encoder, dm = build_datamodule(cfg)
    assert encoder.compiled and dm.encoder is encoder
    # an encoder handed in (ser cv shares one across folds) is compiled once, not wrapped again
    assert build_datamodule(cfg, encoder)[0] is encoder


def test_clip_tail_policy_is_accepted_and_reaches_the_feature_spec():
    cfg = compose(["model.encoder=random:test", "model.input_seconds=clip+2"])
    spec = feature_spec(cfg, load_encoder("random:test"))
    assert spec.policy == LengthPolicy(None, 2.0) and spec.policy.name == "clip+2s"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("accelerator, expected", [("cpu", "cpu"), ("auto", "cuda"), ("gpu", "cuda")])
def test_one_device_rule_for_every_job(monkeypatch, tmp_path, shemo_tree, accelerator, expected):
    """train, cv, cache and probe load the encoder through one rule that honours trainer.accelerator (cache and
    probe used to take CUDA whenever it existed)."""
    import ser_lightning.features.pipeline as pipeline
    from ser_lightning.run.cache import cache_command
    from ser_lightning.run.cv import run_cv
    from ser_lightning.run.probe import run_probe
    from ser_lightning.run.train import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = []

    def fake_load(source, device="cpu", dtype="auto", seed=0):
        seen.append(str(device))
        raise _Stop

    monkeypatch.setattr(pipeline, "load_encoder", fake_load)
    assert encoder_device(accelerator) == expected
    jobs = {"train": train, "cv": run_cv, "cache": cache_command, "probe": lambda c: run_probe(c, ["clip"])}
    for name, job in jobs.items():
        cfg = compose(["data=shemo", f"data.root={shemo_tree}", "model.encoder=random:test", f"trainer.accelerator={accelerator}",
                       f"output_dir={tmp_path / name}", f"data.table_cache_dir={tmp_path / 'tables'}",
                       f"cache.dir={tmp_path / 'features'}"])  # fmt: skip
        with pytest.raises(_Stop):
            job(cfg)
    assert seen == [expected] * len(jobs)


def test_cache_key_holds_the_encoder_compute_dtype(tmp_path):
    """A cache filled by a bf16 encoder (encoder_dtype=auto on a GPU) is never served to an fp32 run (the CPU)."""
    from ser_lightning.features.extract import fill_cache

    cfg = compose(["model.encoder=random:test", f"cache.dir={tmp_path / 'c'}", "model.input_seconds=clip"])
    fp32, bf16 = load_encoder("random:test", dtype="fp32"), load_encoder("random:test", dtype="bf16")
    assert fp32.fingerprint == bf16.fingerprint and (fp32.compute_dtype, bf16.compute_dtype) == ("fp32", "bf16")
    spec = feature_spec(cfg, fp32)
    a, b = open_feature_cache(spec, fp32, AudioSettings()), open_feature_cache(spec, bf16, AudioSettings())
    assert a.dir != b.dir and a.settings["compute_dtype"] == "fp32" and b.settings["compute_dtype"] == "bf16"
    import soundfile as sf

    path = tmp_path / "clip.wav"
    sf.write(path, (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32), 16000)
    fill_cache(a, fp32, {"h": str(path)}, {"h": 1.0}, spec.layers, spec.policy, progress=False)
    assert a.missing(["h"], spec.layers) == [] and b.missing(["h"], spec.layers) == ["h"]


def test_every_head_option_is_a_model_option():
    """HeadConfig is built from cfg.model by field name: every head field but the sizes must be settable there."""
    from dataclasses import fields

    from ser_lightning.config import ModelConfig
    from ser_lightning.models.head import HeadConfig

    sizes = {"input_dim", "num_classes", "num_layers", "num_kv_layers"}
    head_fields = {f.name for f in fields(HeadConfig)} - sizes
    from ser_lightning.config import CMAConfig

    # model.cma.<x> is the head's cma_<x>
    model_fields = {f.name for f in fields(ModelConfig)} | {f"cma_{f.name}" for f in fields(CMAConfig)}
    assert head_fields <= model_fields, head_fields - model_fields
    cfg = compose(["model.encoder=random:test", "model.pooling=attentive", "model.heads=3", "model.context=conv",
                   "model.cma.heads=2", "model.cma.query_fusion=weighted"])  # fmt: skip
    hc = HeadConfig.from_options(OmegaConf.to_container(cfg.model), input_dim=64, num_classes=5, num_layers=2)
    assert (hc.pooling, hc.heads, hc.context, hc.num_layers, hc.num_classes) == ("attentive", 3, "conv", 2, 5)
    assert (hc.cma_heads, hc.cma_query_fusion) == (2, "weighted")
    with pytest.raises(ValueError, match="pooling='max'.*mean"):
        HeadConfig(input_dim=8, num_classes=2, pooling="max")


def test_head_json_holds_the_head_config_and_older_exports_still_load(tmp_path):
    from safetensors.torch import save_file

    from ser_lightning.models.head import HeadConfig, SERHead
    from ser_lightning.run.artifact import CONFIG, FORMAT, WEIGHTS, load_head

    config = HeadConfig(input_dim=16, num_classes=3, pooling="qkv", proj_dim=8, heads=2, head_dim=4, context="conv")
    torch.manual_seed(0)
    head = SERHead(config).eval()
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / WEIGHTS))
    model = {k: v for k, v in config.to_dict().items() if k not in ("input_dim", "num_classes", "num_layers")}
    meta = {"format": FORMAT, "class_names": ["a", "b", "c"], "model": model,
            "encoder": {"output_dim": 16, "layers": [3]}, "data": {}}  # fmt: skip
    x, mask = torch.randn(2, 7, 16), torch.ones(2, 7, dtype=torch.bool)
    for with_head in (True, False):  # head.json of today, and of exports made before it held the HeadConfig
        (tmp_path / CONFIG).write_text(json.dumps({**meta, **({"head": config.to_dict()} if with_head else {})}))
        loaded, _ = load_head(tmp_path)
        assert loaded.config == config
        torch.testing.assert_close(loaded(x, mask), head(x, mask))


def test_run_identity_defaults_come_from_the_schema():
    """Fields marked later=True in the schema are left out of config_hash at their default (older runs keep
    their identity): the set the hand-kept list held before, plus the cross-layer attention fields added since."""
    from ser_lightning.run.rundir import identity_defaults

    assert identity_defaults() == {"ensemble": {"members": 1}, "data.subset_seed": None, "model.context": "none",
                                   "model.context_layers": 1, "data.speed_perturb": [], "model.cma": {"layers": None,
                                   "heads": 4, "query_fusion": "conv"}, "data.val_fraction": None,
                                   "data.allow_incomplete_val": False, "model.adapt": "frozen", "model.adapt_blocks": 2,
                                   "model.lora": {"rank": 16, "alpha": 32.0, "dropout": 0.05,
                                                  "targets": ["q_proj", "k_proj", "v_proj", "out_proj"]},
                                   "model.grad_checkpointing": False, "optim.encoder_lr": 5e-5,
                                   "optim.encoder_weight_decay": 0.01, "model.token_stride": 1,
                                   "model.token_pool": "skip", "model.encoder_stride_after": None}  # fmt: skip
