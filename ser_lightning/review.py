"""W&B as the review hub: model and dataset artifacts, the listenable test-prediction table, artifact references.

- `log_model_artifact`: a run's exported model (head.json, head.safetensors, or an ensemble's members; the
  encoder's identity, class names and config in the artifact metadata) as a W&B `model` artifact with aliases
  (`latest`, `fold-K`, `best` for a sweep's best trial), plus the `dataset` artifact of the feature cache and
  corpus table it was trained on (`features.json`: corpus, table fingerprint, cache key, layers, the content hash
  of every clip). Online, the run *uses* the dataset artifact (lineage corpus -> features -> model); offline W&B
  cannot record a use, so the dataset artifact is logged by the run and named in the model's metadata
  (`dataset_artifact`), and the use edge appears only for runs logged online (unverified here: no server).
- `prediction_rows` / `log_predictions`: one row per test clip (clip, speaker, true, predicted, correct,
  per-class probabilities) and `wandb.Audio` for the misclassified ones, at most `audio_cap` of them (the cap and
  how many were left out are logged beside the table).
- `log_sweep_best`: at the end of a local sweep, the best trial's exported model(s) as `<sweep>-model` with the
  alias `best` (a CV trial: one folder per fold inside the artifact), logged by a `sweep-best` run.
- `resolve_run`: `ser predict --run wandb:entity/project/name:alias` downloads the model artifact through the W&B
  API (needs a server; unverified here) into the folder layout `ser predict` reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

WANDB_REF = "wandb:"


def artifact_name(text: str) -> str:
    """A valid W&B artifact name (letters, digits, - _ .)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "ser"


def dataset_manifest(dm: Any) -> Dict[str, Any]:
    """What the model was trained on: corpus, corpus-table fingerprint, feature-cache key and layers, every clip's
    content hash (sorted) and the fold's speakers."""
    table = dm.load_table()
    cache_key = Path(dm.open_cache().dir).name if dm.features.cached else None
    return {
        "corpus": table.corpus.name,
        "table_fingerprint": table.fingerprint,
        "feature_cache_key": cache_key,
        "layers": list(dm.features.layers),
        "input_policy": str(dm.features.policy),
        "n_clips": len(table.dataset),
        "clip_sha256": sorted(table.dataset["sha256"]),
        "splits": {name: sorted(set(dm.splits[name]["speaker"])) for name in dm.splits},
    }


def log_model_artifact(run: Any, export_dir: Path, name: str, aliases: Sequence[str], metadata: Mapping[str, Any],
                       dataset: Optional[Mapping[str, Any]] = None, offline: bool = True) -> Dict[str, Any]:  # fmt: skip
    """Log `export_dir` as a model artifact (and `dataset` as the dataset artifact it came from). Returns what
    was logged (names, aliases), for results.json."""
    import json
    import tempfile

    import wandb

    logged: Dict[str, Any] = {}
    meta = dict(metadata)
    if dataset is not None:
        ds_name = artifact_name(f"features-{dataset['corpus']}-{dataset['feature_cache_key'] or dataset['table_fingerprint']}")
        ds = wandb.Artifact(ds_name, type="dataset", metadata={k: v for k, v in dataset.items() if k != "clip_sha256"})
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "features.json"
            manifest.write_text(json.dumps(dataset, indent=1, sort_keys=True))
            ds.add_file(str(manifest), name="features.json")
            if offline:
                run.log_artifact(ds)  # offline W&B cannot record a use; the model names it instead
            else:
                run.use_artifact(ds)
        meta["dataset_artifact"] = ds_name
        logged["dataset"] = ds_name
    model = wandb.Artifact(artifact_name(name), type="model", metadata=meta)
    model.add_dir(str(export_dir))
    run.log_artifact(model, aliases=list(aliases))
    logged.update({"model": artifact_name(name), "aliases": list(aliases)})
    return logged


