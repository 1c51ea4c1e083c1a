"""The exported-model format: one self-contained folder, safetensors weights + JSON (no pickle). Export,
prediction and ensembles all read and write it through this module.

    <folder>/head.safetensors   the head's weights
    <folder>/head.json          format, class names, encoder identity (source, fingerprint, layers, policy),
                                the head's HeadConfig, the model section, audio settings, seed, feature dtype,
                                and with model.adapt=top|lora its `adapt` section (mode, blocks, fed / read layers)
    <folder>/adapter.safetensors   (model.adapt only) the adapted encoder parameters: LoRA adapters, or the blocks
An ensemble's folder holds `ensemble.json` (its members' sub-folders) and one such head per member.

Load it in Python (no training code, no pickle):

    from ser_lightning.run.artifact import load_head, load_heads
    head, meta = load_head("heads/x")      # SERHead in eval mode, its head.json
    heads = load_heads("heads/x")          # [(head, meta)]: one head, or every member of an ensemble
    # logits = head(features, mask): features (B, T, D) from the encoder layer(s) meta["encoder"] names, mask (B, T)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from omegaconf import OmegaConf

from ser_lightning.run.rundir import EXPORT
from ser_lightning.utils.io import atomic_write_bytes, atomic_write_json, read_json

WEIGHTS = "head.safetensors"
CONFIG = "head.json"
ADAPTER = "adapter.safetensors"
FORMAT = "ser_lightning.head/1"
ENSEMBLE = "ensemble.json"
ENSEMBLE_FORMAT = "ser_lightning.ensemble/1"
COMBINE = "mean of the members' softmax probabilities"
# keys of head.json that every member of one ensemble must share (they see the same features)
SHARED_KEYS = ("class_names", "encoder", "data", "feature_dtype")


def export_head(module: Any, cfg: Any, folder: Path) -> Path:
    """Write a trained SERModule's head into `folder` (head.safetensors + head.json)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS, save(module.head_state()))
    adapt = None
    if getattr(module, "adapter", None) is not None:  # model.adapt=top|lora: the adapted encoder parameters too
        a = module.adapter
        atomic_write_bytes(folder / ADAPTER, save(module.adapter_state()))
        adapt = {"mode": a.mode, "blocks": list(range(a.first, a.last + 1)), "fed_layers": list(module.layers),
                 "read_layers": list(module.read_layers), "lora": OmegaConf.to_container(cfg.model.lora) if a.mode == "lora" else None,
                 "grad_checkpointing": False, "trainable_parameters": a.trainable_parameters()}  # fmt: skip
    atomic_write_json(
        folder / CONFIG,
        {
            **({"adapt": adapt} if adapt else {}),
            "format": FORMAT,
            "class_names": module.class_names,
            "encoder": module.encoder_info,
            "head": module.head.config.to_dict(),
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "data": {k: cfg.data[k] for k in ("sample_rate", "max_seconds", "crop", "min_seconds")},
            # the encoder weights of random:<size> sources depend on the seed
            "seed": int(cfg.seed),
            # training read features rounded to this dtype (the feature cache); prediction does the same
            "feature_dtype": cfg.cache.dtype if cfg.cache.enabled else None,
        },
    )
    return folder


def load_adapter(folder: Path | str, meta: Dict[str, Any], encoder: Any):
    """The AdaptedTop an export holds (head.json `adapt` + adapter.safetensors) over `encoder` (whose weights the
    copied blocks start from: its fingerprint is checked by the caller), in eval mode; None when it has none."""
    from safetensors.torch import load_file

    from ser_lightning.models.adapt import AdaptedTop, LoraSettings

    spec = meta.get("adapt")
    if not spec:
        return None
    folder = Path(folder)
    lora = LoraSettings(**spec["lora"]) if spec.get("lora") else None
    adapter = AdaptedTop(encoder, spec["blocks"], spec["mode"], lora)
    try:
        state = load_file(str(folder / ADAPTER))
    except Exception as e:  # safetensors' own error type names neither the file nor the cure
        raise ValueError(f"{folder / ADAPTER}: unreadable adapted encoder weights ({e}); re-export the run") from None
    expected = {n for n, p in adapter.named_parameters() if p.requires_grad}
    if set(state) != expected:
        raise ValueError(f"{folder / ADAPTER}: holds {len(state)} tensors, the adaptation in {folder / CONFIG} needs "
                         f"{len(expected)} (missing {sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]})")  # fmt: skip
    adapter.load_state_dict(state, strict=False)
    return adapter.eval()


