"""What a run records about where it came from: versions, git commit, encoder and data fingerprints."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional


def git_commit(path: Path | None = None) -> Optional[str]:
    """The project's git commit (with '+dirty' when the tree has changes), or None outside a checkout."""
    root = path or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()  # fmt: skip
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> Dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchaudio", "lightning", "transformers", "torchmetrics", "datasets", "wandb", "omegaconf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    import os

    return f"{platform.node()} ({cpu}, {os.cpu_count()} CPUs, {gpu})"


def provenance(cfg: Any, datamodule: Any = None) -> Dict[str, Any]:
    info: Dict[str, Any] = {"versions": versions(), "git_commit": git_commit(), "machine": machine()}
    if datamodule is not None and getattr(datamodule, "table", None) is not None:
        table = datamodule.table
        info["data_fingerprint"] = table.fingerprint
        info["n_clips"] = len(table.dataset)
        info["skipped_bad_audio"] = len(table.bad_audio)
        info["cropped_clips"] = int(sum(table.dataset["cropped"]))
    return info
