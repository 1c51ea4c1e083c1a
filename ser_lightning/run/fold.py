"""One head on one fold: fit on the fold's training speakers, choose the checkpoint on validation speakers (drawn
from the training speakers), test that checkpoint on the held-out fold, write results.json, the per-clip test
predictions, provenance and the exported head. `ser train` runs one of these, or an ensemble of them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ser_lightning.config import require, to_yaml
from ser_lightning.run.build import build_training
from ser_lightning.run.rundir import (CHECKPOINTS, CONFIG_YAML, EXPORT, PREDICTIONS, PROVENANCE, RESULTS, config_hash,
                                     open_run)  # fmt: skip
from ser_lightning.utils.io import atomic_write_json, atomic_write_text, fault_point, remove_stale_temps

def make_trainer(cfg: DictConfig, output_dir: Path, logger: Any, callbacks: list):
    import lightning as L

    t = cfg.trainer
    kwargs: Dict[str, Any] = dict(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        precision=t.precision, gradient_clip_val=t.gradient_clip_val, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, deterministic=t.deterministic, logger=logger,
        callbacks=callbacks, default_root_dir=str(output_dir), num_sanity_val_steps=t.num_sanity_val_steps,
        use_distributed_sampler=False,  # the datamodule shards itself: eval sees every clip exactly once
        enable_model_summary=False,
    )  # fmt: skip
    # fault tolerance (run/callbacks.py): atomic checkpoint files, per-step seeds (a resumed run repeats the
    # interrupted epoch exactly), fault-injection points for the tests
    from ser_lightning.run.callbacks import AtomicCheckpointIO, FaultPoints, ReproducibleSteps, progress_bar

    kwargs["plugins"] = [AtomicCheckpointIO()]
    kwargs["callbacks"] = [*callbacks, ReproducibleSteps(cfg.seed), FaultPoints()]
    bar = progress_bar() if t.enable_progress_bar else None  # redrawn a few times a second, not after every step
    if bar is not None:
        kwargs["callbacks"].append(bar)
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = t.limit_train_batches
    return L.Trainer(**kwargs)


def train_one(cfg: DictConfig, encoder=None) -> Dict[str, Any]:
    """One head on one fold (an ensemble member is one of these)."""
    import lightning as L

    from ser_lightning.run.callbacks import HISTORY, EpochHistory, RunCheckpoint, choose_resume, replay_history
    from ser_lightning.run.provenance import provenance, write_provenance
    from ser_lightning.review import dataset_manifest
    from ser_lightning.tracking import (finish_logger, log_fold_review, log_test_results, log_trainable_parameters,
                                        make_logger, offline_wandb)

    require(cfg, "data.root", "model.encoder")
    out = Path(cfg.output_dir)
    done = open_run(out, cfg)
    if done is not None:
        return done
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # (DDP: ranks > 0 are started while rank 0 works)
        for folder in (out, out / CHECKPOINTS, out / EXPORT):  # temp files of writes killed half-way
            remove_stale_temps(folder)
    start = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    atomic_write_text(out / CONFIG_YAML, to_yaml(cfg))
    encoder, dm, module = build_training(cfg, encoder)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    logger = make_logger(cfg, out, run_config)  # type: ignore[arg-type]
    log_trainable_parameters(logger, module.trainable_parameters())
    ckpt_dir = out / CHECKPOINTS
    checkpoint = RunCheckpoint(
        dirpath=str(ckpt_dir), filename="best", monitor=cfg.monitor, mode=cfg.monitor_mode, save_last=False,
        auto_insert_metric_name=False, enable_version_counter=False,
    )  # fmt: skip
    # last.ckpt at EVERY epoch end (Lightning 2.6's save_last=True writes it only in epochs that improved the
    # monitor, so a resume would lose every epoch since the best one); it comes after `checkpoint` in the
    # list, so it stores this epoch's best-so-far state
    last_checkpoint = RunCheckpoint(
        dirpath=str(ckpt_dir), filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )  # fmt: skip
    history = EpochHistory(out / HISTORY)
    trainer = make_trainer(cfg, out, logger, [checkpoint, last_checkpoint, history])
    last = ckpt_dir / "last.ckpt"
    # last.ckpt, else best.ckpt (unloadable ones are moved aside), else start over; claim_output_dir
    # guarantees they are this configuration's
    resume = choose_resume(ckpt_dir)
    if resume:
        print(f"[ser] resuming {out} from {resume}")
    # an offline W&B run resumed after a kill is a new run folder: it gets the epochs before the kill from the local
    # history (an online run resumes the server's history itself, so nothing is replayed there)
    replayed = replay_history(out / HISTORY, resume, logger.experiment if offline_wandb(cfg, logger) else None)
    if replayed:
        print(f"[ser] {replayed} epoch(s) of history replayed into the resumed W&B run")
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    fault_point("before_test")
    best = checkpoint.best_model_path or (str(ckpt_dir / "best.ckpt") if (ckpt_dir / "best.ckpt").is_file() else str(last))
    trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=True)
    fault_point("before_results")
    results: Dict[str, Any] = dict(module.test_results)
    assert dm.split is not None
    results.update(
        {
            "fold": int(cfg.data.fold),
            "corpus": dm.table.corpus.name if dm.table else cfg.data.name,
            "test_speakers": dm.split.test_speakers,
            "val_speakers": dm.split.val_speakers,
            "n_train": len(dm.splits["train"]),
            "n_val": len(dm.splits["val"]),
            "encoder": module.encoder_info,
            # the layers the head read (with model.adapt, encoder_info["layers"] are the layers fed from the cache)
            "layer": module.read_layers[0] if len(module.read_layers) == 1 else None,
            "layers": module.read_layers,
            "pooling": cfg.model.pooling,
            "feature_norm": cfg.model.feature_norm,
            "best_checkpoint": os.path.relpath(best, out) if best else None,
            "best_val": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
            "monitor": cfg.monitor,
            "head_parameters": module.param_count(),
            "trainable_parameters": module.trainable_parameters(),  # per optimizer group: head, encoder (model.adapt)
            "adapt": {"mode": cfg.model.adapt, "blocks": (list(range(module.adapter.first, module.adapter.last + 1))
                                                          if module.adapter is not None else [])},  # fmt: skip
            "wall_time_s": round(time.time() - start, 2),
            "config_hash": config_hash(cfg),
            "provenance": provenance(cfg, dm),
        }
    )
    if trainer.is_global_zero:
        from ser_lightning.run.artifact import export_head
        from ser_lightning.run.compute import fold_compute

        # FLOPs (torch.utils.flop_counter), counted once per configuration and cached next to the feature cache
        results["compute"] = fold_compute(cfg, encoder, dm, module, int(trainer.current_epoch))
        write_provenance(out / PROVENANCE, cfg, dm, module.encoder_info, compact=results["provenance"])
        export_head(module, cfg, out / EXPORT)
        image = confusion_png(results, out)
        results["cma_attention"] = cma_attention(module, dm, out)
        log_test_results(logger, results, dm.class_names, image)
        predictions = test_predictions(module.test_predictions, dm)
        atomic_write_json(out / PREDICTIONS, predictions)
        if cfg.wandb.job_type != "fold-member":  # an ensemble's fold run logs the ensemble instead (run/ensemble.py)
            results["wandb"] = log_fold_review(logger, cfg, out, results, predictions, dataset_manifest(dm))
        atomic_write_json(out / RESULTS, results)  # last: its presence marks the run finished
        print(
            f"[ser] fold {results['fold']}: test WA {results['test/wa']:.4f}  UA {results['test/ua']:.4f}  "
            f"F1 {results['test/f1_macro']:.4f}  (n={results['n_test']}, {results['wall_time_s']:.0f} s) -> {out / RESULTS}"
        )
    finish_logger(logger)
    return results


def test_predictions(outputs: Dict[str, Any], dm: Any) -> Dict[str, Any]:
    """The module's per-clip test probabilities joined with the clips' identity (content hash, path, speaker)."""
    test = dm.splits["test"]
    index = outputs["index"]
    if sorted(index) != list(range(len(test))):
        raise RuntimeError(f"test predictions cover {len(index)} clips with indices {index[:5]}..., the test split "
                           f"has {len(test)}: every clip must be scored exactly once")  # fmt: skip
    columns = {name: list(test[name]) for name in ("sha256", "path", "speaker", "label")}
    return {
        "class_names": list(dm.class_names),
        **{name: [values[i] for i in index] for name, values in columns.items()},
        "probabilities": outputs["probabilities"],
    }


CMA_ATTENTION_PNG = "cma_attention.png"


def cma_attention(module: Any, dm: Any, out: Path, clips: int = 3) -> Optional[Dict[str, Any]]:
    """model.fusion=cma: the cross-layer attention of the first test batch's first clips (query frame x key frame
    per head, cma_attention.png) and each head's normalised entropy over that batch (1 = uniform attention)."""
    cma = getattr(module.head, "cma", None)
    if cma is None:
        return None
    import numpy as np

    batch = next(iter(dm.test_dataloader()))
    module.eval()
    with torch.no_grad():
        module({k: v.to(module.device) for k, v in batch.items()})
    lengths = batch["mask"].sum(1).tolist()
    maps = [(f"test clip {int(batch['index'][i])}", cma.weights[i, :, : lengths[i], : lengths[i]].float().cpu().numpy())
            for i in range(min(clips, len(lengths)))]  # fmt: skip
    try:
        from ser_lightning.run.plots import attention_maps_png

        attention_maps_png(maps, out / CMA_ATTENTION_PNG, title="cross-layer attention (rows: query frames)")
    except ImportError:
        pass
    return {"entropy_per_head": [round(float(x), 4) for x in cma.entropy], "batch_clips": len(lengths),
            "map": CMA_ATTENTION_PNG, "frames": [int(x) for x in np.asarray(lengths[:clips])]}  # fmt: skip


def confusion_png(results: Dict[str, Any], out: Path) -> Optional[Path]:
    try:
        from ser_lightning.run.plots import confusion_png
    except ImportError:
        return None
    return confusion_png(results["confusion_matrix"], results["class_names"], out / "confusion_matrix.png",
                         title=f"fold {results['fold']} (row-normalised)")  # fmt: skip
