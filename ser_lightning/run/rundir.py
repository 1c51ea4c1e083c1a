"""The run-folder contract: what a run folder holds, what identifies a run, and how a folder is claimed.

    <output_dir>/config.yaml           the resolved configuration
    <output_dir>/run_identity.json     {"config_hash": ...}: the folder belongs to this configuration
    <output_dir>/results.json          one fold's results (written last: its presence marks the fold finished)
    <output_dir>/test_predictions.json per test clip: content hash, path, speaker, label, probabilities
    <output_dir>/provenance.json       versions, machine, data files, command line
    <output_dir>/summary.json          a cross-validation's mean ± std over folds (`ser cv`)
    <output_dir>/export/               the exported model (run/artifact.py)

A run's identity (`config_hash`) is its configuration minus the keys that cannot change its result
(VOLATILE_KEYS) and minus fields added to the schema after runs existed, while they sit at their default
(schema fields marked `later=True` in config.py): an older run ran with that default, so it keeps its hash.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from ser_lightning.utils.io import atomic_write_json, read_json

CONFIG_YAML = "config.yaml"
IDENTITY = "run_identity.json"
RESULTS = "results.json"
PREDICTIONS = "test_predictions.json"
PROVENANCE = "provenance.json"
SUMMARY = "summary.json"
SUMMARY_MD = "summary.md"
EXPORT = "export"
CHECKPOINTS = "checkpoints"

# settings that do not change a run's result (where it is written, how it is logged or cached)
VOLATILE_KEYS = (
    "output_dir", "wandb", "cv", "trainer.enable_progress_bar", "cache.dir", "cache.verify",
    "cache.encode_batch_size", "data.num_workers", "data.table_cache_dir",
)  # fmt: skip
# keys that tell the runs of ONE configuration apart (its folds; the corpus' place on a machine): part of a
# run's identity, but never what distinguishes two configurations in a comparison
PER_RUN_KEYS = ("data.fold", "data.root")


class RunConflictError(ValueError):  # a ValueError: the CLI prints its message, no traceback
    """output_dir already holds a run of a different configuration."""


def identity_defaults() -> Dict[str, Any]:
    """{dotted key: default} of the schema fields marked `later=True` (added after runs existed)."""
    from ser_lightning.config import SERConfig

    out: Dict[str, Any] = {}

    def walk(section: Any, prefix: str) -> None:
        for f in fields(section):
            key = f"{prefix}{f.name}"
            factory = f.default_factory if f.default_factory is not MISSING else None
            if f.metadata.get("later"):
                value = f.default if factory is None else factory()
                out[key] = asdict(value) if is_dataclass(value) else value
            elif factory is not None and is_dataclass(factory):
                walk(factory, key + ".")

    walk(SERConfig, "")
    return out


def _pop(tree: Dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.get(p, {})
    node.pop(leaf, None)


def _get(tree: Dict[str, Any], dotted: str, default: Any) -> Any:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.get(p, {})
    return node.get(leaf, default)


def config_hash(cfg: DictConfig) -> str:
    """Identity of a run: its configuration minus VOLATILE_KEYS and later-added fields at their default (the
    encoder and data fingerprints are recorded in results.json next to it)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    for key, default in identity_defaults().items():
        if _get(c, key, default) == default:
            _pop(c, key)
    for key in VOLATILE_KEYS:
        _pop(c, key)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_volatile(key: str) -> bool:
    """Whether a dotted key (or a key below it) is one of VOLATILE_KEYS."""
    return any(key == v or key.startswith(v + ".") for v in VOLATILE_KEYS)


def trained_anything(out: Path) -> bool:
    """Whether a run folder holds any training progress: a checkpoint or a results.json, its own or an ensemble
    member's / fold's below it."""
    out = Path(out)
    return any(out.rglob("*.ckpt")) or any(out.rglob(RESULTS))


def claim_output_dir(out: Path, cfg: DictConfig) -> None:
    """Refuse to reuse a folder that holds another configuration's run (nothing is ever overwritten). A folder
    claimed by a run that stopped before training anything (bad audio, a fold error, a wrong path: the errors whose
    message says to rerun with a corrected setting) is claimed again by the corrected configuration."""
    stamp = read_json(out / IDENTITY)
    mine = config_hash(cfg)
    if stamp and stamp.get("config_hash") != mine and not trained_anything(out):
        print(f"[ser] {out}: claimed by a run of another configuration that never trained (no checkpoint, no "
              f"results); taking it for this one (config_hash {stamp.get('config_hash')} -> {mine})")  # fmt: skip
        atomic_write_json(out / IDENTITY, {"config_hash": mine})
        return
    if stamp and stamp.get("config_hash") != mine:
        raise RunConflictError(
            f"{out} holds a run of a different configuration (config_hash {stamp.get('config_hash')} != {mine}); "
            "choose another output_dir (nothing was changed)"
        )
    if not stamp:
        atomic_write_json(out / IDENTITY, {"config_hash": mine})


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
    res = read_json(Path(output_dir) / RESULTS)
    if res and res.get("config_hash") == config_hash(cfg) and "test/ua" in res:
        return res
    return None


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


def fold_dir(cv_dir: Path | str, fold: int) -> Path:
    """Where `ser cv` puts fold k."""
    return Path(cv_dir) / f"fold_{int(fold)}"
