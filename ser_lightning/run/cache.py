"""`ser cache`: encode a whole corpus once, storing every requested layer (one encoder pass for all)."""

from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf

from ser_lightning.config import require


def cache_command(cfg: DictConfig, encoder=None) -> dict:
    from ser_lightning.data.datamodule import FeatureSpec, SERDataModule
    from ser_lightning.features.encoder import load_encoder
    from ser_lightning.features.frontend import LengthPolicy
    from ser_lightning.models.module import layer_list

    import torch

    require(cfg, "data.root", "model.encoder")
    if encoder is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        encoder = load_encoder(cfg.model.encoder, device=device, dtype=cfg.model.encoder_dtype, seed=cfg.seed)
    layers = encoder.resolve_layers(layer_list(cfg.model.layers, cfg.model.layer))
    spec = FeatureSpec(layers, LengthPolicy.parse(cfg.model.input_seconds), True, cfg.cache.dir, cfg.cache.dtype,
                       bool(cfg.cache.verify), int(cfg.cache.encode_batch_size))  # fmt: skip
    dm = SERDataModule(OmegaConf.to_container(cfg.data, resolve=True), spec, encoder, seed=cfg.seed)
    start = time.perf_counter()
    table = dm._table()
    ds = table.dataset
    dm.fill(dict(zip(ds["sha256"], ds["path"])), dict(zip(ds["sha256"], ds["duration"])))
    cache = dm.open_cache()
    info = {
        "clips": len(ds), "layers": layers, "cache_dir": str(cache.dir), "bytes": cache.size_bytes(),
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    print(f"[ser] cache ready: {info['clips']} clips x layers {layers} in {cache.dir} "
          f"({info['bytes'] / 2**20:.1f} MiB, {info['seconds']} s)")  # fmt: skip
    if dm.speeds:  # data.speed_perturb: every clip's perturbed copies, one cache per speed
        info["speed_caches"] = {}
        for speed in dm.speeds:
            copies = dm.open_cache(speed)
            info["speed_caches"][str(speed)] = str(copies.dir)
            print(f"[ser] speed {speed:g} copies in {copies.dir} ({copies.size_bytes() / 2**20:.1f} MiB)")
    return info
