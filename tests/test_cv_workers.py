"""`cv.workers`: folds trained in parallel worker processes give exactly the sequential results."""

import json

import pytest

from ser_lightning.config import ConfigError, compose
from ser_lightning.run.cv import run_cv


def _cfg(tmp, ravdess_root, out, *extra):
    return compose([
        "data=ravdess", f"data.root={ravdess_root}", "data.limit_per_class=30", "cv.folds=[1,2]",
        "model.encoder=random:test", "model.layer=2", "model.pooling=qkv", "model.heads=2", "model.input_seconds=clip",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "wandb.mode=disabled",
        f"cache.dir={tmp / 'cache'}", f"data.table_cache_dir={tmp / 'tables'}", f"output_dir={tmp / out}", *extra,
    ])  # fmt: skip


def test_parallel_folds_match_sequential_folds(tmp_path, ravdess_root, capsys):
    sequential = run_cv(_cfg(tmp_path, ravdess_root, "seq"))
    parallel = run_cv(_cfg(tmp_path, ravdess_root, "par", "cv.workers=2"))
    assert "2 at a time in worker processes" in capsys.readouterr().out
    for key in ("test/ua", "test/wa", "test/f1_macro", "val/ua_best"):
        assert parallel[key]["folds"] == sequential[key]["folds"], key
    assert parallel["confusion_matrix"] == sequential["confusion_matrix"]
    for k in (1, 2):  # each fold is an ordinary `ser train` run folder
        assert json.loads((tmp_path / "par" / f"fold_{k}" / "results.json").read_text())["fold"] == k
    # rerun: every fold is finished, nothing is trained again
    again = run_cv(_cfg(tmp_path, ravdess_root, "par", "cv.workers=2"))
    assert "worker processes" not in capsys.readouterr().out
    assert again["test/ua"]["folds"] == parallel["test/ua"]["folds"]


def test_workers_and_ddp_do_not_mix(tmp_path, ravdess_root):
    with pytest.raises(ConfigError, match="trainer.devices"):
        run_cv(_cfg(tmp_path, ravdess_root, "x", "cv.workers=2", "trainer.devices=2"))
