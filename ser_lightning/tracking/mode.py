"""How and where a W&B run is written: the resolved mode (online / offline / disabled), which process writes
(global rank 0 only), the folder W&B writes to, and the stable run id that lets a rerun continue its run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def wandb_dir(cfg: Any, output_dir: Path) -> Path:
    """Where W&B writes: wandb.dir, else $WANDB_DIR (what W&B users set to keep runs elsewhere), else the run folder."""
    return Path(cfg.wandb.dir or os.environ.get("WANDB_DIR") or output_dir)


def _stable_run_id(output_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:12]
