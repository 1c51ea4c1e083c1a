"""`ser train`: fit one fold on its training speakers, choose the checkpoint on validation speakers (drawn
from the training speakers), test that checkpoint on the held-out fold, write results.json + config.yaml."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ser_lightning.config import require, to_yaml
from ser_lightning.utils.io import atomic_write_json, atomic_write_text, fault_point, read_json, remove_stale_temps

RESULTS = "results.json"
PREDICTIONS = "test_predictions.json"  # per test clip: content hash, speaker, label, class probabilities


# settings that do not change a run's result (where it is written, how it is logged or cached)
VOLATILE_KEYS = (
    "output_dir", "wandb", "cv", "trainer.enable_progress_bar", "cache.dir", "cache.verify",
    "cache.encode_batch_size", "data.num_workers", "data.table_cache_dir",
)  # fmt: skip


class RunConflictError(RuntimeError):
    """output_dir already holds a run of a different configuration."""


# sections added to the schema after runs existed: left out of a run's identity while at their default, so a
# run from before them (it ran with that default) keeps its config_hash and resumes / is reused as it is
IDENTITY_DEFAULTS = {"ensemble": {"members": 1}, "data.subset_seed": None, "model.context": "none",
                     "model.context_layers": 1, "data.speed_perturb": []}


def config_hash(cfg: DictConfig) -> str:
    """Identity of a run: its configuration minus VOLATILE_KEYS (the encoder and data fingerprints are
    recorded in results.json next to it)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    for key, default in IDENTITY_DEFAULTS.items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node.get(p, {})
        if node.get(leaf, default) == default:
            node.pop(leaf, None)
    for key in VOLATILE_KEYS:
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim_output_dir(out: Path, cfg: DictConfig) -> None:
    """Refuse to reuse a folder that holds another configuration's run (nothing is ever overwritten)."""
    stamp = read_json(out / "run_identity.json")
    mine = config_hash(cfg)
    if stamp and stamp.get("config_hash") != mine:
        raise RunConflictError(
            f"{out} holds a run of a different configuration (config_hash {stamp.get('config_hash')} != {mine}); "
            "choose another output_dir (nothing was changed)"
        )
    if not stamp:
        atomic_write_json(out / "run_identity.json", {"config_hash": mine})


