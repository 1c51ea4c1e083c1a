"""One cross-validation: ours measured (`ser cv` for real), the paper's estimated from measured pieces."""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ser_lightning.run.bench.memory import _sync


def time_head_paper(cfg: Any, dim: int, num_classes: int, device: Any, reps: int = 3) -> Dict[str, float]:
    """Seconds per training step (batch 16, 1500 frames, AdamW) and per evaluated clip of the configured head,
    on 1500-frame inputs: the paper's training and per-epoch test-fold evaluation, measured."""
    import torch

    from ser_lightning.models.head import SERHead

    m = cfg.model
    torch.manual_seed(0)
    head = SERHead(dim, num_classes, pooling=m.pooling, proj_dim=m.proj_dim, heads=m.heads, head_dim=m.head_dim,
                   dropout=m.dropout).to(device)  # fmt: skip
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    x = torch.randn(16, 1500, dim, device=device)
    mask = torch.ones(16, 1500, dtype=torch.bool, device=device)
    y = torch.randint(0, num_classes, (16,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(head(x, mask), y).backward()
        opt.step()

    step()
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    head.eval()
    with torch.no_grad():
        head(x, mask)
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            head(x, mask)
        _sync(device)
        eval_clip = (time.perf_counter() - t) / (reps * 16)
    return {"train_step_s": float(np.median(times)), "eval_clip_s": eval_clip}


def time_fp32_file_read(dim: int, workdir: Path, files: int = 16) -> float:
    """Seconds to np.load one 1500 x dim fp32 file (written just before: page cache warm, a lower bound)."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        p = workdir / f"u{i}.npy"
        np.save(p, np.full((1500, dim), i, np.float32))
        paths.append(p)
    np.load(paths[0])
    t = time.perf_counter()
    for p in paths:
        np.load(p)
    return (time.perf_counter() - t) / files


def paper_cv_estimate(n_clips: int, per_clip_encode_s: float, folds: Sequence[Dict[str, int]], epochs: int,
                      train_step_s: float, eval_clip_s: float, read_file_s: float, batch_size: int = 16) -> Dict[str, Any]:  # fmt: skip
    """The paper's CV time from measured pieces. folds: [{'n_train': ..., 'n_test': ...}] (its train set is every
    non-test speaker). Encoding once (fp32 files); then per fold and epoch: training steps, one test-fold
    evaluation, and one read of every clip's file."""
    encode = n_clips * per_clip_encode_s
    train = evaluate = read = 0.0
    for f in folds:
        train += epochs * math.ceil(f["n_train"] / batch_size) * train_step_s
        evaluate += epochs * f["n_test"] * eval_clip_s
        read += epochs * (f["n_train"] + f["n_test"]) * read_file_s
    return {"encode_s": encode, "train_s": train, "eval_s": evaluate, "read_s": read,
            "total_s": encode + train + evaluate + read}  # fmt: skip


def run_ours_cv(cfg: Any, encoder: Any, workdir: Path, folds: Optional[Sequence[int]], epochs: int,
                cold: bool) -> Dict[str, Any]:  # fmt: skip
    """`ser cv` for real on cfg's corpus; the cache fill is timed apart from training (cold: fresh cache dir)."""
    from omegaconf import open_dict

    from ser_lightning.run.build import build_datamodule
    from ser_lightning.run.cv import corpus_folds, run_cv
    from ser_lightning.run.rundir import RESULTS, fold_dir

    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.output_dir = str(workdir / "cv")
        c.trainer.max_epochs = int(epochs)
        c.trainer.enable_progress_bar = False
        c.wandb.mode = "disabled"
        if cold:
            c.cache.dir = str(workdir / "cache")
            c.data.table_cache_dir = str(workdir / "tables")
    all_folds = corpus_folds(c)
    run_folds = list(folds) if folds else all_folds
    with open_dict(c):
        c.cv.folds = run_folds
    start = time.perf_counter()
    _, dm = build_datamodule(c, encoder, cached=True)
    layers = dm.features.layers
    ds = dm.load_table().dataset
    hashes = list(ds["sha256"])
    cache = dm.open_cache()
    cache.refresh()
    missing = len(cache.missing(hashes, layers))
    dm.fill(dict(zip(hashes, ds["path"])), dict(zip(hashes, ds["duration"])))
    encode_s = time.perf_counter() - start
    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_cv(c, encoder=encoder)
    train_s = time.perf_counter() - t
    import json

    per_fold = []
    for k in run_folds:
        r = json.loads((fold_dir(workdir / "cv", k) / RESULTS).read_text())
        per_fold.append({"fold": k, "n_train": r["n_train"], "n_val": r["n_val"], "n_test": r["n_test"],
                         "wall_s": r["wall_time_s"]})  # fmt: skip
    total = encode_s + train_s
    extrapolated = len(run_folds) < len(all_folds)
    return {
        "clips": len(hashes), "clips_missing_before": missing, "cold": cold, "encode_s": encode_s,
        "train_s": train_s, "folds_run": run_folds, "folds_all": all_folds, "epochs": int(epochs),
        "measured_s": total, "per_fold": per_fold, "extrapolated": extrapolated,
        "total_s": encode_s + train_s / len(run_folds) * len(all_folds), "ua": summary["test/ua"]["mean"],
        "layers": layers,
    }  # fmt: skip
