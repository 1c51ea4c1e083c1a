"""Multi-device runs (`trainer.devices=N trainer.strategy=ddp`): 2 CPU processes over gloo, run in a subprocess
(tests/scripts/ddp_check.py; Lightning DDP must not run inside pytest). Every test clip must be evaluated
exactly once across the ranks, and the same trained head must give the same confusion matrix on 1 and 2
processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ser_lightning.config import compose

ROOT = Path(__file__).resolve().parents[1]


def _shared(tmp_path_factory) -> Path:
    """Feature / table cache shared by the experiment tests of one session (lock-safe)."""
    return tmp_path_factory.getbasetemp() / "experiments-cache"


@pytest.mark.parametrize("feature_norm", ["none", "speaker", "lora"])
def test_ddp_two_processes_count_every_clip_once(tmp_path, tmp_path_factory, ravdess_root, random_encoder, feature_norm):
    """feature_norm=speaker: every rank computes all speakers' statistics itself (test-only runs included).
    "lora": model.adapt=lora on block 2 (its adapters are module parameters: DDP synchronises their gradients; the
    checkpoint holds them, so the 2-process test-only evaluation must equal the single process's)."""
    adapt = ["model.adapt=lora", "model.adapt_blocks=1"] if feature_norm == "lora" else []
    feature_norm = "none" if feature_norm == "lora" else feature_norm
    from ser_lightning.run.build import build_training
    from ser_lightning.run.train import train

    shared = _shared(tmp_path_factory)
    overrides = [
        "data=ravdess", f"data.root={ravdess_root}", "data.limit_per_class=40", "data.fold=1",
        "model.encoder=random:test", "model.layer=2", "model.pooling=qkv", "model.heads=2", "model.input_seconds=clip",
        f"model.feature_norm={feature_norm}",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
        "wandb.mode=disabled", f"cache.dir={shared / 'features'}", f"data.table_cache_dir={shared / 'tables'}",
        f"output_dir={tmp_path / 'single'}", *adapt,
    ]  # fmt: skip
    cfg = compose(overrides)
    single = train(cfg, encoder=random_encoder)  # one process, in-process
    _, dm, _ = build_training(cfg, encoder=random_encoder)
    n_split = len(dm.splits["test"])
    assert single["n_test"] == n_split > 0

    out = tmp_path / "ddp_eval.json"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "ddp_check.py"), "--config", str(tmp_path / "single" / "config.yaml"),
         "--ckpt", str(tmp_path / "single" / "checkpoints" / "best.ckpt"), "--train-dir", str(tmp_path / "ddp"),
         "--out", str(out), "--devices", "2"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ev = json.loads(out.read_text())
    assert ev["world_size"] == 2

    # test-only: the single-process head, evaluated by 2 processes
    seen = [i for rank in ev["seen_per_rank"] for i in rank]
    assert all(len(rank) > 0 for rank in ev["seen_per_rank"])  # both ranks did evaluate
    assert sorted(seen) == list(range(n_split))  # every clip exactly once: no padding duplicates, none lost
    assert ev["n_test"] == ev["n_test_split"] == n_split
    assert ev["confusion_matrix"] == single["confusion_matrix"]
    assert ev["test/ua"] == pytest.approx(single["test/ua"])

    # a whole `ser train` on 2 processes: same split, every clip counted once, only rank 0 wrote W&B / results
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ddp["n_test"] == n_split
    # per-clip probabilities gathered from both ranks: every test clip once, in split order, argmax = the matrix
    preds = json.loads((tmp_path / "ddp" / "test_predictions.json").read_text())
    assert preds["sha256"] == list(dm.splits["test"]["sha256"])
    cm = [[0] * len(preds["class_names"]) for _ in preds["class_names"]]
    for label, p in zip(preds["label"], preds["probabilities"]):
        cm[label][max(range(len(p)), key=p.__getitem__)] += 1
    assert cm == ddp["confusion_matrix"]
    assert sum(map(sum, ddp["confusion_matrix"])) == n_split
    assert ddp["test_speakers"] == single["test_speakers"]
    assert ddp["n_train"] == single["n_train"]
    runs = list((tmp_path / "ddp" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
