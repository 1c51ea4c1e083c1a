"""`ser bench --parts overhead`: what `ser train` costs over a plain PyTorch loop doing the same work (issue #18).

In one run, on one machine, interleaved so that CPU noise hits every side:
- ser train: one fold of the real path (run/fold.py `train_one` with the configured cfg: Lightning Trainer,
  callbacks, checkpoints, W&B as configured (offline without an API key), test, exports, results.json);
- plain: the same SERHead (built by run/build.py from the same cfg and seed: same init), the same AdamW groups and
  warmup/cosine schedule stepped per optimizer step (models/module.py configure_optimizers), the same batches of the
  same datamodule's cached features (its samplers' set_epoch per epoch, the per-step re-seeding of
  run/callbacks.ReproducibleSteps, so dropout masks match), the same epochs, AND what the protocol needs: validation
  every epoch choosing the best state on `monitor` (torch.save of the head whenever it improves), then the test
  evaluation of that state loaded back;
- plain, train only: the same loop without validation and test (a second reference).
Every side includes building its datamodule and head (table, feature cache copy into memory, feature statistics);
the encoder is loaded once, before the clocks start, and handed to every side (its fingerprint names the cache).
Before the clocks, an untimed 2-step run of each side pays what a process pays once (imports, W&B's service start,
first-touch page faults of the split tensors). Each side then runs `repeats` times, alternating the order, each run
starting from the same state (garbage collected, the feature files read into the page cache); the fastest run of each
side is compared (wall clock, and this process's CPU time).
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ser_lightning.run.compute import limited_batches

MONITORS = ("val/ua", "val/wa", "val/loss")


def confusion(preds: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


def wa_ua(cm: torch.Tensor) -> Dict[str, float]:
    """WA and UA (macro recall) as torchmetrics computes them: a class neither present nor predicted is left out."""
    cm = cm.double()
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    seen = (support + predicted) > 0
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    return {"wa": float(tp.sum() / cm.sum().clamp_min(1)), "ua": float(recall[seen].mean()) if bool(seen.any()) else 0.0}


def plain_fold(cfg: Any, encoder: Any, validate: bool = True, checkpoint_dir: Optional[Path] = None) -> Dict[str, Any]:
    """One fold trained by a plain PyTorch loop (see the module docstring); validate=False: training only. The best
    state is saved with torch.save whenever validation improves (into `checkpoint_dir`, else a temp folder) and
    loaded back for the test."""
    import tempfile

    from ser_lightning.models.module import masked_stats, warmup_cosine
    from ser_lightning.run.build import build_training
    from ser_lightning.run.callbacks import step_seed

    if cfg.model.adapt not in (None, "none", "frozen") or cfg.model.feature_norm == "speaker":
        raise ValueError("bench overhead: the plain loop trains a frozen head on cached features (model.adapt=frozen, "
                         "model.feature_norm none or standardize)")  # fmt: skip
    if validate and cfg.monitor not in MONITORS:
        raise ValueError(f"bench overhead: monitor={cfg.monitor} is not one the plain loop computes ({', '.join(MONITORS)})")
    t0 = time.perf_counter()
    seed = int(cfg.seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # what L.seed_everything does before the head is built: the same init
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    _, dm, module = build_training(cfg, encoder)
    if not dm.features.cached:
        raise ValueError("bench overhead: the plain loop reads cached features (cache.enabled=true)")
    dm.prepare_data()  # as Trainer.fit does: clips the cache lacks are encoded (none when it is warm)
    dm.setup("fit")  # (re-reads the cache index)
    accelerator = str(cfg.trainer.accelerator)
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu")
    head, criterion = module.head.to(device), module.criterion.to(device)
    if head.standardize:  # what SERModule.on_fit_start does
        head.set_feature_stats(*masked_stats((b["features"].to(device), b["mask"].to(device), None) for b in dm.stats_dataloader()))
    o, t = cfg.optim, cfg.trainer
    train_loader = dm.train_dataloader()
    steps_per_epoch = limited_batches(len(train_loader), t.limit_train_batches)
    epochs = int(t.max_epochs)
    total = max(1, steps_per_epoch * epochs)
    warmup = int(round(float(o.warmup_ratio) * total))
    optimizer = torch.optim.AdamW([{"params": [p for p in head.parameters() if p.requires_grad], "lr": o.lr,
                                    "weight_decay": o.weight_decay}])  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
    val_loader = dm.val_dataloader() if validate else None
    n = dm.num_classes
    clip = t.gradient_clip_val
    history: List[Dict[str, float]] = []
    best: Optional[float] = None
    tmp = None
    if validate and checkpoint_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ser-plain-")
        checkpoint_dir = Path(tmp.name)
    best_path = Path(checkpoint_dir or ".") / "best.pt"
    if validate:
        best_path.parent.mkdir(parents=True, exist_ok=True)
    best_epoch = -1
    steps = 0
    t_loop = time.perf_counter()
    for epoch in range(epochs):
        train_loader.batch_sampler.set_epoch(epoch)
        head.train()
        for i, batch in enumerate(train_loader):
            if i >= steps_per_epoch:
                break
            s = step_seed(seed, epoch, i)
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = criterion(head(batch["features"], batch["mask"]).float(), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(head.parameters(), float(clip))
            optimizer.step()
            scheduler.step()
            steps += 1
        if val_loader is None:
            continue
        values = evaluate(head, criterion, val_loader, n)
        history.append({"epoch": epoch, **{f"val/{k}": v for k, v in values.items() if k != "confusion"}})
        score = history[-1][cfg.monitor]
        if best is None or (score > best if cfg.monitor_mode == "max" else score < best):  # ModelCheckpoint: strictly better
            best, best_epoch = score, epoch
            torch.save(head.state_dict(), best_path)
    t_train = time.perf_counter()
    out: Dict[str, Any] = {"steps": steps, "epochs": epochs, "steps_per_epoch": steps_per_epoch, "history": history,
                           "setup_s": t_loop - t0, "loop_s": t_train - t_loop}  # fmt: skip
    if val_loader is not None:
        head.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
        test = evaluate(head, criterion, dm.test_dataloader(), n)
        out.update({"best_epoch": best_epoch, "best_val": best, "test": {k: v for k, v in test.items() if k != "confusion"}})
    out["total_s"] = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()
    return out


@torch.inference_mode()
def evaluate(head: Any, criterion: Any, loader: Any, n: int) -> Dict[str, Any]:
    """Loss (mean over clips), WA, UA of the head on a loader, in eval mode."""
    head.eval()
    preds, labels, loss_sum, count = [], [], 0.0, 0
    device = next(head.parameters()).device
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = head(batch["features"], batch["mask"]).float()
        loss_sum += float(criterion(logits, batch["label"])) * len(batch["label"])
        count += len(batch["label"])
        preds.append(logits.argmax(-1))
        labels.append(batch["label"])
    cm = confusion(torch.cat(preds), torch.cat(labels), n)
    return {"loss": loss_sum / max(count, 1), **wa_ua(cm), "confusion": cm}


def ser_train_fold(cfg: Any, encoder: Any, output_dir: Path) -> Dict[str, Any]:
    """One fold of the real `ser train` path into a fresh folder; its wall time and what it wrote."""
    from omegaconf import open_dict

    from ser_lightning.run.callbacks import HISTORY, read_history
    from ser_lightning.run.fold import train_one

    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.output_dir = str(output_dir)
    shutil.rmtree(output_dir, ignore_errors=True)
    t0 = time.perf_counter()
    results = train_one(c, encoder)
    total = time.perf_counter() - t0
    history = [{k: v for k, v in e.items() if k == "epoch" or k.startswith("val/")} for e in read_history(output_dir / HISTORY)]
    return {"total_s": total, "history": history, "best_val": results.get("best_val"),
            "test": {k.split("/", 1)[1]: results[k] for k in ("test/wa", "test/ua") if k in results}}  # fmt: skip


SIDES = ("ser train", "plain", "plain, train only")


def feature_files(cfg: Any, encoder: Any) -> List[Path]:
    """The feature-cache files every side reads: each shard's file of each layer the head is fed."""
    from ser_lightning.run.build import build_datamodule

    _, dm = build_datamodule(cfg, encoder)
    layers = {int(k) for k in dm.features.layers}
    files = []
    for speed in [1.0, *dm.speeds]:
        files += [f for f in sorted(Path(dm.open_cache(speed).dir).glob("shard-*/layer_*.npy"))
                  if int(f.stem.split("_")[-1]) in layers]  # fmt: skip
    return files


