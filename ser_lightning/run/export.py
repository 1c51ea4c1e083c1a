"""Export a trained head as one self-contained folder: safetensors weights + JSON config (no pickle).

    ser export --run runs/x --out heads/x        # copies runs/x/export (head.safetensors + head.json)

Load it in Python (no ser_lightning training code, no pickle):

    from ser_lightning.run.export import load_head
    head, meta = load_head("heads/x")      # SERHead in eval mode, the JSON config
    meta["class_names"], meta["encoder"]["source"], meta["encoder"]["fingerprint"], meta["encoder"]["layers"]
    # logits = head(features, mask): features (B, T, D) from the encoder layer(s) meta names, mask (B, T)

`ser predict --run heads/x AUDIO...` runs the whole path (front end, encoder, head) on audio files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf

from ser_lightning.utils.io import atomic_write_bytes, atomic_write_json, read_json

WEIGHTS = "head.safetensors"
CONFIG = "head.json"
FORMAT = "ser_lightning.head/1"


def export_head(module: Any, cfg: Any, folder: Path) -> Path:
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS, save(module.head_state()))
    m = OmegaConf.to_container(cfg.model, resolve=True)
    atomic_write_json(
        folder / CONFIG,
        {
            "format": FORMAT,
            "class_names": module.class_names,
            "encoder": module.encoder_info,
            "model": m,
            "data": {k: cfg.data[k] for k in ("sample_rate", "max_seconds", "crop", "min_seconds")},
            # the encoder weights of random:<size> sources depend on the seed
            "seed": int(cfg.seed),
            # training read features rounded to this dtype (the feature cache); prediction does the same
            "feature_dtype": cfg.cache.dtype if cfg.cache.enabled else None,
        },
    )
    return folder


def find_export(run: Path | str) -> Path:
    """The export folder of a run: RUN itself (head.json in it) or RUN/export. A CV folder is refused with
    the list of its folds (pass one fold's folder)."""
    from ser_lightning.run.ensemble import ENSEMBLE

    run = Path(run)
    for folder in (run, run / "export"):
        if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file() or (folder / ENSEMBLE).is_file():
            return folder
    folds = sorted({p.parent.parent.name for name in (CONFIG, ENSEMBLE) for p in run.glob(f"fold_*/export/{name}")})
    if folds:
        raise FileNotFoundError(
            f"{run} is a cross-validation folder with one head per fold ({', '.join(folds)}); "
            f"pass one of them, e.g. --run {run / folds[0]}"
        )
    raise FileNotFoundError(f"{run}: no exported head ({CONFIG} + {WEIGHTS}) in it or in {run / 'export'}")


def read_meta(folder: Path | str) -> Dict[str, Any]:
    import json

    path = Path(folder) / CONFIG
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable head config ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} head config (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta


def load_head(folder: Path | str):
    """(SERHead in eval mode, its JSON config) from an exported folder. Reads safetensors only."""
    from safetensors.torch import load_file

    from ser_lightning.models.head import SERHead

    folder = Path(folder)
    meta = read_meta(folder)
    m, enc = meta["model"], meta["encoder"]
    head = SERHead(
        input_dim=enc["output_dim"], num_classes=len(meta["class_names"]), pooling=m["pooling"],
        proj_dim=m["proj_dim"], heads=m["heads"], head_dim=m["head_dim"], dropout=m["dropout"],
        num_layers=len(enc["layers"]), fusion=m["fusion"], fusion_layernorm=m["fusion_layernorm"],
        num_queries=m["num_queries"], feature_norm=m.get("feature_norm", "none"), context=m.get("context", "none"),
        context_layers=m.get("context_layers", 1),
    )  # fmt: skip
    head.load_state_dict(load_file(str(folder / WEIGHTS)))
    return head.eval(), meta


def copy_export(run: Path | str, out: Path | str, force: bool = False) -> Path:
    """Copy a run's exported head to `out` (checked by loading it); refuses to overwrite another head."""
    src = find_export(run)
    out = Path(out)
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the run's own export folder")
    existing = [p.name for p in out.iterdir()] if out.is_dir() else []
    if existing and not force:
        raise FileExistsError(f"{out} is not empty ({', '.join(sorted(existing)[:5])}); choose another --out or pass --force")
    from ser_lightning.run.ensemble import ENSEMBLE, load_heads

    out.mkdir(parents=True, exist_ok=True)
    if (src / ENSEMBLE).is_file():  # an ensemble: its members' heads, then ensemble.json
        load_heads(src)  # refuses members outside the folder before anything is copied
        members = read_json(src / ENSEMBLE)["members"]
        files = [f"{m}/{name}" for m in members for name in (WEIGHTS, CONFIG)] + [ENSEMBLE]
    else:
        files = [WEIGHTS, CONFIG]
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / name, (src / name).read_bytes())
    load_heads(out)  # the copy must load
    return out


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("export", help="copy a run's exported head (safetensors + JSON) to a folder")
    p.add_argument("--run", required=True, help="run folder (holding export/) or an export folder")
    p.add_argument("--out", required=True, help="destination folder (created; must be empty unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite the head files in a non-empty --out")

    def run(args: argparse.Namespace) -> int:
        from ser_lightning.run.ensemble import load_heads

        out = copy_export(args.run, args.out, force=args.force)
        heads = load_heads(out)
        meta = heads[0][1]
        if len(heads) > 1:
            print(f"[ser] an ensemble of {len(heads)} heads (their softmax probabilities are averaged)")
        print(f"[ser] exported head ({len(meta['class_names'])} classes: {', '.join(meta['class_names'])}; encoder "
              f"{meta['encoder']['source']} layers {meta['encoder']['layers']}) -> {out}")  # fmt: skip
        if len(heads) > 1:
            print(f"      load it: from ser_lightning.run.ensemble import load_heads; heads = load_heads({str(out)!r})")
        else:
            print(f"      load it: from ser_lightning.run.export import load_head; head, meta = load_head({str(out)!r})")
        return 0

    return run

