"""`ser train` end to end: results.json contents, checkpoint choice on validation speakers, rerun/skip,
folder conflicts, cached vs live encoder, head-only checkpoints."""

import json
from pathlib import Path

import pytest
import torch

from ser_lightning.config import compose
from ser_lightning.run.rundir import RunConflictError
from ser_lightning.run.train import train


def _cfg(tmp: Path, ravdess_root, *extra):
    return compose(
        [
            "data=ravdess", f"data.root={ravdess_root}", "data.fold=2", "data.limit_per_class=30",
            "model.encoder=random:test", "model.layer=2", "model.pooling=qkv", "model.heads=2", "model.input_seconds=clip",
            "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "wandb.mode=disabled",
            f"cache.dir={tmp / 'cache'}", f"data.table_cache_dir={tmp / 'tables'}", f"output_dir={tmp / 'run'}",
            *extra,
        ]
    )  # fmt: skip


def test_train_writes_results_and_is_resumable(tmp_path, ravdess_root):
    cfg = _cfg(tmp_path, ravdess_root)
    res = train(cfg)
    out = tmp_path / "run"
    stored = json.loads((out / "results.json").read_text())
    for key in ("test/wa", "test/ua", "test/f1_macro", "test/f1_weighted", "confusion_matrix", "class_names",
                "n_test", "test_speakers", "encoder", "layer", "wall_time_s", "val_speakers", "provenance"):  # fmt: skip
        assert key in stored, key
    assert stored["test_speakers"] == ["Actor_04", "Actor_10", "Actor_12", "Actor_14"]  # EmoBox fold 2
    assert not set(stored["val_speakers"]) & set(stored["test_speakers"])
    assert sum(map(sum, stored["confusion_matrix"])) == stored["n_test"] > 0
    assert all(0.0 <= stored[k] <= 1.0 for k in ("test/wa", "test/ua", "test/f1_macro"))
    assert stored["class_names"][0] == "neutral" and stored["layer"] == 2
    cm = stored["confusion_matrix"]
    assert abs(stored["test/wa"] - sum(cm[i][i] for i in range(len(cm))) / stored["n_test"]) < 1e-6
    assert (out / "config.yaml").is_file() and (out / "export" / "head.safetensors").is_file()
    assert stored["encoder"]["fingerprint"] and stored["provenance"]["data_fingerprint"]
    # the checkpoint holds the head and the encoder's identity, never the encoder's weights
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["ser_encoder"]["fingerprint"] == stored["encoder"]["fingerprint"]
    assert not [k for k in ckpt["state_dict"] if "encoder" in k]
    # same command again: skipped, same results
    assert train(cfg)["test/ua"] == res["test/ua"]
    # another configuration into the same folder: refused, nothing overwritten
    with pytest.raises(RunConflictError):
        train(_cfg(tmp_path, ravdess_root, "model.pooling=mean"))
    assert json.loads((out / "results.json").read_text())["test/ua"] == res["test/ua"]


def test_cached_features_give_the_same_metrics_as_the_live_encoder(tmp_path, ravdess_root):
    """fp32 cache vs encoder run inside the LightningModule: same features (batch-invariant), same metrics."""
    cached = train(_cfg(tmp_path / "a", ravdess_root, "cache.dtype=fp32"))
    live = train(_cfg(tmp_path / "b", ravdess_root, "cache.enabled=false"))
    for key in ("test/wa", "test/ua", "test/f1_macro"):
        assert abs(cached[key] - live[key]) < 1e-6, (key, cached[key], live[key])
    assert cached["confusion_matrix"] == live["confusion_matrix"]


def test_checkpoint_of_another_encoder_is_refused(tmp_path, ravdess_root):
    from ser_lightning.models.module import EncoderMismatchError
    from ser_lightning.run.build import build_training

    cfg = _cfg(tmp_path, ravdess_root)
    train(cfg)
    other = _cfg(tmp_path, ravdess_root, "seed=1")  # random:test with another seed = other weights
    _, _, module = build_training(other)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    with pytest.raises(EncoderMismatchError, match="fingerprint"):
        module.on_load_checkpoint(ckpt)
