"""`ensemble.members=K`: K heads per fold, their test-clip probabilities averaged.

Member m is an ordinary `ser train` run of the same configuration in `<output_dir>/member_m` with
`seed = seed + m`: its own initialisation, shuffling and its own VALIDATION DRAW (make_split draws the
validation speakers from the fold's training speakers with (seed, fold)), so each member chooses its checkpoint
on other held-out training actors and trains on the rest. No member ever sees the test fold, and neither does
the combination: the fold's prediction is the mean of the members' softmax probabilities, with no weights to
fit. Member 0 is exactly the single-head run (ensemble.members=1) of the same configuration.

The fold's results.json carries the ensemble's test metrics (the same torchmetrics as a single head), and
`best_val` = the mean over members of the validation UA that chose each member's checkpoint (each on its own
validation speakers): the selection score a sweep maximises. The members' own results stay in their folders and
are listed under `members`. `<output_dir>/export` holds every member's head (`ser predict --run` averages them).
Resumable like every run: finished members are skipped, an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
from omegaconf import DictConfig, open_dict

from ser_lightning.config import to_yaml
from ser_lightning.run.artifact import COMBINE, export_ensemble
from ser_lightning.run.compute import ensemble_compute
from ser_lightning.run.fold import confusion_png, train_one
from ser_lightning.run.rundir import CONFIG_YAML, PREDICTIONS, RESULTS, config_hash, open_run
from ser_lightning.utils.io import atomic_write_json, atomic_write_text, read_json, remove_stale_temps



def member_config(cfg: DictConfig, member: int) -> DictConfig:
    """The single-head configuration of member `member` (0-based)."""
    out = Path(cfg.output_dir)
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.ensemble.members = 1
        c.seed = int(cfg.seed) + member
        c.output_dir = str(out / f"member_{member}")
        if (cfg.data.limit_per_class or cfg.data.max_samples) and cfg.data.subset_seed is None:
            c.data.subset_seed = int(cfg.seed)  # debug subsets: the same clips for every member
        c.wandb.name = f"{cfg.wandb.name or out.name}-member{member}"
        if cfg.wandb.job_type == "fold":
            c.wandb.job_type = "fold-member"
    return c


def average_predictions(members: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Members' test_predictions.json -> the ensemble's (same clips, same order, mean probabilities). The members
    must have scored the same clips with the same labels and classes (they share the fold's test split)."""
    if not members:
        raise ValueError("no member predictions to average")
    first = members[0]
    for m, p in enumerate(members[1:], start=1):
        for key in ("sha256", "label", "class_names"):
            if p[key] != first[key]:
                raise ValueError(f"ensemble member {m} scored other test clips / labels / classes than member 0 "
                                 f"(field {key!r} differs): the members must share the fold's test split")  # fmt: skip
    probs = torch.tensor([p["probabilities"] for p in members], dtype=torch.float64).mean(0)  # (N, C)
    return {**{k: first[k] for k in ("class_names", "sha256", "path", "speaker", "label")},
            "probabilities": probs.tolist(), "combine": COMBINE, "members": len(members)}  # fmt: skip


def prediction_metrics(predictions: Dict[str, Any]) -> Dict[str, Any]:
    """Test metrics of (ensemble) predictions with the same torchmetrics definitions as SERModule's test stage."""
    from ser_lightning.models.metrics import build_confusion, build_metrics, confusion_to_list, to_floats

    names = predictions["class_names"]
    preds = torch.tensor(predictions["probabilities"]).argmax(-1)
    labels = torch.tensor(predictions["label"])
    metrics = build_metrics(names).clone(prefix="test/")
    confusion = build_confusion(names)
    metrics.update(preds, labels)
    confusion.update(preds, labels)
    cm = confusion.compute()
    return {**to_floats(metrics.compute()), "confusion_matrix": confusion_to_list(cm), "class_names": list(names),
            "n_test": int(cm.sum())}  # fmt: skip


