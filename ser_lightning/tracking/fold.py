"""A fold run (`ser train`, or one fold of `ser cv`): its Lightning logger, its metric definitions, and what is
logged on it after testing (confusion matrix, per-class recall, summary metrics, prediction table, model
artifact), then closing it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ser_lightning.tracking.agent import detach_from_agent, in_agent
from ser_lightning.tracking.mode import _stable_run_id, is_global_zero, wandb_dir, wandb_mode

SCALAR_TEST_KEYS = ("test/wa", "test/ua", "test/f1_macro", "test/f1_weighted")


def make_logger(cfg: Any, output_dir: Path, run_config: Dict[str, Any]):
    """A Lightning WandbLogger (or a CSVLogger when wandb.mode=disabled)."""
    mode = wandb_mode(cfg.wandb.mode)
    if mode == "disabled":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(output_dir), name="logs")
    from lightning.pytorch.loggers import WandbLogger

    if cfg.wandb.job_type in ("fold", "fold-member"):  # part of a CV: the trial's run is the cv-summary run
        detach_from_agent()
    save_dir = wandb_dir(cfg, output_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    kwargs: Dict[str, Any] = {}
    if not in_agent():
        # a rerun of the same folder continues its W&B run instead of creating a duplicate
        # (under `wandb agent` the run id is the agent's: wandb ignores ours)
        kwargs = {"id": _stable_run_id(output_dir), "resume": "allow"}
    logger = WandbLogger(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=cfg.wandb.group,
        job_type=cfg.wandb.job_type,
        name=cfg.wandb.name or Path(output_dir).name,
        tags=list(cfg.wandb.tags or []),
        save_dir=str(save_dir),
        offline=(mode == "offline"),
        config=run_config,
        **kwargs,
    )
    if is_global_zero():
        define_summaries(logger.experiment, str(cfg.monitor), str(cfg.monitor_mode))
    return logger


def define_summaries(run: Any, monitor: str = "val/ua", mode: str = "max") -> None:
    """Dashboards and sweep charts show the right numbers without workspace edits: every val/ and train/ metric
    is plotted against the epoch; val/ua and the selection metric summarise as their best value over epochs
    (`max`, or `min` for a minimised monitor); test metrics are logged once, from the selected checkpoint, so
    their summary is that checkpoint's."""
    run.define_metric("epoch")
    for pattern in ("val/*", "train/*"):
        run.define_metric(pattern, step_metric="epoch")
    run.define_metric("val/ua", step_metric="epoch", summary="max")
    if monitor != "val/ua":
        run.define_metric(monitor, step_metric="epoch", summary=mode)


def offline_wandb(cfg: Any, logger: Any) -> bool:
    """Whether `logger` writes an offline W&B run (the case where a resumed run starts a new local run folder)."""
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger) and wandb_mode(cfg.wandb.mode) == "offline" and is_global_zero()


def _expand_confusion(cm: Sequence[Sequence[int]]):
    y_true: List[int] = []
    y_pred: List[int] = []
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            y_true += [i] * int(n)
            y_pred += [j] * int(n)
    return y_true, y_pred


def trial_metrics(results: Mapping[str, Any]) -> Dict[str, float]:
    """The scalar metrics of one `ser train` run as they appear in its W&B summary (and what `ser sweep`
    reads from results.json): test/* plus `<monitor>_best`, the validation score that chose the checkpoint."""
    out: Dict[str, float] = {}
    for key, value in results.items():
        if key.startswith(("test/", "val/")) and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    if results.get("best_val") is not None and results.get("monitor"):
        out[f"{results['monitor']}_best"] = float(results["best_val"])
    if "n_test" in results:
        out["n_test"] = float(results["n_test"])
    out.update(compute_metrics(results.get("compute")))
    return out


def compute_metrics(compute: Any) -> Dict[str, float]:
    """`compute/<name>` for every number of a results.json / summary.json `compute` section (run/compute.py: FLOPs,
    parameters), `compute/clips/<split>` for its clip counts; {} when there is none."""
    out: Dict[str, float] = {}
    if not isinstance(compute, Mapping):
        return out
    for key, value in compute.items():
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for sub, v in items:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"compute/{key}" + (f"/{sub}" if sub is not None else "")] = float(v)
    return out


def log_trainable_parameters(logger: Any, counts: Dict[str, int]) -> None:
    """The trainable parameter count of each optimizer group as run config (params/head, params/encoder); rank 0."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return
    if isinstance(logger, WandbLogger) and is_global_zero():
        logger.log_hyperparams({f"params/{group}": n for group, n in counts.items()})


def log_test_results(logger: Any, results: Dict[str, Any], class_names: Sequence[str], image: Optional[Path] = None) -> None:
    """Confusion matrix (W&B plot + image) and per-class recall table on the run (rank 0 only)."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return
    if not isinstance(logger, WandbLogger) or not is_global_zero():
        return
    import wandb

    run = logger.experiment
    y_true, y_pred = _expand_confusion(results["confusion_matrix"])
    payload: Dict[str, Any] = {
        "test/confusion_matrix": wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=list(class_names)),
        "test/per_class_recall": wandb.Table(
            columns=["class", "recall", "n"],
            data=[[c, results.get(f"test/recall_{c}"), int(sum(results["confusion_matrix"][i]))] for i, c in enumerate(class_names)],
        ),
    }
    if image is not None and Path(image).is_file():
        payload["test/confusion_matrix_image"] = wandb.Image(str(image))
    run.log(payload)
    run.summary.update(trial_metrics(results))


def log_fold_review(logger: Any, cfg: Any, out: Path, results: Dict[str, Any], predictions: Mapping[str, Any],
                    dataset: Optional[Mapping[str, Any]]) -> Dict[str, Any]:  # fmt: skip
    """A fold run's review material: the test-prediction table (audio for misclassified clips) and, unless
    wandb.log_model=false, the exported model as a model artifact with its dataset artifact. Returns what was
    logged (for results.json); {} when the logger is not W&B."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return {}
    if not isinstance(logger, WandbLogger) or not is_global_zero():
        return {}
    from ser_lightning.review import log_model_artifact, log_predictions, model_metadata, prediction_rows

    run = logger.experiment
    columns, rows = prediction_rows(predictions)
    logged: Dict[str, Any] = {"predictions": log_predictions(run, columns, rows, int(cfg.wandb.predictions_audio),
                                                             "test/predictions", int(cfg.data.sample_rate))}  # fmt: skip
    if cfg.wandb.log_model and (out / "export").is_dir():
        name = f"{cfg.wandb.group or out.name}-model"
        aliases = ["latest", f"fold-{results['fold']}"]
        logged["artifacts"] = log_model_artifact(run, out / "export", name, aliases, model_metadata(results, cfg), dataset,
                                                 offline=wandb_mode(cfg.wandb.mode) == "offline")  # fmt: skip
    return logged


def finish_logger(logger: Any) -> None:
    """Close the W&B run a Lightning WandbLogger opened (a no-op for other loggers or when none was started)."""
    try:
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            import wandb

            wandb.finish()
    except Exception:
        pass
