"""Batched Whisper log-mel front end that gives each clip exactly what WhisperFeatureExtractor gives it alone.

Why not call the extractor on a padded batch: its STFT reflects at the *batch* edge and its log-mel
normalisation uses a max over the padded signal, so a clip's features would depend on its batch neighbours.
Here every clip is reflect-padded at its own edges, the STFT runs uncentred on the zero-padded batch, and the
max is taken over the clip's own frames. Works on CPU and CUDA tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
WINDOW_SECONDS = 30.0
WINDOW_FRAMES = 3000  # mel frames in Whisper's 30 s window; the encoder halves it to 1500


@dataclass(frozen=True)
class LengthPolicy:
    """How long the encoder input of a clip is.

    `clip`: the clip's own length (batches padded to their longest clip, padded keys masked in attention).
    `seconds=S`: the clip padded with silence to S seconds (Whisper-style), longer clips keep their own length;
    `seconds=30` is the paper's input exactly.
    `clip+T` (tail=T): the clip followed by T seconds of silence (at most up to the 30 s window).
    """

    seconds: float | None  # None = clip
    tail: float = 0.0  # seconds of silence after the clip (clip policy only)

    @classmethod
    def parse(cls, value: object) -> "LengthPolicy":
        text = str(value).strip()
        if text == "clip":
            return cls(None)
        if text.startswith("clip+"):
            try:
                tail = float(text[5:].rstrip("s"))
            except ValueError:
                tail = -1.0
            if not 0 < tail < WINDOW_SECONDS:
                raise ValueError(f"input_seconds={text!r}: 'clip+T' needs T seconds of silence in (0, 30), e.g. 'clip+2'")
            return cls(None, tail)
        try:
            seconds = float(text)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= WINDOW_SECONDS:
            raise ValueError(f"input_seconds={text!r}: use 'clip', '30' or a number of seconds in (0, 30], or 'clip+T' "
                             "(the clip and T seconds of silence, e.g. 'clip+2')")
        return cls(seconds)

    @property
    def pads(self) -> bool:
        """Whether the encoder may see frames past a clip's own audio (fixed-length inputs and clip+T): those frames
        are attended to, so what a block computes depends on them."""
        return self.seconds is not None or self.tail > 0

    @property
    def name(self) -> str:
        if self.seconds is None:
            return f"clip+{self.tail:g}s" if self.tail else "clip"
        return f"{self.seconds:g}s"

    def input_samples(self, num_samples: int) -> int:
        """Samples fed to the front end for a clip of `num_samples` (after any crop to 30 s)."""
        if self.seconds is None:
            if not self.tail:
                return num_samples
            window = int(WINDOW_SECONDS * SAMPLE_RATE)
            return max(num_samples, min(num_samples + int(round(self.tail * SAMPLE_RATE)), window))
        return max(num_samples, int(round(self.seconds * SAMPLE_RATE)))


def mel_frames(num_samples: int) -> int:
    """Mel frames WhisperFeatureExtractor gives a clip: STFT frames (centred) minus the dropped last one."""
    return num_samples // HOP


def encoder_frames(num_mel_frames: int) -> int:
    """Encoder output frames for a mel input: conv2 has stride 2 and padding 1 -> ceil(T / 2)."""
    return (num_mel_frames + 1) // 2


class LogMelFrontend:
    """Whisper's log-mel spectrogram, batched, per-clip exact."""

    def __init__(self, num_mel_bins: int = 80) -> None:
        from transformers import WhisperFeatureExtractor

        self.num_mel_bins = num_mel_bins
        extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
        # (n_freq, n_mels) filter bank taken from the reference extractor so both agree exactly
        self.mel_filters = torch.from_numpy(np.asarray(extractor.mel_filters, dtype=np.float32))
        self.window = torch.hann_window(N_FFT)

    def settings(self) -> dict:
        """Everything that changes the features (part of the cache key)."""
        return {"frontend": "whisper-logmel-v1", "n_mels": self.num_mel_bins, "n_fft": N_FFT, "hop": HOP}

    def __call__(self, waves: Sequence[np.ndarray], policy: LengthPolicy, device: torch.device | str = "cpu"):
        """waves: 1-D float arrays at 16 kHz (already cropped to <= 30 s).

        Returns input_features (B, n_mels, T_mel) with zeros past each clip's input, input_frames (B,) mel
        frames fed to the encoder per clip, content_frames (B,) encoder frames that hold real audio.
        """
        device = torch.device(device)
        lengths = [policy.input_samples(len(w)) for w in waves]
        padded: List[torch.Tensor] = []
        for wave, n in zip(waves, lengths):
            x = torch.zeros(n, dtype=torch.float32)
            x[: len(wave)] = torch.as_tensor(wave, dtype=torch.float32)
            # the clip's own centred-STFT edges (reflect needs > N_FFT/2 samples; pad tiny clips with zeros)
            mode = "reflect" if n > N_FFT // 2 else "constant"
            padded.append(torch.nn.functional.pad(x[None, None], (N_FFT // 2, N_FFT // 2), mode=mode)[0, 0])
        longest = max(p.numel() for p in padded)
        batch = torch.zeros(len(padded), longest)
        for i, p in enumerate(padded):
            batch[i, : p.numel()] = p
        batch = batch.to(device)
        stft = torch.stft(batch, N_FFT, HOP, window=self.window.to(device), center=False, return_complex=True)
        power = stft.abs() ** 2  # (B, n_freq, frames)
        mel = self.mel_filters.to(device).T @ power  # (B, n_mels, frames)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        frames = torch.tensor([mel_frames(n) for n in lengths], device=device)
        t_max = int(frames.max())
        log_spec = log_spec[:, :, :t_max]
        valid = torch.arange(t_max, device=device)[None, :] < frames[:, None]  # (B, T_mel)
        per_clip_max = log_spec.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, per_clip_max - 8.0)
        log_spec = (log_spec + 4.0) / 4.0
        log_spec = log_spec.masked_fill(~valid[:, None, :], 0.0)
        content = torch.tensor([encoder_frames(mel_frames(len(w))) for w in waves], device=device)
        return log_spec, frames, content
