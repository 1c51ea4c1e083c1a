"""A seeded synthetic ShEMO-like corpus: clip lengths, speech-like noise, length-sorted batches, a manifest on disk."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


SAMPLE_RATE = 16000
# ShEMO without fear (the paper's 5 classes), for synthetic labels of the cv part
SHEMO_CLASSES = {"neutral": 1160, "anger": 1042, "sadness": 361, "happiness": 203, "surprise": 202}


def shemo_like_lengths(n: int, seed: int = 0, mean: float = 4.0, sigma: float = 0.6, lo: float = 1.0,
                       hi: float = 30.0) -> np.ndarray:  # fmt: skip
    """Seeded clip lengths in seconds: lognormal with the given mean, clipped to [lo, hi] (ShEMO: ~4 s, 1-30 s)."""
    rng = np.random.default_rng(seed)
    mu = math.log(mean) - sigma**2 / 2
    return np.clip(rng.lognormal(mu, sigma, n), lo, hi)


class SyntheticClips:
    """In-memory speech-like clips (noise with a syllable-rate envelope and a voiced tone), seeded.

    Every clip is a view into one 60 s base signal at a seeded offset, so even very many clips cost no memory.
    """

    def __init__(self, lengths_s: Sequence[float], seed: int = 0) -> None:
        rng = np.random.default_rng(seed + 1)
        n = 60 * SAMPLE_RATE
        t = np.arange(n) / SAMPLE_RATE
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.28)) ** 2
        voiced = 0.3 * np.sin(2 * np.pi * (140 + 30 * np.sin(2 * np.pi * 0.5 * t)) * t)
        self.base = (envelope * (0.05 * rng.standard_normal(n) + voiced)).astype(np.float32)
        self.samples = [max(1, int(round(s * SAMPLE_RATE))) for s in lengths_s]
        self.offsets = [int(rng.integers(0, n - k + 1)) for k in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.base[self.offsets[i] : self.offsets[i] + self.samples[i]]

    def waves(self) -> List[np.ndarray]:
        return [self[i] for i in range(len(self))]


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_samples: Optional[int] = None) -> List[List[int]]:
    """Indices sorted by length and cut into batches of at most `batch_size` clips and (optionally) at most
    `max_batch_samples` padded samples (batch size x longest clip)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: List[List[int]] = []
    current: List[int] = []
    for i in order:
        longest = lengths[i]  # sorted: the newest clip is the longest
        if current and (len(current) >= batch_size or (max_batch_samples and (len(current) + 1) * longest > max_batch_samples)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def write_synthetic_corpus(folder: Path, clips: SyntheticClips, num_speakers: int, num_folds: int,
                           classes: Dict[str, int], seed: int = 0) -> Path:  # fmt: skip
    """wav files + a manifest (path, label, speaker, fold): speakers dealt to folds round-robin, every speaker
    gets every class first (so each fold holds each class), then labels follow the class proportions."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 2)
    names = list(classes)
    p = np.array([classes[c] for c in names], float)
    p /= p.sum()
    rows = ["path,label,speaker,fold"]
    seen: Dict[int, int] = {}
    for i in range(len(clips)):
        spk = i % num_speakers
        k = seen.get(spk, 0)
        seen[spk] = k + 1
        label = names[k] if k < len(names) else names[int(rng.choice(len(names), p=p))]
        path = folder / f"s{spk:03d}_{i:06d}.wav"
        sf.write(path, clips[i], SAMPLE_RATE, subtype="PCM_16")
        rows.append(f"{path.name},{label},s{spk:03d},{spk % num_folds + 1}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest
