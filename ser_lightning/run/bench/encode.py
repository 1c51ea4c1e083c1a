"""Encoding throughput: ours (length-sorted batches, masked any-length forward) vs the paper's recipe, per input policy."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from ser_lightning.run.bench.memory import PeakMemory, _sync
from ser_lightning.run.bench.synthetic import SAMPLE_RATE, length_batches


def time_ours(encoder: Any, waves: Sequence[np.ndarray], policy: Any, layers: Sequence[int], batch_size: int,
              max_batch_samples: Optional[int] = None, warmup: bool = True) -> Dict[str, Any]:  # fmt: skip
    """Our path, every clip timed: length-sorted batches -> batched log-mel -> masked forward up to max(layers).

    Returns seconds (total, and split into front end / encoder), clips, audio seconds, peak memory."""
    from ser_lightning.features.frontend import LogMelFrontend

    device = next(encoder.parameters()).device
    frontend = LogMelFrontend(encoder.num_mel_bins)
    lengths = [policy.input_samples(len(w)) for w in waves]
    batches = length_batches(lengths, batch_size, max_batch_samples)
    if warmup:  # allocator, kernels (and on CUDA / compiled: the longest batch's shapes too)
        heavy = device.type == "cuda" or getattr(encoder, "compiled", False)
        for b in sorted({0, len(batches) - 1} if heavy else {0}):
            encoder(*frontend([waves[i] for i in batches[b]], policy, device), layers)
        _sync(device)
    cuda = device.type == "cuda"
    frontend_s = encoder_s = 0.0
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        for batch in batches:
            t0 = time.perf_counter()
            feats = frontend([waves[i] for i in batch], policy, device)
            if not cuda:  # on the CPU the split is free; on CUDA a sync here would hide the overlap
                t1 = time.perf_counter()
                frontend_s += t1 - t0
            encoder(*feats, layers)
            if not cuda:
                encoder_s += time.perf_counter() - t1
        _sync(device)
        total = time.perf_counter() - start
    if cuda:  # a second pass with syncs gives the split (the throughput above is the unsynchronised pass)
        for batch in batches:
            t0 = time.perf_counter()
            feats = frontend([waves[i] for i in batch], policy, device)
            _sync(device)
            t1 = time.perf_counter()
            encoder(*feats, layers)
            _sync(device)
            frontend_s += t1 - t0
            encoder_s += time.perf_counter() - t1
    return {
        "seconds": total, "frontend_s": frontend_s, "encoder_s": encoder_s, "clips": len(waves),
        "clips_timed": len(waves), "audio_s": sum(len(w) for w in waves) / SAMPLE_RATE, "batches": len(batches),
        "peak_bytes": mem.peak_bytes, "memory_kind": mem.kind,
    }  # fmt: skip


def time_paper(encoder_fp32: Any, waves: Sequence[np.ndarray], layer: int) -> Dict[str, Any]:
    """The paper's recipe on each given clip: HF feature extractor (30 s padding, on the CPU), the whole fp32
    encoder through transformers with output_hidden_states, batch 1; the chosen layer's 1500 frames."""
    import torch
    from transformers import WhisperFeatureExtractor

    device = next(encoder_fp32.parameters()).device
    extractor = WhisperFeatureExtractor(feature_size=encoder_fp32.num_mel_bins)
    hf = encoder_fp32.encoder

    def one(wave: np.ndarray) -> torch.Tensor:
        feats = extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features.to(device)
        with torch.no_grad():
            return hf(feats, output_hidden_states=True).hidden_states[layer]

    one(waves[0])  # warm-up
    _sync(device)
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        for wave in waves:
            one(wave)
        _sync(device)
        total = time.perf_counter() - start
    return {
        "seconds": total, "clips_timed": len(waves), "per_clip_s": total / len(waves), "peak_bytes": mem.peak_bytes,
        "memory_kind": mem.kind,
    }  # fmt: skip


def bench_encode(encoder: Any, paper_encoder: Any, waves: Sequence[np.ndarray], policy: Any, layers: Sequence[int],
                 batch_size: int, paper_clips: int, max_batch_samples: Optional[int] = None, seed: int = 0,
                 paper: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:  # fmt: skip
    """Both sides on the same clips. The paper's side is timed on a seeded sample and extrapolated
    (its cost does not depend on the clip: every clip is padded to 30 s and the whole encoder runs)."""
    n = len(waves)
    audio_s = sum(len(w) for w in waves) / SAMPLE_RATE
    ours = time_ours(encoder, waves, policy, layers, batch_size, max_batch_samples)
    if paper is None:
        rng = np.random.default_rng(seed)
        sample = sorted(rng.choice(n, size=min(paper_clips, n), replace=False).tolist())
        paper = time_paper(paper_encoder, [waves[i] for i in sample], max(layers))
    paper = dict(paper)
    paper["seconds_all"] = paper["per_clip_s"] * n
    paper["extrapolated"] = paper["clips_timed"] < n
    return {"clips": n, "audio_s": audio_s, "ours": ours, "paper": paper}


def bench_policies(encoder: Any, waves: Sequence[np.ndarray], policies: Sequence[str], layers: Sequence[int],
                   batch_size: int, max_batch_samples: Optional[int] = None) -> List[Dict[str, Any]]:  # fmt: skip
    from ser_lightning.features.frontend import LengthPolicy, encoder_frames, mel_frames

    rows = []
    for name in policies:
        p = LengthPolicy.parse(name)
        r = time_ours(encoder, waves, p, layers, batch_size, max_batch_samples)
        frames = sum(encoder_frames(mel_frames(p.input_samples(len(w)))) for w in waves)
        rows.append({"policy": p.name, "clips_per_s": r["clips"] / r["seconds"], "audio_s_per_s": r["audio_s"] / r["seconds"],
                     "seconds": r["seconds"], "encoder_frames": int(frames), "clips": r["clips"]})  # fmt: skip
    return rows
