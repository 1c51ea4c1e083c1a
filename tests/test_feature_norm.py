"""model.feature_norm=standardize: per-channel statistics of the training split, stored in the head; and
model.feature_norm=speaker: every clip standardised with its own speaker's statistics (all of that speaker's clips,
labels unused), in training, evaluation and `ser predict` (one call = one speaker).

Whisper's residual stream has channels far larger than the rest (whisper-base, layers 4-5: one channel ~40x
the median RMS; checked below on the real weights), which then dominate the projector's input."""

import itertools
import json
from collections import defaultdict

import numpy as np
import pytest
import torch

from ser_lightning.config import ConfigError, compose
from ser_lightning.models.head import SERHead
from ser_lightning.models.module import SERModule, masked_stats


def _head(feature_norm: str, layers: int = 1, seed: int = 0, pooling: str = "attentive") -> SERHead:
    torch.manual_seed(seed)
    return SERHead(12, 3, pooling=pooling, proj_dim=8, heads=2, head_dim=4, dropout=0.0, num_layers=layers,
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
    from ser_lightning.audio import decode
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


def _tiny_train_cfg(ravdess_root, tmp, feature_norm: str, extra):
    """One epoch of fold 2 on a RAVDESS subset with the random test encoder."""
    return compose([
        "data=ravdess", f"data.root={ravdess_root}", "data.fold=2", "model.encoder=random:test", "model.pooling=mean",
        "model.input_seconds=clip", f"model.feature_norm={feature_norm}", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "wandb.mode=disabled", f"cache.dir={tmp / 'cache'}",
        f"data.table_cache_dir={tmp / 'tables'}", f"output_dir={tmp / 'run'}", *extra,
    ])  # fmt: skip


def test_ser_train_standardizes_with_training_speakers_only(tmp_path, ravdess_root):
    from ser_lightning.data.datamodule import SERDataModule
    from ser_lightning.run.artifact import load_head
    from ser_lightning.run.build import build_training
    from ser_lightning.run.train import train

    cfg = _tiny_train_cfg(ravdess_root, tmp_path, "standardize", ["data.limit_per_class=20", "model.layer=2"])
    res = train(cfg)
    assert 0.0 <= res["test/ua"] <= 1.0
    head, meta = load_head(tmp_path / "run" / "export")
    assert meta["model"]["feature_norm"] == "standardize"
    # the exported statistics are those of the training split's frames, not of validation or test
    _, dm, module = build_training(cfg)
    assert isinstance(dm, SERDataModule)
    dm.prepare_data()
    mean, std = module.feature_stats(dm.stats_dataloader())
    assert torch.allclose(head.feature_mean, mean, atol=1e-4) and torch.allclose(head.feature_std, std, atol=1e-4)
    everything = torch.cat([torch.tensor(np.asarray(dm.open_cache().get(h, 2)), dtype=torch.float32)
                            for h in dm.load_table().dataset["sha256"]])  # fmt: skip
    assert not torch.allclose(everything.mean(0), mean[0], atol=1e-3)  # other speakers would change them
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    assert torch.equal(ckpt["state_dict"]["head.feature_mean"], head.feature_mean)
    json.dumps(res)


# ---------------------------------------------------------------------------- model.feature_norm=speaker
@pytest.mark.parametrize("layers", [1, 3])
def test_speaker_head_equals_a_plain_head_on_per_speaker_standardized_features(layers):
    plain, spk = _head("none", layers, pooling="qkv"), _head("speaker", layers, pooling="qkv")
    spk.load_state_dict(plain.state_dict())  # same weights: speaker norm adds no parameters or buffers
    assert set(spk.state_dict()) == set(plain.state_dict())
    mean, std = torch.randn(4, layers, 12) * 5, torch.rand(4, layers, 12) * 3 + 0.5  # one row per clip's speaker
    x = torch.randn(4, layers, 7, 12) * 10 if layers > 1 else torch.randn(4, 7, 12) * 10
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[2, 4:] = False
    z = (x - mean[:, :, None]) / std[:, :, None] if layers > 1 else (x - mean[:, 0, None]) / std[:, 0, None]
    assert torch.allclose(spk(x, mask, (mean, std)), plain(z, mask), atol=1e-5)
    # invariant to padding, like every head
    padded = torch.cat([x, torch.randn(*x.shape[:-2], 5, 12) * 100], dim=-2)
    pmask = torch.cat([mask, torch.zeros(4, 5, dtype=torch.bool)], dim=1)
    assert torch.allclose(spk(padded, pmask, (mean, std)), spk(x, mask, (mean, std)), atol=1e-5)
    with pytest.raises(ValueError, match="norm_stats"):
        spk(x, mask)
    with pytest.raises(ValueError, match="feature_norm='none'"):
        plain(x, mask, (mean, std))


def test_per_speaker_stats_count_each_speakers_real_frames_only():
    rng = np.random.default_rng(1)
    clips = [(s, rng.normal(s * 3.0, 1.0 + s, size=(t, 2, 12)).astype(np.float32))  # (T, L, D), speaker s
             for s, t in [(0, 5), (1, 9), (0, 2), (2, 7), (1, 4), (2, 3)]]
    batches = []
    for pair in ((0, 1), (2, 3), (4, 5)):
        t = max(len(clips[i][1]) for i in pair)
        feats = torch.full((2, 2, t, 12), 1e4)  # padding that would wreck the statistics if it were counted
        mask = torch.zeros(2, t, dtype=torch.bool)
        for j, i in enumerate(pair):
            feats[j, :, : len(clips[i][1])] = torch.from_numpy(clips[i][1]).transpose(0, 1)
            mask[j, : len(clips[i][1])] = True
        batches.append({"features": feats, "mask": mask, "label": torch.zeros(2, dtype=torch.long),
                        "speaker": torch.tensor([clips[i][0] for i in pair])})  # fmt: skip
    module = SERModule(_head("speaker", 2, pooling="qkv"), ["a", "b", "c"])
    mean, std = module.feature_stats(batches, groups=3)
    assert mean.shape == std.shape == (3, 2, 12)
    for s in range(3):
        frames = np.concatenate([c for sp, c in clips if sp == s])  # (sum T, L, D)
        np.testing.assert_allclose(mean[s].numpy(), frames.mean(0), atol=1e-4)
        np.testing.assert_allclose(std[s].numpy(), frames.std(0), atol=1e-4)
    with pytest.raises(ValueError, match=r"speaker index\(es\) \[3\]"):
        masked_stats(((b["features"], b["mask"], b["speaker"]) for b in batches), groups=4)


@pytest.fixture(scope="module")
def speaker_run(tmp_path_factory, ravdess_root):
    from ser_lightning.run.train import train

    tmp = tmp_path_factory.mktemp("speaker_norm")
    cfg = _tiny_train_cfg(ravdess_root, tmp, "speaker", ["data.limit_per_class=12", "model.layers=[1,2]"])
    return cfg, train(cfg), tmp / "run"


def test_training_normalises_every_speaker_with_its_own_clips(speaker_run):
    from ser_lightning.run.build import build_training

    cfg, res, _ = speaker_run
    _, dm, module = build_training(cfg)
    dm.prepare_data()
    dm.setup("fit")
    mean, std = module.feature_stats(itertools.chain(*dm.speaker_stats_dataloaders()), groups=len(dm.speaker_ids))
    ds, cache = dm.load_table().dataset, dm.open_cache()
    by_speaker = defaultdict(list)
    for h, s in zip(ds["sha256"], ds["speaker"]):
        by_speaker[s].append(torch.stack([torch.tensor(np.asarray(cache.get(h, k)), dtype=torch.float32) for k in (1, 2)]))
    assert sorted(by_speaker) == dm.speaker_ids
    test_speakers = set(dm.split.test_speakers)
    assert test_speakers and test_speakers <= set(by_speaker)  # test speakers get their own statistics
    for row, s in enumerate(dm.speaker_ids):
        frames = torch.cat(by_speaker[s], dim=1)  # (L, sum T, D): that speaker's clips only
        assert torch.allclose(mean[row], frames.mean(1), atol=1e-4), s
        assert torch.allclose(std[row], frames.std(1, unbiased=False), atol=1e-4), s
    ckpt = torch.load(speaker_run[2] / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    assert not any("speaker" in k for k in ckpt["state_dict"])  # data statistics, not weights
    assert 0.0 <= res["test/ua"] <= 1.0
    # results and CV summaries say which protocol produced the numbers
    from ser_lightning.run.cv import summarize, summary_markdown

    assert res["feature_norm"] == "speaker"
    summary = summarize([res])
    assert summary["feature_norm"] == "speaker"
    assert "SPEAKER-ADAPTIVE" in summary_markdown(summary, [res], "t")
    assert "SPEAKER-ADAPTIVE" not in summary_markdown({**summary, "feature_norm": "none"}, [res], "t")


def test_predict_per_speaker_reproduces_the_trained_models_test_evaluation(speaker_run):
    """`ser predict`, one call per test speaker, gives exactly the confusion matrix `ser train` tested."""
    from ser_lightning.run.predict import Predictor

    _, res, run = speaker_run
    prov = json.loads((run / "provenance.json").read_text())
    files = [f for f in prov["data_files"] if f["split"] == "test"]
    predictor = Predictor(run, device="cpu")
    assert predictor.speaker_norm
    names = res["class_names"]
    cm = np.zeros((len(names), len(names)), dtype=int)
    probs_together = {}
    for speaker in sorted({f["speaker"] for f in files}):
        mine = [f for f in files if f["speaker"] == speaker]
        for f, r in zip(mine, predictor.predict([f["path"] for f in mine])):
            assert r["error"] is None
            cm[names.index(f["label"]), names.index(r["label"])] += 1
            probs_together[f["path"]] = r["probs"]
    assert cm.tolist() == res["confusion_matrix"]
    # one call for every test speaker: a manifest's speaker column groups the clips (the CLI's path)
    from ser_lightning.run.predict import predict_files

    manifest = run.parent / "test_clips.csv"
    manifest.write_text("path,speaker\n" + "".join(f"{f['path']},{f['speaker']}\n" for f in files))
    grouped = predict_files(run, [str(manifest)], allow_outside_root=True, device="cpu")
    assert [r["speaker"] for r in grouped] == [f["speaker"] for f in files]
    for f, r in zip(files, grouped):
        np.testing.assert_allclose(list(r["probs"].values()), list(probs_together[f["path"]].values()), atol=1e-6)
    import csv
    import io

    from ser_lightning.run.predict import to_csv

    rows = list(csv.DictReader(io.StringIO(to_csv(grouped, names))))
    assert [(r["path"], r["speaker"]) for r in rows] == [(f["path"], f["speaker"]) for f in files]
    # the statistics are used: one clip alone (its own statistics) is scored differently
    alone = predictor.predict([files[0]["path"]])[0]["probs"]
    assert not np.allclose(list(alone.values()), list(probs_together[files[0]["path"]].values()), atol=1e-4)
