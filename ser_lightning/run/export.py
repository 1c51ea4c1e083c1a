"""`ser export --run runs/x --out heads/x`: copy a run's exported head (or ensemble) to a folder of its own.

The format and its loaders are in run/artifact.py (`load_head`, `load_heads`); `ser predict --run heads/x
AUDIO...` runs the whole path (front end, encoder, head) on audio files.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List, Optional

from ser_lightning.run.artifact import copy_export, export_members, read_meta


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("export", help="copy a run's exported head (safetensors + JSON) to a folder")
    p.add_argument("--run", required=True, help="run folder (holding export/) or an export folder")
    p.add_argument("--out", required=True, help="destination folder (created; must be empty unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite the head files in a non-empty --out")
    p.add_argument("--wandb", nargs="?", const="auto", default=None, metavar="MODE",
                   help="also log the exported model as a W&B model artifact (auto: online with an API key, else offline "
                        "into $WANDB_DIR or ./wandb); --alias adds aliases")  # fmt: skip
    p.add_argument("--alias", action="append", default=[], help="artifact alias (repeatable), e.g. --alias best")

    def run(args: argparse.Namespace) -> int:
        out = copy_export(args.run, args.out, force=args.force)  # checked: the copy loads
        heads = export_members(out)
        meta = read_meta(heads[0])
        if len(heads) > 1:
            print(f"[ser] an ensemble of {len(heads)} heads (their softmax probabilities are averaged)")
        print(f"[ser] exported head ({len(meta['class_names'])} classes: {', '.join(meta['class_names'])}; encoder "
              f"{meta['encoder']['source']} layers {meta['encoder']['layers']}) -> {out}")  # fmt: skip
        if args.wandb:
            where = log_export(out, args.wandb, ["latest", *args.alias])
            print(f"[ser] model artifact logged -> {where}")
        loader = "load_heads" if len(heads) > 1 else "load_head"
        target = "heads" if len(heads) > 1 else "head, meta"
        print(f"      load it: from ser_lightning.run.artifact import {loader}; {target} = {loader}({str(out)!r})")
        return 0

    return run


def log_export(folder: Path, mode: str, aliases: List[str], project: str = "ser_lightning") -> Optional[str]:
    """One run (job_type=export) logging the export folder as a model artifact. Returns the run folder (offline)
    or URL (online); None when mode is disabled."""
    from ser_lightning.review import artifact_name, log_model_artifact
    from ser_lightning.tracking import wandb_mode

    mode = wandb_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    meta = read_meta(export_members(folder)[0])
    run = wandb.init(project=project, job_type="export", name=f"export-{folder.name}",
                     dir=str(os.environ.get("WANDB_DIR") or "."), mode=mode, reinit="finish_previous")  # fmt: skip
    log_model_artifact(run, folder, artifact_name(f"{folder.name}-model"), aliases,
                       {"encoder": meta["encoder"], "class_names": meta["class_names"], "model": meta.get("model")})  # fmt: skip
    where = run.url if mode == "online" else str(Path(run.dir).parent)
    run.finish()
    return where