def check_output_dir(path: Path, need_mb: int = 50) -> None:
    """Fail before the long work if the run folder is not writable or the disk is (nearly) full."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output_dir {path} is not writable: {e}") from None
    free = shutil.disk_usage(path).free
    if free < need_mb * 2**20:
        raise OSError(f"output_dir {path}: only {free / 2**20:.0f} MiB free; need at least {need_mb} MiB")


def finished_results(output_dir: Path, cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """The stored results if this exact configuration already finished in output_dir."""
    res = read_json(output_dir / RESULTS)
    if res and res.get("config_hash") == config_hash(cfg) and "test/ua" in res:
        return res
    return None


def load_run_encoder(cfg: DictConfig):
    """The frozen encoder of a run: on CUDA when there is one and the trainer may use it, else the CPU."""
    from ser_lightning.features.encoder import load_encoder

    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"
    return load_encoder(cfg.model.encoder, device=device, dtype=cfg.model.encoder_dtype, seed=cfg.seed)


def open_run(out: Path, cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """Check and claim a run folder: the stored results if this configuration already finished there (the caller
    returns them), else None once the folder is claimed for it (another configuration's folder is refused)."""
    check_output_dir(out)
    done = finished_results(out, cfg)
    if done is not None:
        print(f"[ser] {out}: already finished with this configuration (test/ua {done['test/ua']:.4f}); skipping")
        return done
    claim_output_dir(out, cfg)
    return None


def build(cfg: DictConfig, encoder=None):
    """Encoder, datamodule and LightningModule for a config (sizes flow from the encoder and the data)."""
    from ser_lightning.data.datamodule import FeatureSpec, SERDataModule
    from ser_lightning.features.frontend import LengthPolicy
    from ser_lightning.models.head import FeatureAugment, SERHead
    from ser_lightning.models.module import SERModule, layer_list

    m = cfg.model
    if encoder is None:
        encoder = load_run_encoder(cfg)
    if m.compile:
        encoder.encoder = torch.compile(encoder.encoder, dynamic=True)
    layers = encoder.resolve_layers(layer_list(m.layers, m.layer))
    spec = FeatureSpec(
        layers=layers,
        policy=LengthPolicy.parse(m.input_seconds),
        cached=bool(cfg.cache.enabled),
        cache_dir=cfg.cache.dir,
        cache_dtype=cfg.cache.dtype,
        verify=bool(cfg.cache.verify),
        encode_batch_size=int(cfg.cache.encode_batch_size),
    )
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    dm = SERDataModule(data_cfg, spec, encoder, seed=cfg.seed, report_dir=cfg.output_dir)
    dm.setup("fit")
    augment = FeatureAugment(m.feature_dropout, m.time_mask, m.time_mask_width, m.feature_mask, m.feature_mask_width)
    head = SERHead(
        input_dim=encoder.output_dim, num_classes=dm.num_classes, pooling=m.pooling, proj_dim=m.proj_dim,
        heads=m.heads, head_dim=m.head_dim, dropout=m.dropout, num_layers=len(layers), fusion=m.fusion,
        fusion_layernorm=m.fusion_layernorm, num_queries=m.num_queries, augment=augment,
        feature_norm=m.feature_norm, context=m.context, context_layers=m.context_layers,
    )  # fmt: skip
    info = encoder_info(encoder, layers, spec.policy.name)
    module = SERModule(
        head, dm.class_names, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        warmup_ratio=cfg.optim.warmup_ratio, label_smoothing=cfg.optim.label_smoothing,
        class_weights=dm.class_weights if cfg.optim.class_weighted else None,
        encoder=None if spec.cached else encoder, layers=layers, encoder_info=info,
    )  # fmt: skip
    return encoder, dm, module


def encoder_info(encoder, layers, policy: str) -> Dict[str, Any]:
    return {
        "source": encoder.source, "fingerprint": encoder.fingerprint, "layers": list(layers),
        "num_layers": encoder.num_layers, "output_dim": encoder.output_dim, "num_mel_bins": encoder.num_mel_bins,
        "input_seconds": policy,
    }  # fmt: skip


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
    from ser_lightning.run.callbacks import AtomicCheckpointIO, FaultPoints, ReproducibleSteps

    kwargs["plugins"] = [AtomicCheckpointIO()]
    kwargs["callbacks"] = [*callbacks, ReproducibleSteps(cfg.seed), FaultPoints()]
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = t.limit_train_batches
    return L.Trainer(**kwargs)


def train(cfg: DictConfig, encoder=None) -> Dict[str, Any]:
    """Run one fold end to end; returns the results dict (also written to output_dir/results.json).

    Interrupted (SIGTERM: exit 143; SIGKILL; a crash), the same call resumes from the last epoch-end
    checkpoint and ends with the same results as an uninterrupted run (README "Resuming and faults")."""
    from ser_lightning.run.callbacks import Terminated, sigterm_exits

    with sigterm_exits():
        try:
            if int(cfg.ensemble.members) > 1:
                from ser_lightning.run.ensemble import train_ensemble

                return train_ensemble(cfg, encoder)
            return _train(cfg, encoder)
        except Terminated:
            print(f"[ser] {cfg.output_dir}: stopped by SIGTERM (exit {Terminated().code}); run the same command "
                  "again to resume from the last epoch-end checkpoint", file=sys.stderr, flush=True)  # fmt: skip
            raise


def _train(cfg: DictConfig, encoder=None) -> Dict[str, Any]:
    import lightning as L

    from ser_lightning.run.callbacks import RunCheckpoint, choose_resume
    from ser_lightning.run.provenance import provenance, write_provenance
    from ser_lightning.tracking import log_test_results, make_logger

    require(cfg, "data.root", "model.encoder")
    out = Path(cfg.output_dir)
    done = open_run(out, cfg)
    if done is not None:
        return done
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # (DDP: ranks > 0 are started while rank 0 works)
        for folder in (out, out / "checkpoints", out / "export"):  # temp files of writes killed half-way
            remove_stale_temps(folder)
    start = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    atomic_write_text(out / "config.yaml", to_yaml(cfg))
    encoder, dm, module = build(cfg, encoder)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    logger = make_logger(cfg, out, run_config)  # type: ignore[arg-type]
    ckpt_dir = out / "checkpoints"
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
    trainer = make_trainer(cfg, out, logger, [checkpoint, last_checkpoint])
    last = ckpt_dir / "last.ckpt"
    # last.ckpt, else best.ckpt (unloadable ones are moved aside), else start over; claim_output_dir
    # guarantees they are this configuration's
    resume = choose_resume(ckpt_dir)
    if resume:
        print(f"[ser] resuming {out} from {resume}")
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
            "layer": module.encoder_info["layers"][0] if len(module.encoder_info["layers"]) == 1 else None,
            "layers": module.encoder_info["layers"],
            "pooling": cfg.model.pooling,
            "feature_norm": cfg.model.feature_norm,
            "best_checkpoint": os.path.relpath(best, out) if best else None,
            "best_val": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
            "monitor": cfg.monitor,
            "head_parameters": module.param_count(),
            "wall_time_s": round(time.time() - start, 2),
            "config_hash": config_hash(cfg),
            "provenance": provenance(cfg, dm),
        }
    )
    if trainer.is_global_zero:
        from ser_lightning.run.export import export_head

        write_provenance(out / "provenance.json", cfg, dm, module.encoder_info, compact=results["provenance"])
        export_head(module, cfg, out / "export")
        image = _confusion_png(results, out)
        log_test_results(logger, results, dm.class_names, image)
        atomic_write_json(out / PREDICTIONS, test_predictions(module.test_predictions, dm))
        atomic_write_json(out / RESULTS, results)  # last: its presence marks the run finished
        print(
            f"[ser] fold {results['fold']}: test WA {results['test/wa']:.4f}  UA {results['test/ua']:.4f}  "
            f"F1 {results['test/f1_macro']:.4f}  (n={results['n_test']}, {results['wall_time_s']:.0f} s) -> {out / RESULTS}"
        )
    _finish_logger(logger)
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


def _confusion_png(results: Dict[str, Any], out: Path) -> Optional[Path]:
    try:
        from ser_lightning.run.plots import confusion_png
    except ImportError:
        return None
    return confusion_png(results["confusion_matrix"], results["class_names"], out / "confusion_matrix.png",
                         title=f"fold {results['fold']} (row-normalised)")  # fmt: skip


def _finish_logger(logger: Any) -> None:
    try:
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            import wandb

            wandb.finish()
    except Exception:
        pass