def model_metadata(results: Mapping[str, Any], cfg: Any) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    return {
        "encoder": results.get("encoder"),
        "class_names": results.get("class_names"),
        "config_hash": results.get("config_hash"),
        "corpus": results.get("corpus"),
        "fold": results.get("fold"),
        "test/ua": results.get("test/ua"),
        "best_val": results.get("best_val"),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def prediction_rows(predictions: Mapping[str, Any], fold: Optional[int] = None) -> Tuple[List[str], List[List[Any]]]:
    """(columns, rows) of a test_predictions.json: clip, path, speaker, true, predicted, correct, p_<class>..."""
    names = list(predictions["class_names"])
    columns = (["fold"] if fold is not None else []) + ["clip", "path", "speaker", "true", "predicted", "correct"]
    columns += [f"p_{c}" for c in names]
    rows = []
    for path, speaker, label, probs in zip(predictions["path"], predictions["speaker"], predictions["label"],
                                           predictions["probabilities"]):  # fmt: skip
        predicted = max(range(len(probs)), key=lambda i: probs[i])
        row = [fold] if fold is not None else []
        row += [Path(str(path).split("::")[-1]).stem, str(path), speaker, names[label], names[predicted], predicted == label]
        rows.append(row + [round(float(p), 5) for p in probs])
    return columns, rows


def log_predictions(run: Any, columns: List[str], rows: List[List[Any]], audio_cap: int, key: str,
                    sample_rate: int = 16000) -> Dict[str, int]:  # fmt: skip
    """A wandb.Table of the rows with an `audio` column: wandb.Audio for misclassified clips, the first
    `audio_cap` of them (decoded with the platform's decoder, so zip members play too); the others None."""
    import wandb

    from ser_lightning.audio import BadAudioError, decode

    path_at, correct_at = columns.index("path"), columns.index("correct")
    wrong = [i for i, r in enumerate(rows) if not r[correct_at]]
    with_audio = set(wrong[: max(0, int(audio_cap))])
    data = []
    for i, row in enumerate(rows):
        audio = None
        if i in with_audio:
            try:
                wave, _ = decode(row[path_at], sample_rate, min_seconds=0.0)
                audio = wandb.Audio(wave, sample_rate=sample_rate, caption=f"true {row[columns.index('true')]}, "
                                    f"predicted {row[columns.index('predicted')]}")  # fmt: skip
            except BadAudioError:
                audio = None
        data.append(row + [audio])
    counts = {"rows": len(rows), "misclassified": len(wrong), "audio": len(with_audio),
              "audio_left_out": len(wrong) - len(with_audio), "audio_cap": int(audio_cap)}  # fmt: skip
    run.log({key: wandb.Table(columns=columns + ["audio"], data=data),
             **{f"{key}_{k}": v for k, v in counts.items()}})  # fmt: skip
    return counts


def resolve_run(ref: str, root: Optional[Path] = None) -> Path:
    """A folder `ser predict --run` reads: `ref` itself, or, for `wandb:entity/project/name:alias`, the model
    artifact downloaded through the W&B API (needs a server and credentials)."""
    if not str(ref).startswith(WANDB_REF):
        return Path(ref)
    import wandb

    name = str(ref)[len(WANDB_REF):]
    try:
        artifact = wandb.Api().artifact(name, type="model")
        return Path(artifact.download(root=str(root) if root else None))
    except Exception as e:  # network, credentials, a wrong name: say which reference failed
        raise ValueError(f"{ref}: cannot download the model artifact ({type(e).__name__}: {e})") from None


def log_sweep_best(sweep_dir: Path, trial: Mapping[str, Any], mode: str, project: str = "ser_lightning",
                   entity: Optional[str] = None) -> Optional[Dict[str, Any]]:  # fmt: skip
    """Log the best trial's exports as the sweep's model artifact with alias `best` (and `latest`): a CV trial's
    fold exports under fold_K/, a single run's export at the top. None when W&B is disabled or nothing was
    exported."""
    if mode == "disabled":  # `mode` is resolved already (tracking.wandb_mode): online, offline or disabled
        return None
    trial_dir = Path(sweep_dir) / str(trial["name"])
    exports = {f"{p.parent.name}/": p for p in sorted(trial_dir.glob("fold_*/export"))}
    if not exports and (trial_dir / "export").is_dir():
        exports = {"": trial_dir / "export"}
    if not exports:
        return None
    import os

    import wandb

    name = artifact_name(f"{Path(sweep_dir).name}-model")
    run = wandb.init(project=project, entity=entity, job_type="sweep-best", name=f"{Path(sweep_dir).name}-best",
                     dir=str(os.environ.get("WANDB_DIR") or sweep_dir), mode=mode, reinit="finish_previous")  # fmt: skip
    model = wandb.Artifact(name, type="model", metadata={"trial": trial["name"], "params": dict(trial.get("params") or {}),
                                                         "metric": trial.get("metric")})  # fmt: skip
    for prefix, folder in exports.items():
        model.add_dir(str(folder), name=prefix.rstrip("/") or None)
    run.log_artifact(model, aliases=["best", "latest"])
    run.finish()
    return {"model": name, "aliases": ["best", "latest"], "trial": trial["name"], "folders": sorted(exports)}
