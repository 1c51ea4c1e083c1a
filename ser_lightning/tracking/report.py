"""`ser report --wandb`: one W&B run (job_type=report) carrying a report's images and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ser_lightning.tracking.mode import wandb_mode


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
