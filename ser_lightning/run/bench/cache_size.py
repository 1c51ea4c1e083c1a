"""Bytes per clip and layer on disk: our feature-cache shards against one fp32 .npy file per clip and layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np


def bench_cache(frames_per_clip: Sequence[int], dim: int, layers: Sequence[int], workdir: Path,
                cache_dtype: str = "fp16") -> Dict[str, Any]:  # fmt: skip
    """Bytes per clip and layer, both sides written to disk and measured.

    Ours: one FeatureCache shard holding every clip's frames (trimmed to its audio) for the layers.
    Paper: one .npy file of 1500 x dim float32 per clip and layer (written for one clip: all are the same)."""
    from ser_lightning.features.cache import DTYPES, FeatureCache

    workdir.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(workdir / "ours", {"bench": "cache-size"}, dtype=cache_dtype, verify=False)
    np_dtype = DTYPES[cache_dtype]
    hashes = [f"clip{i:07d}" for i in range(len(frames_per_clip))]
    feats = {k: [np.zeros((int(t), dim), np_dtype) for t in frames_per_clip] for k in layers}
    cache.write_shard(hashes, feats)
    ours_total = cache.size_bytes()
    paper_file = workdir / "paper_one_clip_one_layer.npy"
    np.save(paper_file, np.zeros((1500, dim), np.float32))
    paper_bytes = paper_file.stat().st_size
    n, nl = len(frames_per_clip), len(layers)
    return {
        "clips": n, "layers": list(layers), "dim": dim, "ours_bytes_total": ours_total,
        "ours_bytes_per_clip_layer": ours_total / (n * nl), "paper_bytes_per_clip_layer": paper_bytes,
        "mean_frames": float(np.mean(frames_per_clip)), "cache_dtype": cache_dtype,
    }  # fmt: skip
