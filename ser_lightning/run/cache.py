"""`ser cache`: encode a whole corpus once, storing every requested layer (one encoder pass for all)."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from ser_lightning.config import require
from ser_lightning.run.build import build_datamodule


def cache_command(cfg: DictConfig, encoder=None) -> dict:
    require(cfg, "data.root", "model.encoder")
    encoder, dm = build_datamodule(cfg, encoder, cached=True)
    layers = dm.features.layers
    start = time.perf_counter()
    ds = dm.load_table().dataset
    dm.fill(dict(zip(ds["sha256"], ds["path"])), dict(zip(ds["sha256"], ds["duration"])))
    cache = dm.open_cache()
    info = {
        "clips": len(ds), "layers": layers, "cache_dir": str(cache.dir), "bytes": cache.size_bytes(),
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    print(f"[ser] cache ready: {info['clips']} clips x layers {layers} in {cache.dir} "
          f"({info['bytes'] / 2**20:.1f} MiB, {info['seconds']} s)")  # fmt: skip
    info.update(_input_report(dm, cfg, Path(cache.dir)))
    if dm.speeds:  # data.speed_perturb: every clip's perturbed copies, one cache per speed
        info["speed_caches"] = {}
        for speed in dm.speeds:
            copies = dm.open_cache(speed)
            info["speed_caches"][str(speed)] = str(copies.dir)
            print(f"[ser] speed {speed:g} copies in {copies.dir} ({copies.size_bytes() / 2**20:.1f} MiB)")
    return info


def _input_report(dm, cfg: DictConfig, folder: Path) -> dict:
    """Skipped (data.on_bad_audio=skip) and cropped clips: written beside the cache (table_report.json,
    bad_audio.json) and the first ones printed, so a skip is never only a count."""
    from omegaconf import OmegaConf

    from ser_lightning.data.table import write_reports

    table = dm.load_table()
    write_reports(table, OmegaConf.to_container(cfg.data, resolve=True), folder)
    report = table.report()
    if report["skipped"] or report["cropped"]:
        print(f"[ser] input: {report['skipped']} clip(s) skipped as unusable, {report['cropped']} cropped to "
              f"data.max_seconds={cfg.data.max_seconds:g}; every file and reason: {folder / 'bad_audio.json'}, "
              f"{folder / 'table_report.json'}")  # fmt: skip
        for bad in report["skipped_files"][:10]:
            print(f"[ser]   skipped {bad['path']}: {bad['reason']}")
        if report["skipped"] > 10:
            print(f"[ser]   ... and {report['skipped'] - 10} more (bad_audio.json)")
    return {"skipped": report["skipped"], "cropped": report["cropped"], "bad_audio": str(folder / "bad_audio.json")}
