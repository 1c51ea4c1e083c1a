"""Audio -> encoder features for a batch of clips, and filling the feature cache in one encoder pass."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch

from ser_lightning.audio import change_speed, crop, decode
from ser_lightning.features.cache import DTYPES, FeatureCache
from ser_lightning.features.encoder import FrozenWhisperEncoder
from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend, encoder_frames, mel_frames
from ser_lightning.utils.io import fault_point

SHARD_CLIPS = 256  # a kill loses at most one shard's worth of encoding


def load_clip(path: str, sample_rate: int, max_seconds: float, where: str, min_seconds: float = 0.0,
              speed: float = 1.0) -> np.ndarray:  # fmt: skip
    """Decode -> (speed perturbation, data.speed_perturb) -> crop to max_seconds."""
    wave, _ = decode(path, sample_rate, min_seconds)
    return crop(change_speed(wave, speed, sample_rate), int(max_seconds * sample_rate), where)


@torch.no_grad()
def encode_waves(
    encoder: FrozenWhisperEncoder,
    frontend: LogMelFrontend,
    waves: Sequence[np.ndarray],
    policy: LengthPolicy,
    layers: Sequence[int],
) -> Dict[int, List[np.ndarray]]:
    """Encode clips together; per layer, a list of (T_clip, D) float32 arrays trimmed to each clip's audio."""
    return encode_clips(encoder, frontend, waves, policy, layers)[0]


@torch.no_grad()
def encode_clips(
    encoder: FrozenWhisperEncoder,
    frontend: LogMelFrontend,
    waves: Sequence[np.ndarray],
    policy: LengthPolicy,
    layers: Sequence[int],
    input_frames: bool = False,
) -> Tuple[Dict[int, List[np.ndarray]], List[int]]:
    """(per layer a list of (T_clip, D) float32 arrays, each clip's frames of its own audio). The arrays hold the
    clip's own frames, or with `input_frames` every frame the encoder attended to: the clip and its padding under
    10 s / 30 s / clip+T inputs, what adapted blocks are fed (models/adapt.py); the clip's own frames are then the
    first `content` of them."""
    device = next(encoder.parameters()).device
    feats, frames, content = frontend(waves, policy, device)
    out = encoder(feats, frames, content, layers)
    content_lengths = out.mask.sum(1).tolist()
    keep = out.input_mask if input_frames and out.input_mask is not None else out.mask  # (B, T)
    lengths = keep.sum(1).tolist()
    result: Dict[int, List[np.ndarray]] = {}
    for k, h in out.layers.items():
        # one device->host transfer per layer, in the compute dtype (bf16 is half the bytes of fp32), cut to the
        # longest clip's frames; then a compact fp32 copy per clip (exact: bf16/fp16 -> fp32 is lossless). The
        # copy matters: on the CPU `.cpu()` / `.float()` return the same tensor, and a view would keep the whole
        # padded (B, T, D) output alive for as long as the shard is being collected (~5 GB per shard at 30 s).
        host = h[:, : max(lengths)].cpu().float()
        result[k] = [host[i, : lengths[i]].numpy().copy() for i in range(len(waves))]
    return result, [int(n) for n in content_lengths]


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
    speed: float = 1.0,
) -> FillStats:
    """Encode every clip whose features (for any of `layers`) are missing; one encoder pass stores all layers.
    speed != 1: the clips are speed-perturbed first (the cache must be the one keyed with that speed)."""
    layers = encoder.resolve_layers(layers)
    start = time.perf_counter()
    with cache.lock():
        cache.clean_temp()
        cache.refresh()  # another worker may have filled it while we waited for the lock
        todo = cache.missing(list(paths_by_hash), layers)
        if not todo:
            return FillStats(0, len(paths_by_hash), 0.0, 0.0)
        seconds = [durations[h] / speed for h in todo]
        if cache.keeps_input_frames:  # the padding frames are stored too
            seconds = [policy.input_samples(int(min(d, max_seconds) * sample_rate)) / sample_rate for d in seconds]
        _check_space(cache, encoder, seconds, len(layers), sample_rate, max_seconds)
        frontend = LogMelFrontend(encoder.num_mel_bins)
        todo.sort(key=lambda h: durations[h])  # similar lengths together: little padding
        audio_seconds = 0.0
        what = f"encoding {len(todo)} clips ({encoder.source}, layers {layers}" + (f", speed {speed:g})" if speed != 1.0 else ")")
        bar = _progress(len(todo), progress, what)
        shards = [todo[s : s + SHARD_CLIPS] for s in range(0, len(todo), SHARD_CLIPS)]
        batches = [sh[b : b + batch_size] for sh in shards for b in range(0, len(sh), batch_size)]

        def load(batch: List[str]) -> List[np.ndarray]:
            return [load_clip(paths_by_hash[h], sample_rate, max_seconds, crop_where, speed=speed) for h in batch]

        loaded = _prefetch(batches, load)  # the next batch is decoded while this one is encoded
        for shard_hashes in shards:
            shard: Dict[int, List[np.ndarray]] = {k: [] for k in layers}
            content: List[int] = []
            for b in range(0, len(shard_hashes), batch_size):
                batch, waves = next(loaded)
                audio_seconds += sum(len(w) for w in waves) / sample_rate
                arrays_by_layer, content_lengths = encode_clips(encoder, frontend, waves, policy, layers, cache.keeps_input_frames)
                for k, arrays in arrays_by_layer.items():
                    shard[k].extend(arrays)
                content.extend(content_lengths)
                bar(len(batch))
                fault_point("encode_batch")
            cache.write_shard(shard_hashes, shard, content if cache.keeps_input_frames else None)
        bar(0, done=True)
    return FillStats(len(todo), len(paths_by_hash) - len(todo), time.perf_counter() - start, audio_seconds)


def _prefetch(batches: Sequence[List[str]], load) -> Iterator[Tuple[List[str], List[np.ndarray]]]:
    """Yield (batch, load(batch)) in order, loading batch i+1 in a worker thread while the caller encodes batch i
    (audio decoding and resampling release the GIL). Errors surface at the batch that raised them."""
    from concurrent.futures import ThreadPoolExecutor

    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ser-decode") as pool:
        future = pool.submit(load, batches[0])
        for i, batch in enumerate(batches):
            waves = future.result()
            if i + 1 < len(batches):
                future = pool.submit(load, batches[i + 1])
            yield batch, waves


def _check_space(cache: FeatureCache, encoder: FrozenWhisperEncoder, durations: Sequence[float], n_layers: int,
                 sample_rate: int, max_seconds: float) -> None:  # fmt: skip
    """Refuse to start encoding (a clear error, before the long work) when the cache's disk cannot hold it."""
    import errno
    import shutil

    frames = sum(encoder_frames(mel_frames(int(min(d, max_seconds) * sample_rate))) for d in durations)
    need = frames * encoder.output_dim * np.dtype(DTYPES[cache.dtype]).itemsize * n_layers + (16 << 20)
    free = shutil.disk_usage(cache.dir).free
    if free < need:
        raise OSError(errno.ENOSPC, f"the feature cache {cache.dir} needs about {need / 2**20:.0f} MiB for "
                      f"{len(durations)} clips but only {free / 2**20:.0f} MiB are free; free space or set cache.dir")  # fmt: skip


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