def export_ensemble(out: Path, k: int) -> Path:
    """<out>/export: ensemble.json + member_m/{head.json, head.safetensors} copied from each member's export."""
    folder = out / EXPORT
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for m in range(k):
        src, dst = out / f"member_{m}" / EXPORT, folder / f"member_{m}"
        dst.mkdir(exist_ok=True)
        for name in (WEIGHTS, CONFIG, ADAPTER):
            if name != ADAPTER or (src / name).is_file():
                atomic_write_bytes(dst / name, (src / name).read_bytes())
        names.append(dst.name)
    atomic_write_json(folder / ENSEMBLE, {"format": ENSEMBLE_FORMAT, "members": names, "combine": COMBINE})
    load_heads(folder)  # the export must load (and its members agree)
    return folder


def find_export(run: Path | str) -> Path:
    """The export folder of a run: RUN itself (head.json in it) or RUN/export. A CV folder is refused with
    the list of its folds (pass one fold's folder)."""
    run = Path(run)
    for folder in (run, run / EXPORT):
        if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file() or (folder / ENSEMBLE).is_file():
            return folder
    folds = sorted({p.parent.parent.name for name in (CONFIG, ENSEMBLE) for p in run.glob(f"fold_*/{EXPORT}/{name}")})
    if folds:
        raise FileNotFoundError(
            f"{run} is a cross-validation folder with one head per fold ({', '.join(folds)}); "
            f"pass one of them, e.g. --run {run / folds[0]}"
        )
    raise FileNotFoundError(f"{run}: no exported head ({CONFIG} + {WEIGHTS}) in it or in {run / EXPORT}")


def export_members(folder: Path | str) -> List[Path]:
    """The head folders of an export: [folder] for one head, the member folders of an ensemble."""
    folder = Path(folder)
    spec = read_json(folder / ENSEMBLE)
    return [folder / m for m in spec["members"]] if spec else [folder]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_meta(folder: Path | str) -> Dict[str, Any]:
    """The parsed head.json of a head folder; ValueError naming the file and what is wrong with it."""
    path = Path(folder) / CONFIG
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # missing, unreadable, not UTF-8, truncated or otherwise not JSON
        raise ValueError(f"{path}: unreadable head config ({e}); re-export the run or copy the file again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} head config (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    names = meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        raise ValueError(f"{path}: 'class_names' must be a non-empty list of strings (got {_short(names)}); the file is damaged")
    for key in ("encoder", "model", "data"):
        if not isinstance(meta.get(key), dict):
            raise ValueError(f"{path}: '{key}' must be an object (got {_short(meta.get(key))}); the file is damaged")
    if "head" in meta and not isinstance(meta["head"], dict):
        raise ValueError(f"{path}: 'head' must be an object (got {_short(meta['head'])}); the file is damaged")
    return meta


def head_config(meta: Dict[str, Any]):
    """The HeadConfig of a head.json (exports made before head.json held one: rebuilt from its model section)."""
    from ser_lightning.models.head import HeadConfig

    if "head" in meta:
        return HeadConfig.from_dict(meta["head"])
    enc = meta["encoder"]
    return HeadConfig.from_options(meta["model"], input_dim=enc["output_dim"], num_classes=len(meta["class_names"]),
                                   num_layers=len(enc["layers"]))  # fmt: skip


def load_head(folder: Path | str):
    """(SERHead in eval mode, its JSON config) from an exported folder. Reads safetensors only. A damaged
    head.json or head.safetensors is a ValueError naming the file and the problem."""
    import torch
    from safetensors.torch import load_file

    from ser_lightning.models.head import SERHead

    folder = Path(folder)
    meta = read_meta(folder)
    try:
        config = head_config(meta)
        head = SERHead(config)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{folder / CONFIG}: does not describe a valid head ({what}); the file is damaged") from None
    if config.num_classes != len(meta["class_names"]):
        raise ValueError(f"{folder / CONFIG}: the head has {config.num_classes} classes but class_names lists "
                         f"{len(meta['class_names'])}; the file is damaged")  # fmt: skip
    weights = folder / WEIGHTS
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error type, naming neither the file nor the cure
        raise ValueError(f"{weights}: unreadable head weights ({e}); re-export the run or copy the file again") from None
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"{weights}: NaN or infinite values in {', '.join(bad[:5])}; re-export the run or copy the file again")
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{weights}: the weights do not fit the head {CONFIG} describes ({e})") from None
    return head.eval(), meta