def train_ensemble(cfg: DictConfig, encoder: Any = None) -> Dict[str, Any]:
    """Train (or resume) every member, then combine; returns the fold's results (also written to results.json)."""
    from ser_lightning.features.pipeline import load_config_encoder

    k = int(cfg.ensemble.members)
    out = Path(cfg.output_dir)
    done = open_run(out, cfg)
    if done is not None:
        return done
    remove_stale_temps(out)
    atomic_write_text(out / CONFIG_YAML, to_yaml(cfg))  # the ensemble's configuration (members: member_m/)
    start = time.time()
    # loaded once with the ensemble's seed and shared: the members differ in their head seed only (a
    # random:<size> encoder's weights would otherwise follow each member's seed)
    encoder = load_config_encoder(cfg, encoder)
    members: List[Dict[str, Any]] = []
    for m in range(k):
        print(f"[ser] ensemble member {m + 1} of {k} (seed {int(cfg.seed) + m}) -> {out / f'member_{m}'}")
        members.append(train_one(member_config(cfg, m), encoder))
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:  # DDP: rank 0 combines and writes
        return members[0]
    predictions = [read_json(out / f"member_{m}" / PREDICTIONS) for m in range(k)]
    missing = [f"member_{m}" for m, p in enumerate(predictions) if not p]
    if missing:
        raise FileNotFoundError(f"{out}: {', '.join(missing)} finished without {PREDICTIONS} (a run from before "
                                "ensembles existed?); remove those member folders to retrain them")  # fmt: skip
    combined = average_predictions(predictions)  # type: ignore[arg-type]
    first = members[0]
    results: Dict[str, Any] = prediction_metrics(combined)
    results.update(
        {
            **{key: first[key] for key in ("fold", "corpus", "test_speakers", "encoder", "layer", "layers", "pooling",
                                          "feature_norm", "monitor", "provenance") if key in first},  # fmt: skip
            "val_speakers": sorted({s for r in members for s in r["val_speakers"]}),
            "n_train": first["n_train"],
            "n_val": sum(r["n_val"] for r in members),
            # each member's checkpoint was chosen on its own validation speakers: their mean is the selection score
            "best_val": (sum(float(r["best_val"]) for r in members) / k
                         if all(r.get("best_val") is not None for r in members) else None),  # fmt: skip
            "head_parameters": sum(int(r["head_parameters"]) for r in members),
            "compute": ensemble_compute([r.get("compute") for r in members]),  # one encoder pass, every member's head
            "wall_time_s": round(sum(float(r["wall_time_s"]) for r in members) + time.time() - start, 2),
            "config_hash": config_hash(cfg),
            "ensemble": {"members": k, "combine": COMBINE},
            "members": [
                {"member": m, "seed": int(cfg.seed) + m, "output_dir": f"member_{m}", "val_speakers": r["val_speakers"],
                 "best_val": r.get("best_val"), "test/ua": r["test/ua"], "test/wa": r["test/wa"]}
                for m, r in enumerate(members)
            ],  # fmt: skip
        }
    )
    export_ensemble(out, k)
    image = confusion_png(results, out)
    results["wandb"] = _log_fold(cfg, out, results, image, combined)
    atomic_write_json(out / PREDICTIONS, combined)
    atomic_write_json(out / RESULTS, results)  # last: its presence marks the fold finished
    ua = ", ".join(f"{100 * r['test/ua']:.2f}" for r in members)
    print(f"[ser] fold {results['fold']}: ensemble of {k} test WA {results['test/wa']:.4f}  UA {results['test/ua']:.4f} "
          f"(members' UA {ua}) -> {out / RESULTS}")  # fmt: skip
    return results


def _log_fold(cfg: DictConfig, out: Path, results: Dict[str, Any], image: Any, predictions: Dict[str, Any]) -> Dict[str, Any]:
    """The fold's W&B run (job_type as configured, e.g. `fold` in a CV) with the ensemble's test results, its
    prediction table and the ensemble as the model artifact (the dataset artifact is the first member's)."""
    from ser_lightning.tracking import log_test_results, make_logger, wandb_mode

    if wandb_mode(cfg.wandb.mode) == "disabled":
        return {}
    from omegaconf import OmegaConf

    from ser_lightning.tracking import finish_logger, log_fold_review

    logger = make_logger(cfg, out, OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    log_test_results(logger, results, results["class_names"], image)
    logged = log_fold_review(logger, cfg, out, results, predictions, None)
    finish_logger(logger)
    return logged
