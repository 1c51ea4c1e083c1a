"""A CV's `cv-summary` run (under `wandb agent`, the sweep trial's own run): mean/std of every fold metric,
the pooled confusion matrix, the per-fold and per-class tables, and every fold's test predictions in one table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ser_lightning.tracking.agent import restore_agent
from ser_lightning.tracking.fold import _expand_confusion, compute_metrics
from ser_lightning.tracking.mode import _stable_run_id, is_global_zero, wandb_dir, wandb_mode


def cv_metrics(summary: Mapping[str, Any]) -> Dict[str, float]:
    """`cv/<key>_mean` and `cv/<key>_std` for every fold metric of a CV summary.json (`cv/test/ua_mean` is the
    sweep objective), plus `cv/n_folds`, `cv/n_test` and the FLOPs figures `compute/<name>`. The cv-summary W&B run
    logs exactly these keys and `ser sweep` reads exactly these keys from summary.json."""
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
    out.update(compute_metrics(summary.get("compute")))  # compute/<name>: the mean over folds; compute/cv_total_gflops
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
