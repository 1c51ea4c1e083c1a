"""Shared helpers of the reliability tests (test_faults / test_predict / test_repro / test_security).

`tiny_overrides`: the small, fast `ser train` configuration they use (random 2-block encoder, 240 RAVDESS clips,
2 epochs, dropout so that random state matters). `trained_run`: one such run, trained
in-process once per test session and shared (read-only) by the modules. `run_ser`: `ser` in a subprocess
(what a user runs; fault injection through SER_FAULT_AT / SER_FAULT_ACTION).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
RAVDESS = ROOT.parent / "shared" / "corpora" / "ravdess"
_CACHE: Dict[str, Path] = {}
BATCH = 8  # data.batch_size of the tiny configuration


def tiny_overrides(out: Path, work: Path, *extra: str) -> List[str]:
    """The tiny RAVDESS configuration (skips the calling test when the corpus is not there)."""
    if not RAVDESS.is_dir():
        import pytest

        pytest.skip(f"RAVDESS not found at {RAVDESS}")
    return [
        "data=ravdess", f"data.root={RAVDESS}", "model.encoder=random:test", "model.layer=1", "model.input_seconds=clip",
        "model.pooling=mean", "model.proj_dim=32", "model.dropout=0.2",
        "data.limit_per_class=30", f"data.batch_size={BATCH}", "optim.lr=0.003", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "wandb.mode=disabled",
        f"cache.dir={work / 'cache'}", f"data.table_cache_dir={work / 'tables'}", f"output_dir={out}", *extra,
    ]  # fmt: skip


def shared_work(tmp_path_factory) -> Path:
    """A session-wide folder for the table and feature caches of the tiny configuration."""
    if "work" not in _CACHE:
        _CACHE["work"] = tmp_path_factory.mktemp("ser_work")
    return _CACHE["work"]


def trained_run(tmp_path_factory) -> Path:
    """A finished tiny `ser train` run (trained once per session). Treat as read-only; copy to modify."""
    if "run" not in _CACHE:
        if not RAVDESS.is_dir():
            import pytest

            pytest.skip(f"RAVDESS not found at {RAVDESS}")
        from ser_lightning.config import compose
        from ser_lightning.run.train import train

        out = tmp_path_factory.mktemp("trained") / "run"
        train(compose(tiny_overrides(out, shared_work(tmp_path_factory))))
        _CACHE["run"] = out
    return _CACHE["run"]


def ser_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a `ser` subprocess in the tests: offline, W&B off, no inherited fault injection, and no
    inherited W&B service (WANDB_SERVICE, set once this pytest process has used W&B): a killed child would otherwise
    leave its run registered as in use in the parent's service, and the in-process resume of that run is refused."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("SER_FAULT") and k != "WANDB_SERVICE"}
    e.update({"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(extra or {})})
    return e


def run_ser(args: List[str], fault: Optional[str] = None, action: str = "kill", timeout: float = 600,
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:  # fmt: skip
    """`ser ARGS` in a fresh interpreter; `fault` = SER_FAULT_AT spec (e.g. "train_batch:5")."""
    e = ser_env(env)
    if fault:
        e.update({"SER_FAULT_AT": fault, "SER_FAULT_ACTION": action})
    return subprocess.run([sys.executable, "-m", "ser_lightning.cli", *args], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def state_dict(path: Path):
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)["state_dict"]


def same_tensors(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


METRIC_KEYS = ("test/wa", "test/ua", "test/f1_macro", "test/f1_weighted", "confusion_matrix", "class_names", "n_test",
               "best_val", "test_speakers", "val_speakers", "n_train", "n_val", "config_hash")  # fmt: skip


def metrics(results: dict) -> dict:
    return {k: results.get(k) for k in METRIC_KEYS}
