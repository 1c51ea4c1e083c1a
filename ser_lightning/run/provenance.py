"""What a run records about where it came from: versions, git commit, machine, encoder and data fingerprints,
the resolved configuration and every clip it used.

- `provenance(cfg, dm)`: the compact record stored in results.json under "provenance".
- `write_provenance(path, cfg, dm, encoder_info)`: provenance.json next to it, adding the resolved config,
  the command line, the encoder identity and the file list (path, bytes, sha256, label, speaker, split).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ser_lightning.utils.io import atomic_write_json
from ser_lightning.utils.machine import machine_summary, versions


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    # an argument list, never a shell string
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)


def git_commit(path: Path | None = None) -> Optional[str]:
    """The project's git commit (with '+dirty' when tracked files have changes), or None outside a checkout."""
    root = path or Path(__file__).resolve().parents[2]
    try:
        head = _git(root, "rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def git_diff_sha256(path: Path | None = None) -> Optional[str]:
    """sha256 of `git diff HEAD` (tells two dirty trees apart), None when clean or outside a checkout."""
    root = path or Path(__file__).resolve().parents[2]
    try:
        diff = _git(root, "diff", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    if diff.returncode != 0 or not diff.stdout:
        return None
    return hashlib.sha256(diff.stdout.encode()).hexdigest()


def data_content_fingerprint(dataset: Any) -> str:
    """sha256 over the clips' audio content hashes, labels and speakers (order-free, path-free)."""
    rows = sorted(f"{h}|{y}|{s}" for h, y, s in zip(dataset["sha256"], dataset["label_name"], dataset["speaker"]))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def provenance(cfg: Any, datamodule: Any = None) -> Dict[str, Any]:
    import torch

    info: Dict[str, Any] = {
        "versions": versions(), "git_commit": git_commit(), "git_diff_sha256": git_diff_sha256(),
        "machine": machine_summary(), "seed": int(cfg.seed), "deterministic": bool(cfg.trainer.deterministic),
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    if datamodule is not None and getattr(datamodule, "table", None) is not None:
        table = datamodule.table
        info["data_fingerprint"] = table.fingerprint
        info["data_content_fingerprint"] = data_content_fingerprint(table.dataset)
        info["n_clips"] = len(table.dataset)
        info["skipped_bad_audio"] = len(table.bad_audio)
        info["cropped_clips"] = int(sum(table.dataset["cropped"]))
    return info


def _file_bytes(path: str) -> Optional[int]:
    if "::" in path:  # a zip member: its content hash identifies it
        return None
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def data_files(datamodule: Any) -> List[Dict[str, Any]]:
    """Every clip of the run: path, bytes, content sha256, label, speaker and split (train / val / test)."""
    split_of: Dict[str, str] = {}
    for name, d in getattr(datamodule, "splits", {}).items():
        for key in d["path"]:
            split_of[key] = name
    ds = datamodule.table.dataset
    return [
        {"path": p, "bytes": _file_bytes(p), "sha256": h, "label": y, "speaker": s, "split": split_of.get(p)}
        for p, h, y, s in zip(ds["path"], ds["sha256"], ds["label_name"], ds["speaker"])
    ]


def write_provenance(path: Path | str, cfg: Any, datamodule: Any = None, encoder_info: Optional[Dict[str, Any]] = None,
                     compact: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:  # fmt: skip
    """provenance.json: the compact record (`compact`, else computed) plus resolved config, command line,
    encoder identity and file list."""
    from omegaconf import OmegaConf

    from ser_lightning.run.rundir import config_hash

    record = dict(compact) if compact is not None else provenance(cfg, datamodule)
    record.update(
        {
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
            "config_hash": config_hash(cfg),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "encoder": dict(encoder_info or {}),
        }
    )
    if datamodule is not None and getattr(datamodule, "table", None) is not None:
        record["data_files"] = data_files(datamodule)
    atomic_write_json(path, record)
    return record
