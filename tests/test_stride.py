"""Token resolution (issue #18): model.token_stride / token_pool at the head input or inside the encoder after block
model.encoder_stride_after. Skip and mean by hand (a clip's last partial group included), padding invariance at both
places, stride 1 = identity, the encoder's layers below / above the stride point, the cache key and fingerprint, the
adapted path fed from a strided cache, and export -> `ser predict` reproducing evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ser_lightning.config import ConfigError, compose
from ser_lightning.features.encoder import load_encoder
from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend
from ser_lightning.models.head import HeadConfig, SERHead
from ser_lightning.models.stride import TokenStride, strided_length


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("random:tiny", dtype="fp32", seed=3)  # 4 blocks, width 384


SECONDS = (0.7, 1.9, 1.23)


def _inputs(encoder, policy: str, clips=(0, 1, 2)):
    """Encoder inputs of some of three noise clips (0.7, 1.9 and 1.23 s: odd frame counts, partial last groups)."""
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in SECONDS]
    return LogMelFrontend(encoder.num_mel_bins)([waves[i] for i in clips], LengthPolicy.parse(policy))


# ------------------------------------------------------------------------------------------ the module
def test_skip_and_mean_by_hand_with_a_partial_last_group():
    x = torch.arange(14.0).reshape(1, 7, 2)  # frame t holds (2t, 2t+1)
    mask = torch.tensor([[True] * 5 + [False] * 2])  # 5 valid frames: groups of 2 -> 3 (the last holds frame 4 only)
    skip, skip_mask = TokenStride(2, "skip")(x, mask)
    assert skip[0].tolist() == [[0, 1], [4, 5], [8, 9], [12, 13]] and skip_mask[0].tolist() == [True, True, True, False]
    mean, mean_mask = TokenStride(2, "mean")(x, mask)
    # (frames 0,1), (2,3), (4 alone: the padded frame 5 never enters), (6 is padding: invalid group)
    assert mean[0, :3].tolist() == [[1, 2], [5, 6], [8, 9]] and mean_mask[0].tolist() == [True, True, True, False]
    four, four_mask = TokenStride(4, "mean")(x, mask)
    assert four[0].tolist() == [[3, 4], [8, 9]] and four_mask[0].tolist() == [True, True]
    assert TokenStride(4, "skip")(x, mask)[0][0].tolist() == [[0, 1], [8, 9]]
    # (B, L, T, D): every layer strided alike; padding values (even inf) never reach a mean
    stacked = torch.stack([x, 10 * x], dim=1)
    stacked[:, :, 6] = float("inf")
    out, _ = TokenStride(2, "mean")(stacked, mask)
    assert out.shape == (1, 2, 4, 2) and out[0, 1, :3].tolist() == [[10, 20], [50, 60], [80, 90]]
    assert [strided_length(n, 4) for n in (1, 4, 5, 8)] == [1, 1, 2, 2]


def test_stride_1_is_the_identity_and_bad_settings_say_what_is_allowed():
    x, mask = torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool)
    for pool in ("skip", "mean"):
        out, m = TokenStride(1, pool)(x, mask)
        assert out is x and m is mask
    with pytest.raises(ValueError, match="token_stride=3: use one of 1, 2, 4"):
        TokenStride(3)
    with pytest.raises(ValueError, match="token_pool='max': use one of skip, mean"):
        HeadConfig(input_dim=4, num_classes=2, token_stride=2, token_pool="max")


# ------------------------------------------------------------------------------------------ at the head input
def _head(stride, pool, **options):
    torch.manual_seed(0)
    config = dict(input_dim=8, num_classes=3, proj_dim=16, heads=2, head_dim=4, pooling="qkv", context="conv")
    return SERHead(**{**config, **options}, token_stride=stride, token_pool=pool).eval()


@pytest.mark.parametrize("pool", ["skip", "mean"])
@pytest.mark.parametrize("stride", [2, 4])
@pytest.mark.parametrize("norm", ["none", "standardize"])
def test_head_stride_is_padding_invariant_and_strides_after_the_normalisation(stride, pool, norm):
    head = _head(stride, pool, feature_norm=norm, num_layers=2, fusion="weighted")
    if norm == "standardize":
        head.set_feature_stats(torch.randn(2, 8), torch.rand(2, 8) + 0.5)
    torch.manual_seed(1)
    x = torch.randn(2, 2, 23, 8)  # clip 0 has 13 frames (partial last group), clip 1 all 23
    mask = torch.arange(23)[None, :] < torch.tensor([13, 23])[:, None]
    x[0, :, 13:] = 1e4  # padding content must not matter
    with torch.no_grad():
        batch = head(x, mask)
        alone = head(x[:1, :, :13], mask[:1, :13])
        torch.testing.assert_close(batch[:1], alone, rtol=1e-5, atol=1e-5)
        # the same as normalising, striding, then an unstrided head with the same weights
        plain = _head(1, pool, feature_norm=norm, num_layers=2, fusion="weighted")
        plain.load_state_dict(head.state_dict())
        normed = x if norm == "none" else (x - head.feature_mean[:, None]) / head.feature_std[:, None]
        xs, ms = TokenStride(stride, pool)(normed, mask)
        plain.standardize = False  # the features are normalised already
        torch.testing.assert_close(plain(xs, ms), batch, rtol=1e-5, atol=1e-5)
        # stride 1 is the head without the option
        torch.testing.assert_close(_head(1, pool)(x[:, 0], mask), _head(1, "skip")(x[:, 0], mask))


def test_head_options_come_from_the_model_section_and_the_encoder_stride_leaves_the_head_unstrided():
    cfg = compose(["model.encoder=random:test", "model.token_stride=4", "model.token_pool=mean"])
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(cfg.model)
    hc = HeadConfig.from_options(options, input_dim=8, num_classes=2)
    assert (hc.token_stride, hc.token_pool) == (4, "mean") and hc.to_dict()["token_stride"] == 4  # into head.json
    assert HeadConfig.from_options({**options, "encoder_stride_after": 1}, input_dim=8, num_classes=2).token_stride == 1
    assert HeadConfig.from_options({}, input_dim=8, num_classes=2).token_stride == 1  # head.json of older exports


def test_config_validation_lists_what_is_allowed():
    base = ["model.encoder=random:test"]
    with pytest.raises(ConfigError, match="model.token_stride=3 is not one of: 1, 2, 4"):
        compose(base + ["model.token_stride=3"])
    with pytest.raises(ConfigError, match="model.token_pool='max' is not one of: skip, mean"):
        compose(base + ["model.token_pool=max"])
    with pytest.raises(ConfigError, match="model.encoder_stride_after=0: a block 1..L-1"):
        compose(base + ["model.encoder_stride_after=0"])


# ------------------------------------------------------------------------------------------ inside the encoder
@pytest.mark.parametrize("policy", ["clip", "10"])
@pytest.mark.parametrize("pool", ["skip", "mean"])
@pytest.mark.parametrize("stride", [2, 4])
def test_encoder_stride_is_padding_invariant(encoder, policy, pool, stride):
    encoder.set_stride(after=2, stride=stride, pool=pool)
    try:
        batch = encoder(*_inputs(encoder, policy), [1, 2, 3, 4])
        for i in range(len(SECONDS)):
            alone = encoder(*_inputs(encoder, policy, clips=(i,)), [1, 2, 3, 4])
            n = int(alone.mask.sum())
            assert n == int(batch.mask[i].sum()) == strided_length(int(_inputs(encoder, "clip", (i,))[2][0]), stride)
            assert int(alone.input_mask.sum()) == int(batch.input_mask[i].sum())
            for k in (1, 2, 3, 4):
                torch.testing.assert_close(batch.layers[k][i, :n], alone.layers[k][0, :n], rtol=1e-4, atol=2e-4)
    finally:
        encoder.set_stride()


@pytest.mark.parametrize("pool", ["skip", "mean"])
def test_layers_at_or_below_the_stride_point_are_the_strided_layers_and_those_above_change(encoder, pool):
    feats = _inputs(encoder, "clip")
    plain = encoder(*feats, [1, 2, 3, 4])
    encoder.set_stride(after=2, stride=2, pool=pool)
    try:
        strided = encoder(*feats, [1, 2, 3, 4])
    finally:
        encoder.set_stride()
    stride = TokenStride(2, pool)
    t = plain.layers[1].shape[1]
    assert strided.mask.tolist() == stride.stride_mask(plain.mask).tolist()
    valid = strided.mask
    for k in (1, 2, 3, 4):
        assert strided.layers[k].shape == (3, strided_length(t, 2), encoder.output_dim)
        reference = stride(plain.layers[k], plain.input_mask)[0]
        if k <= 2:  # strided on output: exactly the unstrided layer, strided
            torch.testing.assert_close(strided.layers[k][valid], reference[valid], rtol=1e-5, atol=1e-5)
        else:  # blocks 3, 4 ran on the shorter sequence: other features
            assert (strided.layers[k][valid] - reference[valid]).abs().max() > 1e-3  # noise is ~1e-6
    # fusion: a layer below and one above the stride point have the same frames, so they stack
    assert strided.layers[1].shape == strided.layers[4].shape


def test_set_stride_checks_the_block_and_changes_the_fingerprint():
    enc = load_encoder("random:test")  # 2 blocks: a stride goes after block 1
    weights = enc.fingerprint
    with pytest.raises(ValueError, match=r"encoder_stride_after=2: random:test has 2 blocks, so a stride goes after block 1\.\.1"):
        enc.set_stride(after=2, stride=2)
    enc.set_stride(after=1, stride=1)  # stride 1: off
    assert enc.fingerprint == weights and enc.stride_settings is None
    enc.set_stride(after=1, stride=2, pool="mean")
    assert enc.fingerprint == f"{weights}+stride2-mean-after1" and enc.weight_fingerprint == weights
    assert enc.stride_settings == {"after": 1, "stride": 2, "pool": "mean"}
    enc.set_stride()
    assert enc.fingerprint == weights


def test_the_cache_key_and_the_recorded_identity_hold_the_stride(tmp_path):
    from ser_lightning.features.pipeline import (AudioSettings, encoder_identity, feature_spec, load_config_encoder,
                                                 open_feature_cache)  # fmt: skip
    from ser_lightning.models.module import EncoderMismatchError, SERModule

    base = ["model.encoder=random:test", f"cache.dir={tmp_path / 'c'}", "model.input_seconds=clip", "model.token_stride=2"]
    caches, identities = [], []
    for extra in ([], ["model.encoder_stride_after=1"], ["model.encoder_stride_after=1", "model.token_pool=mean"]):
        cfg = compose(base + extra)
        enc = load_config_encoder(cfg, load_encoder("random:test"))
        spec = feature_spec(cfg, enc)
        caches.append(open_feature_cache(spec, enc, AudioSettings()).dir)
        identities.append(encoder_identity(enc, spec.layers, spec.policy.name))
    assert len(set(caches)) == 3  # the head-input stride reuses the plain cache; each encoder stride has its own
    assert "stride" not in identities[0] and identities[1]["stride"] == {"after": 1, "stride": 2, "pool": "skip"}
    assert identities[0]["fingerprint"] == load_encoder("random:test").fingerprint != identities[1]["fingerprint"]
    # a checkpoint of the strided encoder is refused by a module on the unstrided one
    module = SERModule(_head(1, "skip"), ["a", "b", "c"], encoder_info=identities[0])
    with pytest.raises(EncoderMismatchError, match="refusing to mix them"):
        module.on_load_checkpoint({"ser_encoder": identities[1]})
    # a reused encoder is reconfigured by the next configuration
    enc = load_config_encoder(compose(base + ["model.encoder_stride_after=1"]))
    assert load_config_encoder(compose(base), enc).stride_settings is None


# ------------------------------------------------------------------------------------------ adaptation
@pytest.mark.parametrize("policy", ["clip", "10"])
@pytest.mark.parametrize("pool", ["skip", "mean"])
def test_adapted_blocks_above_the_stride_reproduce_the_strided_encoder(encoder, policy, pool):
    """Stride after block 1, blocks 3..4 adapted: fed the (strided) layer 2 and the strided key mask, the adapted top at
    its initial values gives the strided encoder's layers 3 and 4."""
    from ser_lightning.models.adapt import AdaptedTop, LoraSettings

    encoder.set_stride(after=1, stride=2, pool=pool)
    try:
        out = encoder(*_inputs(encoder, policy), [2, 3, 4])
    finally:
        encoder.set_stride()
    key_valid = out.input_mask
    for mode in ("top", "lora"):
        top = AdaptedTop(encoder, [3, 4], mode, LoraSettings(rank=4)).train()
        got = top(out.layers[2], key_valid, [3, 4])
        for k in (3, 4):
            torch.testing.assert_close(got[k][key_valid], out.layers[k][key_valid], rtol=1e-5, atol=1e-5)


