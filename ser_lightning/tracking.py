"""W&B logger setup (offline by default when no API key is configured) and result logging.

Components never import this module; only the jobs in `run/` do.

What lands in W&B (every run is written by global rank 0 only):
- one run per fold (`ser train`; inside `ser cv`: group = the CV name, job_type = fold): the full resolved
  config, train/val/test metrics by stage (Lightning), the test confusion matrix as a W&B plot AND as an image,
  a per-class recall table, `val/<monitor>_best` (the checkpoint-selection score) in the summary;
- one `cv-summary` run per CV (same group): `cv/<metric>_mean` / `cv/<metric>_std` for every fold metric
  (`cv/test/ua_mean` is what the sweep YAMLs optimise), a per-fold table, a per-class recall table and the
  pooled confusion matrix (plot + image).

Under `wandb agent` (a W&B sweep), the agent gives the trial process one run id (WANDB_RUN_ID). The fold runs of
a CV are detached from the sweep (their own ids, no sweep parameters), and the cv-summary run IS the agent's
run: the sweep sees exactly one run per trial, carrying the sweep parameters and `cv/test/ua_mean`. A plain
`ser train` trial is the agent's run itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

_OFFLINE_NOTICE_SHOWN = False

# set by `wandb agent` for the process it starts (one run id per trial)
AGENT_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
_detached_agent_env: Dict[str, str] = {}

SCALAR_TEST_KEYS = ("test/wa", "test/ua", "test/f1_macro", "test/f1_weighted")


def wandb_mode(requested: str) -> str:
    """auto -> online when an API key is configured (env or ~/.netrc), otherwise offline (said once)."""
    global _OFFLINE_NOTICE_SHOWN
    env_mode = os.environ.get("WANDB_MODE")
    if requested != "auto":
        return requested
    if env_mode in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env_mode == "dryrun" else env_mode
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
        try:
            has_key = "api.wandb.ai" in netrc.read_text() or bool(os.environ.get("WANDB_BASE_URL") and "machine" in netrc.read_text())
        except OSError:
            has_key = False
    if has_key:
        return "online"
    if not _OFFLINE_NOTICE_SHOWN:
        print("[ser] W&B: no API key configured -> logging offline (upload later with `wandb sync <run>/wandb/offline-run-*`)")
        _OFFLINE_NOTICE_SHOWN = True
    return "offline"


def is_global_zero() -> bool:
    """True in a single process and on global rank 0 of a DDP job (the only rank that writes W&B runs)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except ImportError:  # pragma: no cover
        pass
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var) not in (None, ""):
            return int(os.environ[var]) == 0
    return True


# ---------------------------------------------------------------------------------------------- wandb agent
def in_agent() -> bool:
    """This process was started by `wandb agent` for a sweep trial (and has not been detached from it)."""
    return bool(os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"))


def _teardown_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()  # the settings singleton caches the environment: drop it so the next init re-reads it


def detach_from_agent() -> None:
    """Move the agent's variables aside so that the runs created next are ordinary runs (the fold runs of a
    CV); `restore_agent()` brings them back for the trial's own (cv-summary) run."""
    if not in_agent():
        return
    for var in AGENT_ENV:
        if var in os.environ:
            _detached_agent_env[var] = os.environ.pop(var)
    _teardown_wandb()


def restore_agent() -> bool:
    """Put the agent's variables back (see detach_from_agent); True when there were any."""
    if not _detached_agent_env:
        return in_agent()
    os.environ.update(_detached_agent_env)
    _detached_agent_env.clear()
    _teardown_wandb()
    return True


# ---------------------------------------------------------------------------------------------- fold runs
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


def wandb_dir(cfg: Any, output_dir: Path) -> Path:
    """Where W&B writes: wandb.dir, else $WANDB_DIR (what W&B users set to keep runs elsewhere), else the run folder."""
    return Path(cfg.wandb.dir or os.environ.get("WANDB_DIR") or output_dir)


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


def _stable_run_id(output_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:12]


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
    return out


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


# ---------------------------------------------------------------------------------------------- CV summary
def cv_metrics(summary: Mapping[str, Any]) -> Dict[str, float]:
    """`cv/<key>_mean` and `cv/<key>_std` for every fold metric of a CV summary.json (`cv/test/ua_mean` is the
    sweep objective), plus `cv/n_folds` and `cv/n_test`. The cv-summary W&B run logs exactly these keys and
    `ser sweep` reads exactly these keys from summary.json."""
    out: Dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, Mapping) and "mean" in value and "std" in value:
            out[f"cv/{key}_mean"] = float(value["mean"])
            out[f"cv/{key}_std"] = float(value["std"])
    for key, value in (summary.get("pooled") or {}).items():
        if isinstance(value, (int, float)):
            out[f"cv/pooled/{key}"] = float(value)  # all folds' test predictions concatenated
    for key in ("skipped", "cropped"):
        if isinstance(summary.get("data"), Mapping):
            out[f"cv/data/{key}"] = float(summary["data"].get(key, 0))
    if "folds" in summary:
        out["cv/n_folds"] = float(len(summary["folds"]))
    if "n_test" in summary:
        out["cv/n_test"] = float(summary["n_test"])
    return out


