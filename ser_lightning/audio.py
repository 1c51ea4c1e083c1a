"""Decode, down-mix, resample and validate audio. The bad-input policy lives here and only here.

Paths are plain files or zip members written `archive.zip::member/name.wav` (ShEMO ships as zips). Decoding
uses soundfile (libsndfile bundled: wav, flac, ogg, mp3; no FFmpeg), resampling torchaudio's band-limited
sinc resampler.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

ZIP_SEPARATOR = "::"


class BadAudioError(ValueError):
    """A clip that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@lru_cache(maxsize=8)
def _open_zip_cached(archive: str, size: int, mtime_ns: int) -> zipfile.ZipFile:
    return zipfile.ZipFile(archive)


def _open_zip(archive: str) -> zipfile.ZipFile:
    """An open archive, reused across members; reopened when the file on disk changes."""
    st = os.stat(archive)
    return _open_zip_cached(archive, st.st_size, st.st_mtime_ns)


def read_bytes(path: str) -> bytes:
    """The raw bytes of a file or a zip member (`archive.zip::member`)."""
    if ZIP_SEPARATOR in path:
        archive, member = path.split(ZIP_SEPARATOR, 1)
        try:
            return _open_zip(archive).read(member)
        except KeyError:
            raise BadAudioError(path, "missing from its zip archive") from None
        except (OSError, zipfile.BadZipFile, zlib.error) as e:
            raise BadAudioError(path, f"cannot read zip archive ({e})") from None
    p = Path(path)
    if not p.is_file():
        raise BadAudioError(path, "file not found")
    try:
        return p.read_bytes()
    except OSError as e:
        raise BadAudioError(path, f"cannot read file ({e.strerror or e})") from None


def wav_truncation(data: bytes) -> Optional[str]:
    """Why a RIFF/WAVE file is truncated (its data chunk holds fewer bytes than its header declares), else None.

    libsndfile reads such a file without complaint, returning only the samples that are there, so a wav cut
    mid-data would pass as a shorter clip. Sizes 0 and 0xFFFFFFFF (streaming writers) are not checked; a
    partial last sample frame is tolerated.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, block_align = 12, 1
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if chunk == b"fmt " and size >= 14 and body + 14 <= len(data):
            block_align = max(1, struct.unpack("<H", data[body + 12 : body + 14])[0])
        if chunk == b"data":
            if size in (0, 0xFFFFFFFF):
                return None
            have = len(data) - body
            if have + block_align <= size:
                return f"truncated wav (header declares {size} data bytes, file holds {have})"
            return None
        pos = body + size + (size & 1)
    return None


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return wave
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(wave), orig_sr, target_sr).numpy()


def change_speed(wave: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Speed perturbation (Kaldi / sox `speed`): play the clip `factor` times faster, so tempo AND pitch scale by
    `factor` and the length by 1/factor. Done as a resampling of the wave read as if it had been recorded at
    factor * sample_rate (0.9 -> 11 % longer and lower, 1.1 -> 9 % shorter and higher)."""
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    if factor == 1.0:
        return wave
    return np.ascontiguousarray(resample(wave, int(round(sample_rate * factor)), sample_rate), dtype=np.float32)


@dataclass(frozen=True)
class AudioInfo:
    duration: float  # seconds, after resampling
    sha256: str  # of the file's bytes: the cache key of its features
    orig_sample_rate: int
    channels: int


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _decoder_message(error: Exception, path: str) -> str:
    """The decoder's error text with the in-memory buffer it was given (`<_io.BytesIO object at 0x...>`, which
    names nothing) replaced by the file's path."""
    text = _OBJECT_REPR.sub(lambda _: repr(str(path)), str(error)).strip()
    return text or type(error).__name__


def decode(path: str, target_sr: int = 16000, min_seconds: float = 0.1) -> Tuple[np.ndarray, AudioInfo]:
    """Read one clip as mono float32 at target_sr; raise BadAudioError with the reason if it is unusable."""
    import soundfile as sf

    data = read_bytes(path)
    if len(data) == 0:
        raise BadAudioError(path, "zero-byte file")
    truncated = wav_truncation(data)
    if truncated:
        raise BadAudioError(path, truncated)
    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError with libsndfile's text
        raise BadAudioError(path, f"unreadable or truncated audio ({_decoder_message(e, path)})") from None
    channels = wave.shape[1]
    if wave.shape[0] == 0:
        raise BadAudioError(path, "no samples (empty or truncated audio)")
    wave = wave.mean(axis=1) if channels > 1 else wave[:, 0]  # down-mix: (N,)
    if not np.isfinite(wave).all():
        raise BadAudioError(path, "contains NaN or infinite samples")
    wave = np.ascontiguousarray(resample(wave, sr, target_sr), dtype=np.float32)
    duration = len(wave) / target_sr
    if duration < min_seconds:
        raise BadAudioError(path, f"too short ({duration * 1000:.0f} ms < {min_seconds * 1000:.0f} ms)")
    if float(np.abs(wave).max()) < 1e-6:
        raise BadAudioError(path, "silent (all samples are zero)")
    info = AudioInfo(duration, hashlib.sha256(data).hexdigest(), int(sr), int(channels))
    return wave, info


def crop(wave: np.ndarray, max_samples: int, where: str = "center") -> np.ndarray:
    """Crop a long clip to max_samples (start or centre); shorter clips are returned unchanged."""
    if len(wave) <= max_samples:
        return wave
    start = 0 if where == "start" else (len(wave) - max_samples) // 2
    return wave[start : start + max_samples]
