"""Export a trained head as one self-contained folder: safetensors weights + JSON config (no pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf

from ser_lightning.utils.io import atomic_write_json

WEIGHTS = "head.safetensors"
CONFIG = "head.json"


def export_head(module: Any, cfg: Any, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(module.head_state(), str(tmp))
    tmp.replace(folder / WEIGHTS)
    m = OmegaConf.to_container(cfg.model, resolve=True)
    atomic_write_json(
        folder / CONFIG,
        {
            "format": "ser_lightning.head/1",
            "class_names": module.class_names,
            "encoder": module.encoder_info,
            "model": m,
            "data": {k: cfg.data[k] for k in ("sample_rate", "max_seconds", "crop")},
        },
    )
    return folder


def load_head(folder: Path | str):
    """(SERHead in eval mode, its JSON config) from an exported folder. Reads safetensors only."""
    import json

    from safetensors.torch import load_file

    from ser_lightning.models.head import SERHead

    folder = Path(folder)
    meta: Dict[str, Any] = json.loads((folder / CONFIG).read_text())
    m, enc = meta["model"], meta["encoder"]
    head = SERHead(
        input_dim=enc["output_dim"], num_classes=len(meta["class_names"]), pooling=m["pooling"],
        proj_dim=m["proj_dim"], heads=m["heads"], head_dim=m["head_dim"], dropout=m["dropout"],
        num_layers=len(enc["layers"]), fusion=m["fusion"], fusion_layernorm=m["fusion_layernorm"],
        num_queries=m["num_queries"],
    )  # fmt: skip
    head.load_state_dict(load_file(str(folder / WEIGHTS)))
    return head.eval(), meta
