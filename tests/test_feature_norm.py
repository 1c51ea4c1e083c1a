"""model.feature_norm=standardize: per-channel statistics of the training split, stored in the head.

Whisper's residual stream has channels far larger than the rest (whisper-base, layers 4-5: one channel ~40x
the median RMS; checked below on the real weights), which then dominate the projector's input."""

import json

import numpy as np
import pytest
import torch

from ser_lightning.config import ConfigError, compose
from ser_lightning.models.head import SERHead
from ser_lightning.models.module import SERModule


def _head(feature_norm: str, layers: int = 1, seed: int = 0) -> SERHead:
    torch.manual_seed(seed)
    return SERHead(12, 3, "attentive", proj_dim=8, heads=2, head_dim=4, dropout=0.0, num_layers=layers,
                   feature_norm=feature_norm).eval()  # fmt: skip


@pytest.mark.parametrize("layers", [1, 3])
def test_standardized_head_equals_a_plain_head_on_standardized_features(layers):
    plain, norm = _head("none", layers), _head("standardize", layers)
    norm.load_state_dict({**plain.state_dict(), "feature_mean": norm.feature_mean, "feature_std": norm.feature_std})
    mean, std = torch.randn(layers, 12) * 5, torch.rand(layers, 12) * 3 + 0.5
    norm.set_feature_stats(mean, std)
    x = torch.randn(4, layers, 7, 12) * 10 if layers > 1 else torch.randn(4, 7, 12) * 10
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False
    if layers > 1:
        z = (x - mean[None, :, None]) / std[None, :, None]
    else:
        z = (x - mean[0]) / std[0]
    assert torch.allclose(norm(x, mask), plain(z, mask), atol=1e-5)
    # still invariant to padding: padded frames become -mean/std, and every pooling masks them
    padded = torch.cat([x, torch.randn(*x.shape[:-2], 9, 12) * 100], dim=-2)
    pmask = torch.cat([mask, torch.zeros(4, 9, dtype=torch.bool)], dim=1)
    assert torch.allclose(norm(padded, pmask), norm(x, mask), atol=1e-5)


def test_stats_are_buffers_saved_with_the_head_and_checked():
    head = _head("standardize", 2)
    assert {"feature_mean", "feature_std"} <= set(head.state_dict())
    assert "feature_mean" not in _head("none").state_dict()  # old exports stay loadable
    assert not any(p is head.feature_mean for p in head.parameters())  # not trained
    with pytest.raises(ValueError, match=r"\(2, 12\)"):
        head.set_feature_stats(torch.zeros(1, 12), torch.ones(1, 12))
    with pytest.raises(RuntimeError, match="feature_norm='none'"):
        _head("none").set_feature_stats(torch.zeros(1, 12), torch.ones(1, 12))
    with pytest.raises(ConfigError, match="model.feature_norm"):
        compose(["model.feature_norm=zscore"])


def test_feature_stats_count_real_frames_only():
    rng = np.random.default_rng(0)
    clips = [rng.normal(3.0, 2.0, size=(t, 12)).astype(np.float32) for t in (5, 9, 2, 7)]
    batches = []
    for pair in ((0, 1), (2, 3)):
        t = max(len(clips[i]) for i in pair)
        feats = torch.full((2, t, 12), 1e4)  # padding that would wreck the statistics if it were counted
        mask = torch.zeros(2, t, dtype=torch.bool)
        for j, i in enumerate(pair):
            feats[j, : len(clips[i])] = torch.from_numpy(clips[i])
            mask[j, : len(clips[i])] = True
        batches.append({"features": feats, "mask": mask, "label": torch.zeros(2, dtype=torch.long)})
    module = SERModule(_head("standardize"), ["a", "b", "c"])
    mean, std = module.feature_stats(batches)
    frames = np.concatenate(clips)
    assert mean.shape == std.shape == (1, 12)
    assert np.allclose(mean[0].numpy(), frames.mean(0), atol=1e-5)
    assert np.allclose(std[0].numpy(), frames.std(0), atol=1e-5)


def test_whisper_features_have_outlier_channels(base_path, ravdess_root):
    """Why the option exists: real Whisper hidden states (real speech) are dominated by a few channels."""
    from ser_lightning.data.audio import decode
    from ser_lightning.features.encoder import load_encoder
    from ser_lightning.features.extract import encode_waves
    from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend

    enc = load_encoder(str(base_path), device="cpu", dtype="fp32")
    clip = sorted(ravdess_root.glob("Actor_01/*"))[0]
    wave, _ = decode(str(clip))
    feats = encode_waves(enc, LogMelFrontend(enc.num_mel_bins), [wave], LengthPolicy.parse("clip"), [4, 5])
    for layer in (4, 5):
        x = torch.as_tensor(np.asarray(feats[layer][0]), dtype=torch.float32)  # (T, D)
        rms = x.pow(2).mean(0).sqrt()  # per channel
        assert rms.max() > 10 * rms.median(), (layer, float(rms.max()), float(rms.median()))


def test_ser_train_standardizes_with_training_speakers_only(tmp_path, ravdess_root):
    from ser_lightning.data.datamodule import SERDataModule
    from ser_lightning.run.export import load_head
    from ser_lightning.run.train import build, train

    cfg = compose([
        "data=ravdess", f"data.root={ravdess_root}", "data.fold=2", "data.limit_per_class=20",
        "model.encoder=random:test", "model.layer=2", "model.pooling=mean", "model.input_seconds=clip",
        "model.feature_norm=standardize", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "wandb.mode=disabled", f"cache.dir={tmp_path / 'cache'}", f"data.table_cache_dir={tmp_path / 'tables'}",
        f"output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    res = train(cfg)
    assert 0.0 <= res["test/ua"] <= 1.0
    head, meta = load_head(tmp_path / "run" / "export")
    assert meta["model"]["feature_norm"] == "standardize"
    # the exported statistics are those of the training split's frames, not of validation or test
    _, dm, module = build(cfg)
    assert isinstance(dm, SERDataModule)
    dm.prepare_data()
    mean, std = module.feature_stats(dm.stats_dataloader())
    assert torch.allclose(head.feature_mean, mean, atol=1e-4) and torch.allclose(head.feature_std, std, atol=1e-4)
    everything = torch.cat([torch.tensor(np.asarray(dm.open_cache().get(h, 2)), dtype=torch.float32)
                            for h in dm._table().dataset["sha256"]])  # fmt: skip
    assert not torch.allclose(everything.mean(0), mean[0], atol=1e-3)  # other speakers would change them
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    assert torch.equal(ckpt["state_dict"]["head.feature_mean"], head.feature_mean)
    json.dumps(res)