def same_start(files: List[Path]) -> None:
    """Before each side: the previous side's garbage collected and the feature files read once (in the page cache),
    so that no side pays for the memory or the disk reads another one left behind."""
    import gc

    gc.collect()
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def warm_imports() -> None:
    """Import what `ser train` imports lazily (Lightning, W&B, matplotlib, ...) before any clock starts: a process
    pays that once, not per fold."""
    import importlib

    for name in ("lightning", "ser_lightning.run.fold", "ser_lightning.run.artifact", "ser_lightning.run.provenance",
                 "ser_lightning.review", "ser_lightning.tracking", "ser_lightning.run.plots", "wandb"):  # fmt: skip
        try:
            importlib.import_module(name)
        except ImportError:  # optional ones (matplotlib, wandb) absent: ser train does without them too
            pass


def bench_overhead(cfg: Any, encoder: Any, workdir: Path, repeats: int = 2, threads: Optional[int] = 1) -> Dict[str, Any]:
    """Time the three sides `repeats` times each, alternating their order; the minimum per side and the ratios."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    runs: Dict[str, List[Dict[str, Any]]] = {s: [] for s in SIDES}
    warm_imports()
    # untimed warm-up of both sides (2 steps, validation, test): what a process pays once, whichever side comes first
    # (W&B's service start, first-touch page faults of the split tensors: ~1.5 s per 200 MB on this sandbox)
    from omegaconf import open_dict

    warm = copy.deepcopy(cfg)
    with open_dict(warm):
        warm.trainer.max_epochs, warm.trainer.limit_train_batches = 1, 2.0  # 2 batches (a float > 1 is a count)
    ser_train_fold(warm, encoder, Path(workdir) / "warm_ser_train")  # also starts the W&B service, if any
    cache_files = feature_files(cfg, encoder)
    plain_fold(warm, encoder, checkpoint_dir=Path(workdir) / "warm_plain")
    try:
        for r in range(max(1, int(repeats))):
            order = SIDES if r % 2 == 0 else tuple(reversed(SIDES))
            for side in order:
                print(f"[ser bench] overhead: repeat {r + 1}/{repeats}, {side}", file=sys.stderr, flush=True)
                same_start(cache_files)
                wall, cpu = time.perf_counter(), time.process_time()
                if side == "ser train":
                    run = ser_train_fold(cfg, encoder, Path(workdir) / f"ser_train_{r}")
                else:
                    run = plain_fold(cfg, encoder, validate=side == "plain", checkpoint_dir=Path(workdir) / f"plain_{r}")
                # wall clock, and this process's CPU time (less sensitive to other load; W&B's service process is
                # not in it)
                run["total_s"], run["cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
                runs[side].append(run)
    finally:
        torch.set_num_threads(before)
    best = {s: min(x["total_s"] for x in runs[s]) for s in SIDES}
    cpu = {s: min(x["cpu_s"] for x in runs[s]) for s in SIDES}
    ser, plain = runs["ser train"][0], runs["plain"][0]
    same_val = len(ser["history"]) == len(plain["history"]) and all(
        math.isclose(a.get("val/ua", math.nan), b["val/ua"], abs_tol=1e-6) for a, b in zip(ser["history"], plain["history"])
    )  # fmt: skip
    return {
        "epochs": int(cfg.trainer.max_epochs), "fold": int(cfg.data.fold), "repeats": int(repeats),
        "threads": int(threads) if threads else before, "seconds": best,
        "samples": {s: [x["total_s"] for x in runs[s]] for s in SIDES}, "cpu_seconds": cpu,
        "cpu_ratio_to_plain": cpu["ser train"] / cpu["plain"], "cpu_ratio_to_train_only": cpu["ser train"] / cpu["plain, train only"],
        "ratio_to_plain": best["ser train"] / best["plain"], "ratio_to_train_only": best["ser train"] / best["plain, train only"],
        "plain_split": {"setup_s": min(x["setup_s"] for x in runs["plain"]), "loop_s": min(x["loop_s"] for x in runs["plain"])},
        "steps": plain["steps"], "steps_per_epoch": plain["steps_per_epoch"], "same_val_ua": same_val,
        "val_ua": {"ser train": [e.get("val/ua") for e in ser["history"]], "plain": [e["val/ua"] for e in plain["history"]]},
        "best_val": {"ser train": ser["best_val"], "plain": plain["best_val"]},
        "test": {"ser train": ser["test"], "plain": plain["test"]},
    }  # fmt: skip


def overhead_markdown(r: Dict[str, Any], setup: str, wandb_mode: str) -> str:
    s, c = r["seconds"], r["cpu_seconds"]
    lines = [
        f"{setup}; fold {r['fold']}, {r['epochs']} epochs ({r['steps_per_epoch']} steps each), torch threads "
        f"{r['threads']}, W&B {wandb_mode}; each side run {r['repeats']}x in alternating order, the fastest shown "
        "(wall clock; CPU time of this process beside it: less sensitive to other jobs, W&B's service process not "
        "in it). Imports and an untimed 2-step warm-up of both sides (which starts W&B's service, once per process) come "
        "before the clocks start; before each run, garbage is collected and the feature files are read into the page cache.",
        "", "| side | what it does | wall s | ser train / side | CPU s | ser train / side (CPU) |", "|---|---|---|---|---|---|",
        f"| ser train | run/fold.py train_one: Lightning fit (validation every epoch, best + last checkpoints), test "
        f"of the best checkpoint, exports, predictions, results, W&B | {s['ser train']:.1f} | 1.00x | {c['ser train']:.1f} | 1.00x |",
        f"| plain loop + validation + test | same head, init, optimizer, schedule, batches; validation every epoch "
        f"saving the best state (torch.save), test of that state | {s['plain']:.1f} | **{r['ratio_to_plain']:.2f}x** | "
        f"{c['plain']:.1f} | {r['cpu_ratio_to_plain']:.2f}x |",
        f"| plain loop, train only | the same training steps, no validation, no test | {s['plain, train only']:.1f} | "
        f"{r['ratio_to_train_only']:.2f}x | {c['plain, train only']:.1f} | {r['cpu_ratio_to_train_only']:.2f}x |",
        "",
        f"Plain loop split: setup (table, cache copy, statistics, head) {r['plain_split']['setup_s']:.1f} s, epochs "
        f"{r['plain_split']['loop_s']:.1f} s. All wall samples (s): "
        + "; ".join(f"{k} {', '.join(f'{x:.1f}' for x in v)}" for k, v in r["samples"].items()) + ".",
        "",
        f"Same training: validation UA per epoch {'identical' if r['same_val_ua'] else 'DIFFERENT'} on both sides "
        f"(best {r['best_val']['ser train']:.4f} / {r['best_val']['plain']:.4f}); test UA "
        f"{r['test']['ser train'].get('ua', float('nan')):.4f} / {r['test']['plain']['ua']:.4f}.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def overhead_report(cfg: Any, args: Any, command: str) -> str:
    """`ser bench --parts overhead`: measure, print, append to the benchmarks file."""
    import tempfile

    from omegaconf import open_dict

    from ser_lightning.features.pipeline import load_config_encoder
    from ser_lightning.run.bench.report import emit_report
    from ser_lightning.tracking.mode import wandb_mode
    from ser_lightning.utils.machine import machine_info, machine_line

    cfg = copy.deepcopy(cfg)
    if args.overhead_epochs:
        with open_dict(cfg):
            cfg.trainer.max_epochs = int(args.overhead_epochs)
    encoder = load_config_encoder(cfg)
    machine = machine_info()  # (its load average: at the start)
    workdir = Path(tempfile.mkdtemp(prefix="ser-bench-overhead-"))
    try:
        r = bench_overhead(cfg, encoder, workdir, args.overhead_repeats, args.overhead_threads)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine["torch_threads"] = r["threads"]  # what both sides ran with
    layers = list(cfg.model.layers) if cfg.model.get("layers") else [cfg.model.layer]
    setup = (f"{cfg.data.name}, encoder `{encoder.source}` layer(s) {layers}, `model.input_seconds={cfg.model.input_seconds}`, "
             f"pooling {cfg.model.pooling}, batch {cfg.data.batch_size}, cached features")  # fmt: skip
    mode = wandb_mode(cfg.wandb.mode)
    text = (f"### `{command}`: ser train against a plain PyTorch loop\n\nMachine: {machine_line(machine)}.\n\n"
            + overhead_markdown(r, setup, mode))  # fmt: skip
    emit_report(args, text, {"machine": machine, "overhead": r, "wandb_mode": mode})
    return text
