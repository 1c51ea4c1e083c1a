"""data.speed_perturb: speed-perturbed training clips from caches of their own; validation / test never perturbed."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ser_lightning.config import ConfigError, compose
from ser_lightning.audio import change_speed


def _peak_hz(wave: np.ndarray, sr: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_change_speed_scales_tempo_and_pitch(factor):
    sr = 16000
    t = np.arange(sr) / sr
    wave = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)  # 1 s at 440 Hz
    out = change_speed(wave, factor, sr)
    assert out.dtype == np.float32
    assert abs(len(out) - sr / factor) <= 1  # 1.1 -> 0.909 s, 0.9 -> 1.111 s
    assert abs(_peak_hz(out) - 440.0 * factor) < 3.0  # pitch moves with the tempo (396 / 484 Hz)
    assert change_speed(wave, 1.0, sr) is wave
    with pytest.raises(ValueError, match="speed factor"):
        change_speed(wave, 0.0, sr)


def test_each_speed_has_its_own_cache_key(tmp_path, random_encoder):
    from ser_lightning.features.cache import cache_for

    def key(speed=None):
        extra = {} if speed is None else {"speed": speed}
        return cache_for(str(tmp_path), random_encoder.fingerprint, {"n_mels": 80}, "clip", 30.0, "center", **extra)

    plain, slow, fast = key(), key(0.9), key(1.1)
    assert len({plain.key, slow.key, fast.key}) == 3
    assert key(1.0).key == plain.key  # the unperturbed cache keeps its key: caches filled before this option stay valid
    assert "speed" not in plain.settings and slow.settings["speed"] == 0.9


@pytest.mark.parametrize("bad", ["[1.0]", "[0.9,0.9]", "[3.0]", "[0.1]"])
def test_bad_speed_factors_are_refused(bad):
    with pytest.raises(ConfigError, match="data.speed_perturb"):
        compose(["model.encoder=random:test", "data.root=x", f"data.speed_perturb={bad}"])


def _speed_dm(ravdess_root, tmp_path, speeds=(0.9, 1.1)):
    from omegaconf import OmegaConf

    from ser_lightning.run.build import build_training

    cfg = compose([
        "data=ravdess", f"data.root={ravdess_root}", "data.fold=2", "data.limit_per_class=20", "model.encoder=random:test",
        "model.layers=[1,2]", "model.input_seconds=clip", f"data.speed_perturb=[{','.join(map(str, speeds))}]",
        f"cache.dir={tmp_path / 'cache'}", f"data.table_cache_dir={tmp_path / 'tables'}", "wandb.mode=disabled",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    _, dm, _ = build_training(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert OmegaConf.to_container(cfg.data.speed_perturb) == list(speeds)
    return cfg, dm


def test_training_clips_are_drawn_at_every_speed_and_evaluation_clips_never(tmp_path, ravdess_root):
    from ser_lightning.data.datamodule import LengthBucketBatchSampler, SpeedPerturbBatchSampler, collate_features

    _, dm = _speed_dm(ravdess_root, tmp_path)
    train = dm.train_dataloader()
    sampler = train.batch_sampler
    assert isinstance(sampler, SpeedPerturbBatchSampler)
    n_train = len(dm.splits["train"])
    epoch0 = list(sampler)
    pairs = [p for batch in epoch0 for p in batch]
    assert sorted(i for i, _ in pairs) == list(range(n_train))  # every training clip once per epoch
    assert {v for _, v in pairs} == {0, 1, 2}  # unperturbed, 0.9 and 1.1 all drawn
    assert list(sampler) == epoch0  # seeded: the same epoch draws the same speeds
    sampler.set_epoch(1)
    assert list(sampler) != epoch0  # a fresh draw every epoch
    sampler.set_epoch(0)
    # the loader's batches are exactly those versions' cached features
    first = next(iter(train))
    ds = train.dataset
    expected = collate_features([ds[p] for p in epoch0[0]])
    assert torch.equal(first["features"], expected["features"]) and torch.equal(first["mask"], expected["mask"])
    hashes = dm.splits["train"]["sha256"]
    for speed, version in ((1.0, 0), (0.9, 1), (1.1, 2)):
        cached = np.asarray(dm.open_cache(speed).get(hashes[3], 2), dtype=np.float32)
        np.testing.assert_array_equal(ds[(3, version)]["features"][1].numpy(), cached)
    plain_len = ds[(3, 0)]["features"].shape[1]
    assert ds[(3, 1)]["features"].shape[1] > plain_len > ds[(3, 2)]["features"].shape[1]  # slower = longer
    # validation and test: plain batch samplers over the unperturbed cache only
    for name, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        assert type(loader.batch_sampler) is LengthBucketBatchSampler
        assert len(loader.dataset.stores) == 1, name
        h = dm.splits[name]["sha256"][0]
        np.testing.assert_array_equal(loader.dataset[0]["features"][0].numpy(),
                                      np.asarray(dm.open_cache().get(h, 1), dtype=np.float32))  # fmt: skip
    # standardisation statistics read the unperturbed training clips only
    assert type(dm.stats_dataloader().batch_sampler) is LengthBucketBatchSampler


def test_live_mode_reads_perturbed_audio(tmp_path, ravdess_root):
    from ser_lightning.data.datamodule import AudioClips
    from ser_lightning.features.extract import load_clip

    path = str(sorted(ravdess_root.glob("Actor_01/*.flac"))[0])
    clips = AudioClips([path], [0], 16000, 30.0, "center", speeds=(1.0, 0.9))
    plain, slow = clips[0]["wave"], clips[(0, 1)]["wave"]
    np.testing.assert_array_equal(plain, load_clip(path, 16000, 30.0, "center"))
    np.testing.assert_array_equal(slow, load_clip(path, 16000, 30.0, "center", speed=0.9))
    assert abs(len(slow) - len(plain) / 0.9) <= 1


def test_ser_train_with_speed_perturb_and_unchanged_identity_without(tmp_path, ravdess_root):
    from ser_lightning.run.rundir import config_hash
    from ser_lightning.run.train import train

    cfg, _ = _speed_dm(ravdess_root, tmp_path, speeds=(0.9,))
    res = train(cfg)
    assert 0.0 <= res["test/ua"] <= 1.0
    assert (tmp_path / "run" / "results.json").is_file()
    # a run from before the option (no data.speed_perturb key) keeps its identity; a perturbed run has another
    from omegaconf import OmegaConf, open_dict

    plain = cfg.copy()
    with open_dict(plain):
        plain.data.speed_perturb = []
    older = OmegaConf.create(OmegaConf.to_container(plain))
    with open_dict(older):
        del older.data["speed_perturb"]
    assert config_hash(plain) == config_hash(older) != config_hash(cfg)


def test_ser_cache_fills_every_speed(tmp_path, ravdess_root):
    from ser_lightning.run.cache import cache_command

    cfg = compose([
        "data=ravdess", f"data.root={ravdess_root}", "data.limit_per_class=2", "model.encoder=random:test",
        "model.input_seconds=clip", "data.speed_perturb=[0.9,1.1]", f"cache.dir={tmp_path / 'cache'}",
        f"data.table_cache_dir={tmp_path / 'tables'}",
    ])  # fmt: skip
    info = cache_command(cfg)
    assert sorted(info["speed_caches"]) == ["0.9", "1.1"]
    folders = {1.0: Path(info["cache_dir"]), **{float(k): Path(v) for k, v in info["speed_caches"].items()}}
    assert len(set(folders.values())) == 3
    for speed, folder in folders.items():
        settings = json.loads((folder / "settings.json").read_text())
        assert settings.get("speed", 1.0) == speed
        clips = sum(len(json.loads(p.read_text())["hashes"]) for p in folder.glob("shard-*/index.json"))
        assert clips == info["clips"] == 16  # 8 classes x 2: every clip at every speed