def load_heads(folder: Path | str) -> List[tuple]:
    """[(SERHead in eval mode, its head.json)] of an export folder: one head, or an ensemble's members."""
    folder = Path(folder)
    spec = read_json(folder / ENSEMBLE)
    if spec is None:
        if (folder / ENSEMBLE).exists():
            raise ValueError(f"{folder / ENSEMBLE}: unreadable ensemble spec (not valid JSON); re-export or copy it again")
        return [load_head(folder)]
    if not isinstance(spec, dict) or spec.get("format") != ENSEMBLE_FORMAT or not isinstance(spec.get("members"), list) \
            or not spec["members"] or not all(isinstance(m, str) for m in spec["members"]):  # fmt: skip
        fmt = spec.get("format") if isinstance(spec, dict) else None
        raise ValueError(f"{folder / ENSEMBLE}: not a {ENSEMBLE_FORMAT} ensemble (format {fmt!r}, or no list of members)")
    heads = []
    for name in spec["members"]:
        member = (folder / name).resolve()
        if folder.resolve() not in member.parents:
            raise ValueError(f"{folder / ENSEMBLE}: member {name!r} is outside the export folder")
        heads.append(load_head(member))
    meta0 = heads[0][1]
    for name, (_, meta) in zip(spec["members"], heads):
        for key in SHARED_KEYS:
            if meta.get(key) != meta0.get(key):
                raise ValueError(f"{folder / ENSEMBLE}: member {name} has another {key!r} than {spec['members'][0]}; "
                                 "an ensemble's heads must read the same encoder features and classes")  # fmt: skip
        if meta["model"].get("feature_norm") != meta0["model"].get("feature_norm"):
            raise ValueError(f"{folder / ENSEMBLE}: members differ in model.feature_norm")
    return heads


def copy_export(run: Path | str, out: Path | str, force: bool = False) -> Path:
    """Copy a run's exported head to `out` (checked by loading it); refuses to overwrite another head."""
    src = find_export(run)
    out = Path(out)
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the run's own export folder")
    existing = [p.name for p in out.iterdir()] if out.is_dir() else []
    if existing and not force:
        raise FileExistsError(f"{out} is not empty ({', '.join(sorted(existing)[:5])}); choose another --out or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    if (src / ENSEMBLE).is_file():  # an ensemble: its members' heads, then ensemble.json
        load_heads(src)  # refuses members outside the folder before anything is copied
        members = read_json(src / ENSEMBLE)["members"]
        files = [f"{m}/{name}" for m in members for name in (WEIGHTS, CONFIG, ADAPTER)] + [ENSEMBLE]
    else:
        files = [WEIGHTS, CONFIG, ADAPTER]
    files = [name for name in files if name.rsplit("/", 1)[-1] != ADAPTER or (src / name).is_file()]
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / name, (src / name).read_bytes())
    load_heads(out)  # the copy must load
    return out
