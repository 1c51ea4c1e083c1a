"""Reproducibility: `seed=` fixes everything seedable; the same command twice gives identical results on CPU;
every run records where it came from (versions, git commit, encoder and data fingerprints, file list, config)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import fault_helpers as fh  # noqa: E402


def test_same_command_twice_gives_identical_results_and_weights(tmp_path_factory, tmp_path):
    from ser_lightning.config import compose
    from ser_lightning.run.train import train

    first = fh.trained_run(tmp_path_factory)
    second = tmp_path / "again"
    got = train(compose(fh.tiny_overrides(second, fh.shared_work(tmp_path_factory))))
    want = json.loads((first / "results.json").read_text())
    assert fh.metrics(got) == fh.metrics(want)
    assert got["confusion_matrix"] == want["confusion_matrix"]
    assert (second / "export" / "head.safetensors").read_bytes() == (first / "export" / "head.safetensors").read_bytes()
    assert fh.same_tensors(fh.state_dict(second / "checkpoints" / "last.ckpt"), fh.state_dict(first / "checkpoints" / "last.ckpt"))


def test_the_seed_decides_initial_weights_and_data_draws(tmp_path_factory, tmp_path):
    import lightning as L

    from ser_lightning.config import compose
    from ser_lightning.run.build import build_training

    built = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = compose(fh.tiny_overrides(tmp_path / name, fh.shared_work(tmp_path_factory), f"seed={seed}"))
        L.seed_everything(cfg.seed, verbose=False)
        _, dm, module = build_training(cfg)
        built[name] = (module.head.state_dict(), dm.split.val_speakers, list(dm.splits["train"]["sha256"]))
    assert fh.same_tensors(built["a"][0], built["b"][0]) and built["a"][1:] == built["b"][1:]
    assert not fh.same_tensors(built["a"][0], built["c"][0])
    assert built["a"][1:] != built["c"][1:]  # validation speakers / clip subset drawn with the seed


def test_step_seed_makes_random_state_independent_of_what_ran_before():
    from types import SimpleNamespace

    from ser_lightning.run.callbacks import ReproducibleSteps

    cb = ReproducibleSteps(seed=3)
    trainer = SimpleNamespace(current_epoch=2, global_rank=0)
    draws = []
    for warmup in (0, 5):
        torch.rand(warmup)  # whatever consumed random numbers before (data iterator, checkpoint loading, ...)
        random.random()
        cb.on_train_batch_start(trainer, None, None, 7)
        draws.append((torch.rand(3), random.random(), np.random.rand()))
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][1:] == draws[1][1:]
    cb.on_train_batch_start(trainer, None, None, 8)
    assert not torch.equal(torch.rand(3), draws[0][0])  # another step, other masks


def test_sampler_epoch_is_set_and_read_when_the_first_batch_is_drawn():
    """Lightning creates the first epoch's data iterator before its epoch-start hooks and never calls set_epoch
    on a custom batch sampler: ReproducibleSteps sets it, and the sampler draws its order at the first batch."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from ser_lightning.data.datamodule import LengthBucketBatchSampler
    from ser_lightning.run.callbacks import ReproducibleSteps

    sampler = LengthBucketBatchSampler(list(range(100)), 8, shuffle=True, seed=0)
    loader = DataLoader(list(range(100)), batch_sampler=sampler)
    epoch0 = [b.tolist() for b in loader]
    iterator = iter(loader)  # created first (as Lightning does when it resumes) ...
    ReproducibleSteps(0).on_train_epoch_start(SimpleNamespace(current_epoch=1, train_dataloader=loader), None)
    epoch1 = [b.tolist() for b in iterator]  # ... consumed after set_epoch(1)
    assert sampler.epoch == 1 and epoch1 != epoch0
    assert sorted(i for b in epoch1 for i in b) == list(range(100))
    assert epoch1 == [b.tolist() for b in loader]  # the order is a function of (seed, epoch)


def test_every_run_records_its_provenance(tmp_path_factory):
    run = fh.trained_run(tmp_path_factory)
    results = json.loads((run / "results.json").read_text())
    prov = json.loads((run / "provenance.json").read_text())
    compact = results["provenance"]
    for key in ("versions", "git_commit", "machine", "seed", "data_fingerprint", "data_content_fingerprint", "n_clips"):
        assert key in compact and compact[key] == prov[key], key
    assert {"python", "torch", "lightning", "transformers", "torchmetrics", "numpy"} <= set(prov["versions"])
    if (fh.ROOT / ".git").exists():
        assert prov["git_commit"] and len(prov["git_commit"].split("+")[0]) == 40
    assert prov["encoder"]["fingerprint"] == results["encoder"]["fingerprint"] and len(prov["encoder"]["fingerprint"]) == 64
    assert prov["config_hash"] == results["config_hash"]
    assert prov["config"] == OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=True)
    files = prov["data_files"]
    assert len(files) == prov["n_clips"] == results["n_train"] + results["n_val"] + results["n_test"]
    splits = [f["split"] for f in files]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (results["n_train"], results["n_val"], results["n_test"])
    f = files[0]
    assert Path(f["path"]).stat().st_size == f["bytes"] and len(f["sha256"]) == 64 and f["label"] and f["speaker"]
    from ser_lightning.run.provenance import data_content_fingerprint

    rows = {"sha256": [x["sha256"] for x in files], "label_name": [x["label"] for x in files], "speaker": [x["speaker"] for x in files]}
    assert data_content_fingerprint(rows) == prov["data_content_fingerprint"]
    rows["label_name"][0] = "other"
    assert data_content_fingerprint(rows) != prov["data_content_fingerprint"]


@pytest.mark.parametrize("flag", ["dirty", "clean"])
def test_git_commit_marks_a_dirty_tree(tmp_path, flag):
    import subprocess

    from ser_lightning.run.provenance import git_commit

    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    if flag == "dirty":
        (tmp_path / "f.txt").write_text("b")
    commit = git_commit(tmp_path)
    assert len(commit.split("+")[0]) == 40 and commit.endswith("+dirty") == (flag == "dirty")
    assert git_commit(tmp_path / "nonexistent") is None
