"""models/adapt.py (issue #16, the building block): the encoder's top blocks fed from a lower layer's output
reproduce the frozen encoder exactly while the adapters are at their initial values, for every input policy; the
gradients reach exactly the parameters that should train; LoRA touches only encoder block projections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ser_lightning.features.encoder import load_encoder
from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend
from ser_lightning.models.adapt import AdaptedTop, LoraSettings, adapted_blocks


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("random:tiny", dtype="fp32", seed=3)  # 4 blocks, width 384


def _inputs(encoder, policy: str, seconds=(0.7, 1.9, 1.2)):
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]
    return LogMelFrontend(encoder.num_mel_bins)(waves, LengthPolicy.parse(policy))


def _frozen(encoder, feats, layers):
    """The frozen encoder's outputs of `layers` at every frame, and the key mask it used (its input frames)."""
    x, frames, content = feats
    out = encoder(x, frames, content, layers)
    t = next(iter(out.layers.values())).shape[1]
    key_valid = torch.arange(t)[None, :] < ((frames + 1) // 2)[:, None]
    return out.layers, key_valid


@pytest.mark.parametrize("policy", ["clip", "10", "30"])
@pytest.mark.parametrize("mode", ["top", "lora"])
def test_adapted_top_reproduces_the_frozen_layers(encoder, policy, mode):
    read = [3, 4]
    layers, key_valid = _frozen(encoder, _inputs(encoder, policy), [1, 2, 3, 4])
    for k in (1, 2, 3):
        blocks = adapted_blocks(read, k, encoder.num_layers)
        first = blocks[0]
        top = AdaptedTop(encoder, blocks, mode, LoraSettings(rank=4)).train()  # train mode: no dropout in Whisper blocks
        got = top(layers[first - 1], key_valid, read)
        assert sorted(got) == [r for r in read if r >= first]
        for layer, value in got.items():
            # every frame the encoder attended to, padding frames of the 10 s / 30 s policies included
            torch.testing.assert_close(value[key_valid], layers[layer][key_valid], rtol=1e-5, atol=1e-5)


def test_a_clip_alone_and_in_a_padded_batch_gives_the_same_adapted_output(encoder):
    top = AdaptedTop(encoder, [3, 4], "lora", LoraSettings(rank=4)).eval()  # eval: LoRA dropout off
    for p in top.parameters():  # adapters away from their initial values: the check is not trivially true
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    batch, key_valid = _frozen(encoder, _inputs(encoder, "clip"), [2])
    alone, key_alone = _frozen(encoder, _inputs(encoder, "clip", seconds=(0.7,)), [2])
    n = int(key_alone.sum())
    torch.testing.assert_close(top(batch[2], key_valid, [4])[4][0, :n], top(alone[2], key_alone, [4])[4][0, :n],
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def _grads(top, encoder):
    layers, key_valid = _frozen(encoder, _inputs(encoder, "clip"), [2])
    out = top(layers[2], key_valid, [3, 4])
    (out[3].square().mean() + out[4].square().mean()).backward()
    return {n for n, p in top.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_lora_gradients_reach_exactly_the_adapters_of_the_target_projections(encoder):
    frozen_before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    top = AdaptedTop(encoder, [3, 4], "lora", LoraSettings(rank=4))
    lora_b = [p for n, p in top.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().sum()) == 0 for p in lora_b)  # B = 0: the adapted path starts as the encoder
    for p in top.parameters():
        if p.requires_grad and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.01)  # so that lora_A gets a gradient too
    trainable = {n for n, p in top.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{b}.self_attn.{proj}.lora_{ab}.default.weight" for b in (0, 1)
                         for proj in ("q_proj", "k_proj", "v_proj", "out_proj") for ab in "AB"}  # fmt: skip
    assert _grads(top, encoder) == trainable
    assert not any(p.requires_grad for p in encoder.parameters())
    for n, p in encoder.named_parameters():
        assert torch.equal(p, frozen_before[n])
    # fc1 / fc2 selectable; the module peft sees holds encoder blocks only (no decoder name can match)
    with_ffn = AdaptedTop(encoder, [4], "lora", LoraSettings(rank=2, targets=["fc1", "fc2"]))
    names = {n.rsplit(".lora_", 1)[0] for n, p in with_ffn.named_parameters() if p.requires_grad}
    assert names == {"blocks.0.fc1", "blocks.0.fc2"}
    assert with_ffn.trainable_parameters() == 2 * (2 * 384 + 2 * 1536)


def test_top_gradients_reach_every_adapted_block_parameter_and_nothing_else(encoder):
    top = AdaptedTop(encoder, [3, 4], "top")
    assert {n for n, p in top.named_parameters() if p.requires_grad} == {f"blocks.{n}" for n, _ in top.blocks.named_parameters()}
    got = _grads(top, encoder)
    assert got == {f"blocks.{n}" for n, _ in top.blocks.named_parameters()}
    assert not any(n.startswith("final_norm") for n in got)  # the final LayerNorm stays the encoder's


def test_gradient_checkpointing_gives_the_same_gradients(encoder):
    plain = AdaptedTop(encoder, [3, 4], "top").train()
    ckpt = AdaptedTop(encoder, [3, 4], "top", grad_checkpointing=True).train()
    _grads(plain, encoder)
    _grads(ckpt, encoder)
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_impossible_settings_say_what_is_allowed():
    assert adapted_blocks([3, 5], 2, 6) == [4, 5]
    with pytest.raises(ValueError, match=r"adapt_blocks=5: the deepest layer read is 5, so 1..4 blocks"):
        adapted_blocks([5], 5, 6)
    with pytest.raises(ValueError, match=r"adapt_blocks=0"):
        adapted_blocks([5], 0, 6)
    with pytest.raises(ValueError, match=r"lora.rank=0: the adapter rank must be >= 1"):
        LoraSettings(rank=0).check()
    with pytest.raises(ValueError, match=r"unknown \['q'\]; choose among q_proj, k_proj, v_proj, out_proj, fc1, fc2"):
        LoraSettings(targets=["q"]).check()


# ------------------------------------------------------------------------------------------ through ser train
def _train_cfg(tmp_path, ravdess_root, *extra):
    from ser_lightning.config import compose

    return compose([
        "data=ravdess", f"data.root={ravdess_root}", "data.fold=2", "data.limit_per_class=10", "model.encoder=random:test",
        "model.layer=2", "model.pooling=mean", "model.proj_dim=32", "model.input_seconds=clip", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "wandb.mode=disabled", "cache.dtype=fp32", f"cache.dir={tmp_path / 'cache'}",
        f"data.table_cache_dir={tmp_path / 'tables'}", *extra,
    ])  # fmt: skip


@pytest.mark.parametrize("mode,policy,cma", [("lora", "clip", False), ("top", "clip", False), ("lora", "10", False),
                                              ("top", "clip+1", False), ("lora", "10", True)])  # fmt: skip
def test_adapted_training_from_the_cache_exports_and_predicts_the_same_scores(tmp_path, ravdess_root, mode, policy, cma):
    """model.adapt: the cache holds layer 1 (block 2's input), block 2 is adapted, the head reads layer 2; the encoder
    never changes; the export holds the adapted parameters and `ser predict` on raw audio (frozen bottom + adapted
    top) gives the scores evaluation gave. Under 10 s / clip+T inputs the cache keeps the padding frames (its own key)
    and predict keeps them too."""
    import json

    from safetensors.torch import load_file

    from ser_lightning.run.build import build_training
    from ser_lightning.run.predict import predict_files
    from ser_lightning.run.train import train

    # cma: the query reads layer 2 (adapted), the key/value stream layer 1 (fed from the cache as it is)
    extra = ["model.fusion=cma", "model.cma.layers=[1]", "model.cma.heads=2"] if cma else []
    cfg = _train_cfg(tmp_path, ravdess_root, f"model.adapt={mode}", "model.adapt_blocks=1", "optim.encoder_lr=1e-3",
                     f"model.input_seconds={policy}", f"output_dir={tmp_path / 'run'}", *extra)  # fmt: skip
    encoder, dm, module = build_training(cfg)
    # fed layer 1 from the cache, the head reads layer 2 (and with cma layer 1 as its key/value stream)
    assert dm.features.layers == [1] and module.read_layers == ([2, 1] if cma else [2])
    assert dm.features.input_frames == (policy != "clip") == dm.open_cache().keeps_input_frames
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    results = train(cfg, encoder=encoder)
    assert results["adapt"] == {"mode": mode, "blocks": [2]} and results["layers"] == module.read_layers  # what the head read
    assert results["trainable_parameters"]["encoder"] > 0
    assert all(torch.equal(p, before[n]) for n, p in encoder.named_parameters())  # the frozen encoder is untouched
    export = tmp_path / "run" / "export"
    meta = json.loads((export / "head.json").read_text())
    assert meta["adapt"]["blocks"] == [2] and meta["encoder"]["layers"] == [1]
    state = load_file(str(export / "adapter.safetensors"))
    assert sum(t.numel() for t in state.values()) == results["trainable_parameters"]["encoder"]
    if mode == "lora":
        assert all("lora_" in k for k in state) and any(t.abs().sum() > 0 for k, t in state.items() if "lora_B" in k)
    stored = json.loads((tmp_path / "run" / "test_predictions.json").read_text())
    records = predict_files(tmp_path / "run", stored["path"][:6])
    for record, probs in zip(records, stored["probabilities"][:6]):
        assert record["error"] is None
        assert [record["probs"][c] for c in stored["class_names"]] == pytest.approx(probs, abs=1e-4)


@pytest.mark.parametrize("policy", ["clip", "10"])
def test_adapted_training_live_equals_from_the_cache(tmp_path, ravdess_root, policy):
    """The cache serves exactly what the live encoder feeds the adapted block (fp32 cache; under 10 s inputs the
    padding frames too): same metrics."""
    from ser_lightning.run.train import train

    common = ["model.adapt=lora", "model.adapt_blocks=1", "trainer.deterministic=true", f"model.input_seconds={policy}"]
    cached = train(_train_cfg(tmp_path, ravdess_root, *common, f"output_dir={tmp_path / 'cached'}"))
    live = train(_train_cfg(tmp_path, ravdess_root, *common, "cache.enabled=false", f"output_dir={tmp_path / 'live'}"))
    assert live["test/ua"] == pytest.approx(cached["test/ua"], abs=1e-6)
    assert live["confusion_matrix"] == cached["confusion_matrix"]


def test_optimizer_has_a_group_per_part_with_its_own_learning_rate(tmp_path, ravdess_root):
    from ser_lightning.run.build import build_training

    cfg = _train_cfg(tmp_path, ravdess_root, "model.adapt=top", "model.adapt_blocks=1", "optim.lr=2e-3",
                     "optim.encoder_lr=3e-5", "optim.encoder_weight_decay=0.0", f"output_dir={tmp_path / 'run'}")  # fmt: skip
    _, _, module = build_training(cfg)

    class _Trainer:
        estimated_stepping_batches = 10

    module.__dict__["_trainer"] = _Trainer()
    opt = module.configure_optimizers()["optimizer"]
    head, enc = opt.param_groups
    # LambdaLR has applied the first warmup factor (1/warmup) to each group's own peak learning rate
    assert (head["name"], enc["name"], enc["weight_decay"]) == ("head", "encoder", 0.0)
    assert head["initial_lr"] == pytest.approx(2e-3) and enc["initial_lr"] == pytest.approx(3e-5)
    assert enc["lr"] / enc["initial_lr"] == pytest.approx(head["lr"] / head["initial_lr"])
    assert {id(p) for p in enc["params"]} == {id(p) for p in module.adapter.parameters() if p.requires_grad}
    assert {id(p) for p in head["params"]} == {id(p) for p in module.head.parameters() if p.requires_grad}


def test_adaptation_settings_are_validated(tmp_path):
    from ser_lightning.config import ConfigError, compose

    base = ["model.encoder=random:test", "model.input_seconds=clip"]
    with pytest.raises(ConfigError, match="model.adapt='deep' is not one of: frozen, top, lora"):
        compose(base + ["model.adapt=deep"])
    with pytest.raises(ConfigError, match="lora.rank=0"):
        compose(base + ["model.adapt=lora", "model.lora.rank=0"])
    with pytest.raises(ConfigError, match="model.feature_norm=none / standardize, not 'speaker'"):
        compose(base + ["model.adapt=top", "model.feature_norm=speaker"])
    compose(["model.encoder=random:test", "model.adapt=lora", "model.input_seconds=30"])  # every input policy works
    from ser_lightning.features.encoder import load_encoder
    from ser_lightning.features.pipeline import adaptation

    enc = load_encoder("random:test")
    cfg = compose(base + ["model.adapt=top", "model.adapt_blocks=2", "model.layer=2"])
    with pytest.raises(ValueError, match=r"adapt_blocks=2: the deepest layer read is 2, so 1..1 blocks"):
        adaptation(cfg.model, enc)


def test_bf16_autocast_and_checkpointing_train_the_adapted_blocks_on_the_cpu(tmp_path, ravdess_root):
    """The GPU path as far as the CPU takes it: bf16-mixed autocast (fp32 master weights) with activation
    checkpointing of the adapted blocks trains and moves the adapters; GPU speed and memory are unmeasured."""
    from ser_lightning.run.build import build_training
    from ser_lightning.run.fold import make_trainer

    cfg = _train_cfg(tmp_path, ravdess_root, "model.adapt=lora", "model.adapt_blocks=1", "model.grad_checkpointing=true",
                     "trainer.precision=bf16-mixed", "trainer.max_epochs=1", "optim.encoder_lr=1e-2",
                     f"output_dir={tmp_path / 'run'}")  # fmt: skip
    _, dm, module = build_training(cfg)
    assert module.adapter.grad_checkpointing
    before = {n: p.detach().clone() for n, p in module.adapter.named_parameters() if p.requires_grad}
    trainer = make_trainer(cfg, tmp_path / "run", False, [])
    trainer.fit(module, datamodule=dm)
    after = dict(module.adapter.named_parameters())
    assert all(after[n].dtype == torch.float32 for n in before)  # master weights stay fp32 under autocast
    assert any(not torch.equal(after[n].detach(), before[n]) for n in before if "lora_B" in n)


def test_an_adapted_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, tmp_path_factory):
    """SIGKILL in epoch 2, rerun: the checkpoint holds the adapters (module parameters), so the resumed run ends
    with the uninterrupted run's metrics and adapter weights."""
    import json
    import signal
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    import fault_helpers as fh

    from ser_lightning.config import compose
    from ser_lightning.run.train import train

    adapt = ["model.adapt=lora", "model.adapt_blocks=1", "model.layer=2", "optim.encoder_lr=1e-3"]
    work = fh.shared_work(tmp_path_factory)
    want = train(compose(fh.tiny_overrides(tmp_path / "whole", work, *adapt)))
    out = tmp_path / "killed"
    overrides = fh.tiny_overrides(out, work, *adapt)
    batches = -(-want["n_train"] // fh.BATCH)
    proc = fh.run_ser(["train", *overrides], fault=f"train_batch:{batches + 2}", action="kill")
    assert proc.returncode == -signal.SIGKILL, fh.describe(proc)
    got = train(compose(overrides))
    assert fh.metrics(got) == fh.metrics(want)
    a, b = fh.state_dict(out / "checkpoints" / "last.ckpt"), fh.state_dict(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    lora = [k for k in a if "lora_" in k]
    assert lora and all(torch.equal(a[k], b[k]) for k in lora)
    assert json.loads((out / "results.json").read_text())["adapt"]["blocks"] == [2]


def test_the_adapted_blocks_follow_train_and_eval_mode(encoder):
    """Copied from an encoder held in eval mode, the blocks must still train in train mode (LoRA dropout on), and
    Lightning keeps submodules' modes as it finds them."""
    top = AdaptedTop(encoder, [3, 4], "lora", LoraSettings(rank=4))
    assert all(m.training for m in top.modules())
    top.eval()
    assert not any(m.training for m in top.modules())
    assert not any(m.training for m in encoder.modules())  # the frozen encoder itself never leaves eval


def test_adaptation_with_an_ensemble_and_speed_perturbation(tmp_path, ravdess_root):
    """model.adapt with ensemble.members=2 (each member its own adapters, the ensemble's export holds both) and with
    data.speed_perturb (the fed layer's speed caches serve the adapted blocks): both train, and `ser predict` on the
    ensemble's export reproduces its evaluation scores."""
    import json

    from ser_lightning.run.predict import predict_files
    from ser_lightning.run.train import train

    cfg = _train_cfg(tmp_path, ravdess_root, "model.adapt=lora", "model.adapt_blocks=1", "ensemble.members=2",
                     "data.speed_perturb=[0.9,1.1]", "trainer.max_epochs=1", f"output_dir={tmp_path / 'run'}")  # fmt: skip
    results = train(cfg)
    export = tmp_path / "run" / "export"
    assert results["ensemble"]["members"] == 2
    for m in (0, 1):
        assert (export / f"member_{m}" / "adapter.safetensors").is_file()
        member = json.loads((tmp_path / "run" / f"member_{m}" / "results.json").read_text())
        assert member["adapt"] == {"mode": "lora", "blocks": [2]} and member["trainable_parameters"]["encoder"] > 0
    caches = {p.name for p in (tmp_path / "cache").iterdir()}
    assert len(caches) >= 3  # the clips' own features and one cache per speed factor
    stored = json.loads((tmp_path / "run" / "test_predictions.json").read_text())
    records = predict_files(tmp_path / "run", stored["path"][:4])
    for record, probs in zip(records, stored["probabilities"][:4]):
        assert [record["probs"][c] for c in stored["class_names"]] == pytest.approx(probs, abs=1e-4)


@pytest.mark.parametrize("policy", ["10", "clip+1"])
def test_under_padding_inputs_the_cached_adapted_path_gives_the_frozen_read_layer(tmp_path, ravdess_root, policy):
    """Adapters at their initial values: the module's head input from the cache (layer 1 at every input frame,
    block 2 adapted, attending to the padding frames like the encoder) equals the frozen encoder's layer 2 on the
    clips' own frames; without the padding frames (a clip-length cache) it would not."""
    from ser_lightning.run.build import build_training

    cfg = _train_cfg(tmp_path, ravdess_root, "model.adapt=lora", "model.adapt_blocks=1", f"model.input_seconds={policy}",
                     f"output_dir={tmp_path / 'run'}")  # fmt: skip
    encoder, dm, module = build_training(cfg)
    dm.prepare_data()
    batch = next(iter(dm.val_dataloader()))
    assert bool((batch["input_mask"].sum(1) > batch["mask"].sum(1)).all())  # padding frames were kept
    module.eval()
    with torch.no_grad():
        got, mask = module._features(batch)
    from ser_lightning.features.extract import encode_waves, load_clip

    waves = [load_clip(dm.splits["val"][i]["path"], 16000, 30.0, "center") for i in batch["index"].tolist()]
    frontend = LogMelFrontend(encoder.num_mel_bins)
    frozen = encode_waves(encoder, frontend, waves, LengthPolicy.parse(policy), [2])[2]  # the clips' own frames
    own_length = encode_waves(encoder, frontend, waves, LengthPolicy.parse("clip"), [2])[2]
    for b, expected in enumerate(frozen):
        n = expected.shape[0]
        assert int(mask[b].sum()) == n
        torch.testing.assert_close(got[b, :n], torch.from_numpy(expected), rtol=1e-4, atol=1e-4)
        assert not np.allclose(expected, own_length[b], atol=1e-3)  # the padding frames change layer 2: not trivial
