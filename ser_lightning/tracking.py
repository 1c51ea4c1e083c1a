"""W&B logger setup (offline by default when no API key is configured) and result logging.

Components never import this module; only the jobs in `run/` do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

_OFFLINE_NOTICE_SHOWN = False


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


def make_logger(cfg: Any, output_dir: Path, run_config: Dict[str, Any]):
    """A Lightning WandbLogger (or a CSVLogger when wandb.mode=disabled)."""
    mode = wandb_mode(cfg.wandb.mode)
    if mode == "disabled":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(output_dir), name="logs")
    from lightning.pytorch.loggers import WandbLogger

    save_dir = Path(cfg.wandb.dir or output_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=cfg.wandb.group,
        job_type=cfg.wandb.job_type,
        name=cfg.wandb.name or Path(output_dir).name,
        tags=list(cfg.wandb.tags or []),
        save_dir=str(save_dir),
        offline=(mode == "offline"),
        config=run_config,
        # a rerun of the same folder continues its W&B run instead of creating a duplicate
        id=_stable_run_id(output_dir),
        resume="allow",
    )


def _stable_run_id(output_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:12]


def log_test_results(logger: Any, results: Dict[str, Any], class_names: Sequence[str], image: Optional[Path] = None) -> None:
    """Confusion matrix (W&B plot + image) and per-class recall table on the run (rank 0 only)."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return
    if not isinstance(logger, WandbLogger):
        return
    import wandb

    run = logger.experiment
    cm: List[List[int]] = results["confusion_matrix"]
    y_true, y_pred = [], []
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            y_true += [i] * n
            y_pred += [j] * n
    payload: Dict[str, Any] = {
        "test/confusion_matrix": wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=list(class_names)),
        "test/per_class_recall": wandb.Table(
            columns=["class", "recall"], data=[[c, results.get(f"test/recall_{c}")] for c in class_names]
        ),
    }
    if image is not None and Path(image).is_file():
        payload["test/confusion_matrix_image"] = wandb.Image(str(image))
    run.log(payload)
    for key in ("test/wa", "test/ua", "test/f1_macro", "test/f1_weighted"):
        if key in results:
            run.summary[key] = results[key]
