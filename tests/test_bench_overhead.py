"""`ser bench --parts overhead` (run/bench/overhead.py): one fold of `ser train` against a plain PyTorch loop doing
the same work. A tiny fake corpus and the random:test encoder, 2 epochs; the report's structure and that both sides
trained the same head (same steps, same validation UA every epoch, same test UA). No wall-clock thresholds."""

from __future__ import annotations

import argparse
import json

import pytest

from ser_lightning.config import compose
from ser_lightning.run.bench import overhead


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(root, tmp_path, *more):
    return compose(["data=emobox", f"data.root={root}", "data.val_speakers=1", "model.encoder=random:test",
                    "model.input_seconds=clip", f"cache.dir={tmp_path / 'cache'}", f"data.table_cache_dir={tmp_path / 't'}",
                    "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "wandb.mode=disabled", *more])  # fmt: skip


def test_both_sides_train_the_same_head_and_the_report_says_so(emobox_ravdess, tmp_path):
    cfg = _cfg(emobox_ravdess, tmp_path, "model.feature_norm=standardize")
    args = argparse.Namespace(overhead_epochs=None, overhead_repeats=2, overhead_threads=1, no_write=False,
                              write=str(tmp_path / "bench.md"), json=str(tmp_path / "bench.json"))  # fmt: skip
    text = overhead.overhead_report(cfg, args, "ser bench --parts overhead (test)")
    r = json.loads((tmp_path / "bench.json").read_text())["overhead"]
    assert r["epochs"] == 2 and r["repeats"] == 2 and r["threads"] == 1
    assert set(r["seconds"]) == set(overhead.SIDES) == set(r["cpu_seconds"])
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in r["samples"].values())
    for side in overhead.SIDES:  # the fastest sample of each side is the one compared
        assert r["seconds"][side] == min(r["samples"][side])
    assert r["ratio_to_plain"] == pytest.approx(r["seconds"]["ser train"] / r["seconds"]["plain"])
    assert r["ratio_to_train_only"] == pytest.approx(r["seconds"]["ser train"] / r["seconds"]["plain, train only"])
    # the same training: as many optimizer steps as ser train's trainer took, the same validation UA every epoch,
    # the same checkpoint choice and the same test UA
    assert r["steps"] == 2 * r["steps_per_epoch"] > 0
    assert r["same_val_ua"] and len(r["val_ua"]["plain"]) == 2
    assert r["val_ua"]["ser train"] == pytest.approx(r["val_ua"]["plain"], abs=1e-6)
    assert r["best_val"]["ser train"] == pytest.approx(r["best_val"]["plain"], abs=1e-6)
    assert r["test"]["ser train"]["ua"] == pytest.approx(r["test"]["plain"]["ua"], abs=1e-6)
    assert r["test"]["ser train"]["wa"] == pytest.approx(r["test"]["plain"]["wa"], abs=1e-6)
    # the report: machine line, the three sides with their ratios, the statement of what the plain loop does
    assert "Machine: " in text and "CPU " in text and "| ser train |" in text and "| plain loop + validation + test |" in text
    assert "| plain loop, train only |" in text and f"{r['ratio_to_plain']:.2f}x" in text
    assert "validation UA per epoch identical" in text
    assert (tmp_path / "bench.md").read_text().count("ser train against a plain PyTorch loop") == 1


def test_plain_loop_alone_counts_its_steps_and_chooses_on_validation(emobox_ravdess, tmp_path):
    from ser_lightning.features.pipeline import load_config_encoder

    cfg = _cfg(emobox_ravdess, tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    encoder = load_config_encoder(cfg)
    out = overhead.ser_train_fold(cfg, encoder, tmp_path / "run")  # fills the cache the plain loop reads
    plain = overhead.plain_fold(cfg, encoder)
    assert plain["steps"] == plain["steps_per_epoch"] == 2  # trainer.limit_train_batches is honoured
    assert [e["val/ua"] for e in out["history"]] == pytest.approx([e["val/ua"] for e in plain["history"]], abs=1e-6)
    assert plain["best_epoch"] == 0 and 0 <= plain["test"]["ua"] <= 1
    train_only = overhead.plain_fold(cfg, encoder, validate=False)
    assert train_only["steps"] == 2 and "test" not in train_only and train_only["history"] == []


def test_wa_ua_follow_torchmetrics():
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_recall

    preds = torch.tensor([0, 1, 1, 2, 2, 2, 0, 3])
    labels = torch.tensor([0, 1, 2, 2, 2, 0, 0, 1])  # class 3 predicted but absent; class 4 neither
    got = overhead.wa_ua(overhead.confusion(preds, labels, 5))
    assert got["wa"] == pytest.approx(float(multiclass_accuracy(preds, labels, 5, average="micro")))
    assert got["ua"] == pytest.approx(float(multiclass_recall(preds, labels, 5, average="macro")))