def log_cv_summary_run(cfg: Any, summary: Dict[str, Any]) -> None:
    """A `cv-summary` run in the CV's group with mean/std of every metric and the pooled confusion matrix.
    Under `wandb agent` this run is the agent's run (the sweep trial)."""
    mode = wandb_mode(cfg.wandb.mode)
    if mode == "disabled" or not is_global_zero():
        return
    import wandb
    from omegaconf import OmegaConf

    from ser_lightning.utils.io import read_json

    out = Path(cfg.output_dir)
    agent = restore_agent()
    save_dir = wandb_dir(cfg, out)
    save_dir.mkdir(parents=True, exist_ok=True)
    ids: Dict[str, Any] = {} if agent else {"id": _stable_run_id(out / "summary"), "resume": "allow"}
    run = wandb.init(
        project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.wandb.group or out.name,
        job_type="cv-summary", name=f"{cfg.wandb.name or out.name}-summary", dir=str(save_dir),
        tags=list(cfg.wandb.tags or []), config=OmegaConf.to_container(cfg, resolve=True), mode=mode,
        reinit="finish_previous", **ids,
    )  # fmt: skip
    metrics = cv_metrics(summary)
    class_names = list(summary["class_names"])
    cm = summary["confusion_matrix"]
    y_true, y_pred = _expand_confusion(cm)
    folds = []
    for k in summary.get("folds", []):
        r = read_json(out / f"fold_{k}" / "results.json") or {}
        folds.append([k, r.get("n_test"), r.get("test/wa"), r.get("test/ua"), r.get("test/f1_macro")])
    payload: Dict[str, Any] = dict(metrics)
    payload["cv/confusion_matrix"] = wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=class_names)
    payload["cv/per_class_recall"] = wandb.Table(
        columns=["class", "recall_mean", "recall_std"],
        data=[[c, summary[f"test/recall_{c}"]["mean"], summary[f"test/recall_{c}"]["std"]] for c in class_names],
    )
    payload["cv/folds"] = wandb.Table(columns=["fold", "n_test", "test/wa", "test/ua", "test/f1_macro"], data=folds)
    image = out / "confusion_matrix.png"
    if image.is_file():
        payload["cv/confusion_matrix_image"] = wandb.Image(str(image))
    run.log(payload)
    log_cv_predictions(run, cfg, out, summary.get("folds", []))
    run.summary.update(metrics)
    run.finish()


def log_cv_predictions(run: Any, cfg: Any, out: Path, folds: Sequence[int]) -> Optional[Dict[str, int]]:
    """Every fold's test predictions in one table (a `fold` column), audio for the misclassified clips (capped),
    so a reviewer filters "true anger, predicted happiness" over the whole CV and listens."""
    from ser_lightning.review import log_predictions, prediction_rows
    from ser_lightning.utils.io import read_json

    columns: List[str] = []
    rows: List[List[Any]] = []
    for k in folds:
        predictions = read_json(out / f"fold_{k}" / "test_predictions.json")
        if predictions:
            columns, fold_rows = prediction_rows(predictions, fold=int(k))
            rows += fold_rows
    if not rows:
        return None
    return log_predictions(run, columns, rows, int(cfg.wandb.predictions_audio), "cv/predictions", int(cfg.data.sample_rate))


def log_report_run(out_dir: Path, title: str, images: Mapping[str, Path], tables: Mapping[str, Any], mode: str = "auto",
                   project: str = "ser_lightning", entity: Optional[str] = None) -> Optional[str]:  # fmt: skip
    """`ser report --wandb`: one run (job_type=report) carrying the report's images and tables.
    `tables` maps a name to (columns, rows). Returns the run folder (offline) or URL (online)."""
    mode = wandb_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, entity=entity, job_type="report", name=title, dir=str(out_dir), mode=mode,
                     reinit="finish_previous")  # fmt: skip
    payload: Dict[str, Any] = {f"report/{k}": wandb.Image(str(p)) for k, p in images.items() if Path(p).is_file()}
    for name, (columns, rows) in tables.items():
        payload[f"report/{name}_table"] = wandb.Table(columns=list(columns), data=[list(r) for r in rows])
    run.log(payload)
    where = run.url if mode == "online" else str(Path(run.dir).parent)
    run.finish()
    return where


def finish_logger(logger: Any) -> None:
    """Close the W&B run a Lightning WandbLogger opened (a no-op for other loggers or when none was started)."""
    try:
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            import wandb

            wandb.finish()
    except Exception:
        pass
