"""Fingerprinted on-disk feature store shared by train / cv / sweep (and by concurrent sweep workers).

Layout: `<cache.dir>/<key>/shard-<id>/` with one `layer_<k>.npy` per stored layer (all clips' frames
concatenated, (sum_T, D), fp16 by default, memory-mapped on read) and `index.json` (clip hashes, offsets,
lengths, per-file sha256, and `index_sha256`: the sha256 of the rest of the index, so the index is verified
too: a changed offset, length or clip hash makes a corrupt shard, like a flipped byte in the features).
A cache whose settings hold `frames: input` (adapted blocks under 10 s / 30 s / clip+T inputs, see
features/pipeline.feature_spec) keeps every frame the encoder's attention saw, padding included, and its index
lists each clip's `content_lengths` (the frames of the clip's own audio, which the head pools over).
`<key>` hashes everything that changes the features: encoder fingerprint, front-end settings, input-length
policy, crop policy and storage dtype; a clip is keyed by its audio content hash. Shards appear atomically
(written to a temp folder, then renamed); a shard that fails any check (index or arrays) is moved aside to
`<key>/corrupt/` and its clips are re-encoded. Writers hold an exclusive lock, so two workers never
encode the same clips; readers need no lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Sequence

import numpy as np

from ser_lightning.utils.io import atomic_write_json, fault_point, json_digest, sha256_file

CACHE_VERSION = 1
DTYPES = {"fp16": np.float16, "fp32": np.float32}


_VERIFIED: set = set()  # (path, size, mtime_ns) of layer files whose checksum this process has checked


class CacheCorruptError(RuntimeError):
    pass


@dataclass
class _Entry:
    shard: Path
    offset: int
    length: int
    content: int  # frames of the clip's own audio (== length unless the cache keeps input frames)


class FeatureCache:
    def __init__(self, root: Path | str, settings: Mapping[str, object], dtype: str = "fp16", verify: bool = True,
                 verify_layers: Sequence[int] | None = None) -> None:  # fmt: skip
        self.settings = {**settings, "dtype": dtype, "cache_version": CACHE_VERSION}
        blob = json.dumps(self.settings, sort_keys=True, default=str).encode()
        self.key = hashlib.sha256(blob).hexdigest()[:20]
        self.dir = Path(root) / self.key
        self.dtype = dtype
        self.verify = verify
        # checksums are verified for these layers only (None = all); other layers get the cheap shape check
        self.verify_layers = None if verify_layers is None else {int(k) for k in verify_layers}
        # `frames: input`: every frame the encoder attended to is stored (see the module docstring)
        self.keeps_input_frames = self.settings.get("frames") == "input"
        self.dir.mkdir(parents=True, exist_ok=True)
        settings_file = self.dir / "settings.json"
        if not settings_file.exists():
            atomic_write_json(settings_file, self.settings)
        self._index: Dict[int, Dict[str, _Entry]] = {}
        self._arrays: Dict[Path, np.ndarray] = {}
        self._seen: set = set()
        self.refresh()

    # ---------------------------------------------------------------- reading
    def refresh(self) -> None:
        """(Re)read the shard indices; verify new shards; move corrupt ones aside."""
        for shard in sorted(self.dir.glob("shard-*")):
            if shard in self._seen or not shard.is_dir():
                continue
            try:
                index = self._check_shard(shard)
            except CacheCorruptError as e:
                self._quarantine(shard, str(e))
                continue
            self._seen.add(shard)
            content = index.get("content_lengths") or index["lengths"]
            for layer in index["layers"]:
                entries = self._index.setdefault(int(layer), {})
                for h, off, n, c in zip(index["hashes"], index["offsets"], index["lengths"], content):
                    entries[h] = _Entry(shard, int(off), int(n), int(c))

    def _check_shard(self, shard: Path) -> dict:
        """The shard's index once everything in it verifies; CacheCorruptError (naming the file) otherwise.

        The index is always checked (it is small): its own checksum, then its structure (offsets must be the
        running sum of the lengths, counts must agree). The layer files get the shape check, and their sha256
        (listed in the verified index) when `verify` is on for that layer.
        """
        index_file = shard / "index.json"
        try:
            index = json.loads(index_file.read_text())
        except (OSError, ValueError) as e:
            raise CacheCorruptError(f"{index_file}: unreadable index ({e})") from None
        if not isinstance(index, dict):
            raise CacheCorruptError(f"{index_file}: not an index (a JSON {type(index).__name__})")
        stored = index.get("index_sha256")
        if stored is not None and stored != json_digest(index, "index_sha256"):
            raise CacheCorruptError(f"{index_file}: index checksum mismatch (the offsets, lengths, clip hashes or "
                                    "file checksums it lists were changed after it was written)")  # fmt: skip
        # An index written before `index_sha256` existed (cache version 1, same cache key) is re-verified rather
        # than rebuilt: the structural checks below catch a changed offset or count, and the layer files are
        # still checked against their sha256; what they cannot catch (two lengths swapped, a changed clip hash)
        # is the remaining risk of such older shards, until they are rebuilt by clearing the cache.
        try:
            hashes, lengths, offsets = list(index["hashes"]), [int(n) for n in index["lengths"]], list(index["offsets"])
            dim, layers, sums = int(index["dim"]), [int(k) for k in index["layers"]], index["sha256"]
        except (KeyError, TypeError, ValueError) as e:
            raise CacheCorruptError(f"{index_file}: malformed index ({type(e).__name__}: {e})") from None
        expected = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist() if lengths else []
        if offsets != expected or len(hashes) != len(lengths) or min(lengths, default=0) < 0:
            raise CacheCorruptError(f"{index_file}: inconsistent index (offsets are not the running sum of the "
                                    "lengths, or the counts of hashes / offsets / lengths differ)")  # fmt: skip
        content = index.get("content_lengths")
        if self.keeps_input_frames and (not isinstance(content, list) or len(content) != len(lengths)
                                        or any(not 0 < int(c) <= n for c, n in zip(content, lengths))):  # fmt: skip
            raise CacheCorruptError(f"{index_file}: this cache keeps input frames, so its index must list every clip's "
                                    "content_lengths (1..its stored length)")  # fmt: skip
        total = int(sum(lengths))
        for layer in layers:
            f = shard / f"layer_{layer}.npy"
            try:
                arr = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise CacheCorruptError(f"{f}: unreadable ({e})") from None
            if arr.shape != (total, dim) or arr.dtype != np.dtype(DTYPES[self.dtype]):
                raise CacheCorruptError(f"{f}: shape {arr.shape} {arr.dtype}, expected {(total, dim)}")
            if self.verify and (self.verify_layers is None or layer in self.verify_layers):
                stamp = (str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
                if stamp not in _VERIFIED:  # hash each file once per process (a CV opens the cache per fold)
                    if not isinstance(sums, dict) or sha256_file(f) != sums.get(str(layer)):
                        raise CacheCorruptError(f"{f}: checksum mismatch")
                    _VERIFIED.add(stamp)
        return index

    def _quarantine(self, shard: Path, reason: str) -> None:
        bad = self.dir / "corrupt"
        bad.mkdir(exist_ok=True)
        target = bad / f"{shard.name}-{uuid.uuid4().hex[:6]}"
        try:
            shard.rename(target)
            atomic_write_json(target / "REASON.json", {"reason": reason})
        except OSError:
            shutil.rmtree(shard, ignore_errors=True)
        print(f"[ser cache] corrupt shard moved aside and will be rebuilt: {reason}")

    def missing(self, hashes: Sequence[str], layers: Sequence[int]) -> List[str]:
        """Clip hashes that lack at least one of the layers (deduplicated, in order)."""
        out, seen = [], set()
        for h in hashes:
            if h in seen:
                continue
            seen.add(h)
            if any(h not in self._index.get(layer, {}) for layer in layers):
                out.append(h)
        return out

    def content_length(self, content_hash: str, layer: int) -> int:
        """Frames of the clip's own audio: `get(...)[:content_length]` (all of it unless the cache keeps input frames)."""
        try:
            return self._index[layer][content_hash].content
        except KeyError:
            raise KeyError(f"clip {content_hash[:12]} layer {layer} is not in the cache {self.dir}") from None

    def get(self, content_hash: str, layer: int) -> np.ndarray:
        """(T, D) memory-mapped features of one clip and layer."""
        try:
            e = self._index[layer][content_hash]
        except KeyError:
            raise KeyError(f"clip {content_hash[:12]} layer {layer} is not in the cache {self.dir}") from None
        f = e.shard / f"layer_{layer}.npy"
        arr = self._arrays.get(f)
        if arr is None:
            arr = self._arrays[f] = np.load(f, mmap_mode="r")
        return arr[e.offset : e.offset + e.length]

    # ---------------------------------------------------------------- writing
    @contextmanager
    def lock(self) -> Iterator[None]:
        with open(self.dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def write_shard(self, hashes: Sequence[str], features: Mapping[int, Sequence[np.ndarray]],
                    content_lengths: Sequence[int] | None = None) -> Path:  # fmt: skip
        """Store clips' features for several layers as one shard, atomically. `content_lengths` (required by a cache
        that keeps input frames, refused otherwise): each clip's frames of its own audio."""
        if (content_lengths is not None) != self.keeps_input_frames:
            raise ValueError(f"{self.dir}: content_lengths are {'required' if self.keeps_input_frames else 'only kept'} "
                             "by a cache that keeps input frames")  # fmt: skip
        np_dtype = DTYPES[self.dtype]
        lengths = [int(a.shape[0]) for a in next(iter(features.values()))]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist() if lengths else []
        dim = int(next(iter(features.values()))[0].shape[1])
        name = f"shard-{uuid.uuid4().hex}"
        tmp = self.dir / f".tmp-{name}"
        tmp.mkdir()
        try:
            sums = {}
            for layer, arrays in features.items():
                if [a.shape[0] for a in arrays] != lengths:
                    raise ValueError("every layer must hold the same clips with the same lengths")
                f = tmp / f"layer_{layer}.npy"
                with open(f, "wb") as fh:
                    np.save(fh, np.concatenate(arrays).astype(np_dtype, copy=False))
                    fh.flush()
                    os.fsync(fh.fileno())
                sums[str(layer)] = sha256_file(f)
            fault_point("shard")  # arrays on disk, index not yet written, shard not yet published
            index = {
                "hashes": list(hashes), "offsets": offsets, "lengths": lengths, "dim": dim,
                "layers": sorted(int(k) for k in features), "sha256": sums,
            }  # fmt: skip
            if content_lengths is not None:
                index["content_lengths"] = [int(c) for c in content_lengths]
            index["index_sha256"] = json_digest(index, "index_sha256")  # the index is verified like the arrays it describes
            atomic_write_json(tmp / "index.json", index)
            os.rename(tmp, self.dir / name)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"no space left on device while writing a feature-cache shard in {self.dir} "
                              "(nothing partial was kept; shards already written stay valid: free space and rerun)") from e  # fmt: skip
            raise
        self.refresh()
        return self.dir / name

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.dir.glob("shard-*/layer_*.npy"))

    def clean_temp(self) -> None:
        """Remove temp folders left by killed writers (call with the lock held)."""
        for tmp in self.dir.glob(".tmp-shard-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def cache_for(root: str, encoder_fingerprint: str, frontend_settings: Mapping[str, object], policy: str,
              max_seconds: float, crop: str, dtype: str = "fp16", verify: bool = True,
              sample_rate: int = 16000, verify_layers: Sequence[int] | None = None, speed: float = 1.0,
              compute_dtype: str = "fp32", input_frames: bool = False) -> FeatureCache:  # fmt: skip
    """The cache of features made with these settings (features/pipeline.open_feature_cache fills them in from an
    encoder). compute_dtype: the encoder's (fp32 / bf16 / fp16): bf16 features are not fp32 features. input_frames:
    keep every input frame and each clip's content length (FeatureCache docstring)."""
    settings = {
        "encoder": encoder_fingerprint, "compute_dtype": compute_dtype, "frontend": dict(frontend_settings),
        "policy": policy, "max_seconds": float(max_seconds), "crop": crop, "sample_rate": sample_rate,
    }  # fmt: skip
    if speed != 1.0:  # speed-perturbed copies (data.speed_perturb) get their own key; unperturbed keys are unchanged
        settings["speed"] = float(speed)
    if input_frames:  # every frame the encoder attended to, padding included (adapted blocks' input); own key
        settings["frames"] = "input"
    return FeatureCache(root, settings, dtype=dtype, verify=verify, verify_layers=verify_layers)
