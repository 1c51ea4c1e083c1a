"""Audio -> encoder features for a batch of clips, and filling the feature cache in one encoder pass."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch

from ser_lightning.data.audio import crop, decode
from ser_lightning.features.cache import FeatureCache
from ser_lightning.features.encoder import FrozenWhisperEncoder
from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend

SHARD_CLIPS = 256  # a kill loses at most one shard's worth of encoding


def load_clip(path: str, sample_rate: int, max_seconds: float, where: str, min_seconds: float = 0.0) -> np.ndarray:
    wave, _ = decode(path, sample_rate, min_seconds)
    return crop(wave, int(max_seconds * sample_rate), where)


@torch.no_grad()
def encode_waves(
    encoder: FrozenWhisperEncoder,
    frontend: LogMelFrontend,
    waves: Sequence[np.ndarray],
    policy: LengthPolicy,
    layers: Sequence[int],
) -> Dict[int, List[np.ndarray]]:
    """Encode clips together; per layer, a list of (T_clip, D) float32 arrays trimmed to each clip's audio."""
    device = next(encoder.parameters()).device
    feats, frames, content = frontend(waves, policy, device)
    out = encoder(feats, frames, content, layers)
    lengths = content.tolist()
    return {
        k: [h[i, : lengths[i]].float().cpu().numpy() for i in range(len(waves))] for k, h in out.layers.items()
    }


@dataclass
class FillStats:
    encoded: int
    cached: int
    seconds: float
    audio_seconds: float


def fill_cache(
    cache: FeatureCache,
    encoder: FrozenWhisperEncoder,
    paths_by_hash: Dict[str, str],
    durations: Dict[str, float],
    layers: Sequence[int],
    policy: LengthPolicy,
    sample_rate: int = 16000,
    max_seconds: float = 30.0,
    crop_where: str = "center",
    batch_size: int = 16,
    progress: bool = True,
) -> FillStats:
    """Encode every clip whose features (for any of `layers`) are missing; one encoder pass stores all layers."""
    layers = encoder.resolve_layers(layers)
    start = time.perf_counter()
    with cache.lock():
        cache.clean_temp()
        cache.refresh()  # another worker may have filled it while we waited for the lock
        todo = cache.missing(list(paths_by_hash), layers)
        if not todo:
            return FillStats(0, len(paths_by_hash), 0.0, 0.0)
        frontend = LogMelFrontend(encoder.num_mel_bins)
        todo.sort(key=lambda h: durations[h])  # similar lengths together: little padding
        audio_seconds = 0.0
        bar = _progress(len(todo), progress, f"encoding {len(todo)} clips ({encoder.source}, layers {layers})")
        for s in range(0, len(todo), SHARD_CLIPS):
            shard_hashes = todo[s : s + SHARD_CLIPS]
            shard: Dict[int, List[np.ndarray]] = {k: [] for k in layers}
            for b in range(0, len(shard_hashes), batch_size):
                batch = shard_hashes[b : b + batch_size]
                waves = [load_clip(paths_by_hash[h], sample_rate, max_seconds, crop_where) for h in batch]
                audio_seconds += sum(len(w) for w in waves) / sample_rate
                for k, arrays in encode_waves(encoder, frontend, waves, policy, layers).items():
                    shard[k].extend(arrays)
                bar(len(batch))
            cache.write_shard(shard_hashes, shard)
        bar(0, done=True)
    return FillStats(len(todo), len(paths_by_hash) - len(todo), time.perf_counter() - start, audio_seconds)


def _progress(total: int, enabled: bool, title: str):
    """A small tqdm bar (tqdm ships with the stack); silent when disabled."""
    if not enabled:
        return lambda n, done=False: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=title, unit="clip", dynamic_ncols=True)

    def update(n: int, done: bool = False) -> None:
        bar.update(n)
        if done:
            bar.close()

    return update