def test_a_stride_inside_the_adapted_blocks_is_refused():
    from ser_lightning.features.pipeline import load_config_encoder

    cfg = compose(["model.encoder=random:tiny", "model.layer=4", "model.adapt=top", "model.adapt_blocks=2",
                   "model.token_stride=2", "model.encoder_stride_after=3", "model.input_seconds=clip"])  # fmt: skip
    with pytest.raises(ValueError, match=r"adapted blocks 3..4 .* encoder_stride_after in 1..2"):
        load_config_encoder(cfg, load_encoder("random:tiny", dtype="fp32"))


# ------------------------------------------------------------------------------------------ train -> export -> predict
@pytest.mark.parametrize("where", [
    ["model.encoder_stride_after=1", "model.token_stride=2", "model.token_pool=mean"],
    ["model.token_stride=4", "model.token_pool=skip"],
    # block 2 adapted (LoRA), fed the strided layer 1 from the cache: the stride comes before the adapted blocks
    ["model.encoder_stride_after=1", "model.token_stride=2", "model.token_pool=mean", "model.adapt=lora", "model.adapt_blocks=1",
     "optim.encoder_lr=1e-3"],
])  # fmt: skip
def test_a_strided_model_exports_and_predicts_the_same_scores(tmp_path, ravdess_root, where):
    """Layers 1 and 2 fused across the stride point (encoder stride after block 1), or the stride at the head input:
    `ser predict` on raw audio (the encoder set up from head.json) gives the scores evaluation gave."""
    from ser_lightning.run.predict import predict_files
    from ser_lightning.run.train import train

    cfg = compose([
        "data=ravdess", f"data.root={ravdess_root}", "data.fold=2", "data.limit_per_class=10", "model.encoder=random:test",
        "model.layers=[1,2]", "model.pooling=mean", "model.proj_dim=32", "model.input_seconds=clip", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "wandb.mode=disabled", f"cache.dir={tmp_path / 'cache'}",
        f"data.table_cache_dir={tmp_path / 'tables'}", f"output_dir={tmp_path / 'run'}", *where,
    ])  # fmt: skip
    results = train(cfg)
    meta = json.loads((tmp_path / "run" / "export" / "head.json").read_text())
    assert results["encoder"] == meta["encoder"]  # results.json records the (strided) encoder's fingerprint too
    in_encoder = "model.encoder_stride_after=1" in where
    assert (meta["head"]["token_stride"], "stride" in meta["encoder"]) == ((1, True) if in_encoder else (4, False))
    assert ("adapt" in meta) == ("model.adapt=lora" in where)
    if in_encoder:
        assert meta["encoder"]["stride"] == {"after": 1, "stride": 2, "pool": "mean"}
        assert meta["encoder"]["fingerprint"].endswith("+stride2-mean-after1")
    stored = json.loads((tmp_path / "run" / "test_predictions.json").read_text())
    records = predict_files(tmp_path / "run", stored["path"][:6])
    for record, probs in zip(records, stored["probabilities"][:6]):
        assert record["error"] is None
        assert [record["probs"][c] for c in stored["class_names"]] == pytest.approx(probs, abs=1e-4)
