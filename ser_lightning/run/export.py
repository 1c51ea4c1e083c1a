"""`ser export --run runs/x --out heads/x`: copy a run's exported head (or ensemble) to a folder of its own.

The format and its loaders are in run/artifact.py (`load_head`, `load_heads`); `ser predict --run heads/x
AUDIO...` runs the whole path (front end, encoder, head) on audio files.
"""

from __future__ import annotations

import argparse

from ser_lightning.run.artifact import copy_export, export_members, read_meta


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("export", help="copy a run's exported head (safetensors + JSON) to a folder")
    p.add_argument("--run", required=True, help="run folder (holding export/) or an export folder")
    p.add_argument("--out", required=True, help="destination folder (created; must be empty unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite the head files in a non-empty --out")

    def run(args: argparse.Namespace) -> int:
        out = copy_export(args.run, args.out, force=args.force)  # checked: the copy loads
        heads = export_members(out)
        meta = read_meta(heads[0])
        if len(heads) > 1:
            print(f"[ser] an ensemble of {len(heads)} heads (their softmax probabilities are averaged)")
        print(f"[ser] exported head ({len(meta['class_names'])} classes: {', '.join(meta['class_names'])}; encoder "
              f"{meta['encoder']['source']} layers {meta['encoder']['layers']}) -> {out}")  # fmt: skip
        loader = "load_heads" if len(heads) > 1 else "load_head"
        target = "heads" if len(heads) > 1 else "head, meta"
        print(f"      load it: from ser_lightning.run.artifact import {loader}; {target} = {loader}({str(out)!r})")
        return 0

    return run
