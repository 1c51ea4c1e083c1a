"""LightningDataModule: utterance table -> speaker-independent splits -> batches (features, mask, label).

Two feeding modes:
- cached (default): `prepare_data` encodes every clip once into the feature cache (rank 0); batches carry
  `features` (B, T, D) or (B, L, T, D) for several layers, and `mask` (B, T).
- live (`cache.enabled=false`): batches carry log-mel `input_features` and the LightningModule runs the
  frozen encoder itself.
Splits are `datasets.Dataset` objects (`self.splits["train" | "val" | "test"]`). Sharding across DDP ranks is
done here (Lightning's DistributedSampler is off) so that validation / test see every clip exactly once.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ser_lightning.config import DataConfig
from ser_lightning.data.folds import FoldError, FoldSplit, check_independence, make_split, missing_classes_message
from ser_lightning.data.table import UtteranceTable, build_table, dataset_rows
from ser_lightning.features.cache import FeatureCache
from ser_lightning.features.encoder import FrozenWhisperEncoder
from ser_lightning.features.extract import fill_cache, load_clip
from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend, encoder_frames, mel_frames
from ser_lightning.features.pipeline import AudioSettings, FeatureSpec, open_feature_cache


class CachedFeatures(Dataset):
    """A split's cached features, copied once from the memory-mapped shards into one contiguous fp16 tensor
    per layer (page-faulting the memmap for every item of every epoch is what made epochs slow).

    `caches` beyond the first are speed-perturbed versions of the same clips (data.speed_perturb): item `i` is
    version 0 (the unperturbed clip), item `(i, v)` version v; SpeedPerturbBatchSampler picks v per clip."""

    def __init__(self, hashes: Sequence[str], labels: Sequence[int], caches: FeatureCache | Sequence[FeatureCache],
                 layers: Sequence[int], speakers: Optional[Sequence[int]] = None):  # fmt: skip
        self.labels, self.layers = list(labels), list(layers)
        self.speakers = list(speakers) if speakers is not None else [0] * len(self.labels)
        caches = [caches] if isinstance(caches, FeatureCache) else list(caches)
        self.offsets: List[np.ndarray] = []
        self.stores: List[List[torch.Tensor]] = []  # [version][layer]: (sum_T, D)
        # a cache that keeps input frames (adapted blocks under 10 s / 30 s inputs): each clip's own frames, per version
        self.content: Optional[List[List[int]]] = [] if caches[0].keeps_input_frames else None
        for cache in caches:
            lengths = [int(cache.get(h, self.layers[0]).shape[0]) for h in hashes]
            if self.content is not None:
                self.content.append([cache.content_length(h, self.layers[0]) for h in hashes])
            self.offsets.append(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
            self.stores.append([
                torch.from_numpy(np.concatenate([np.asarray(cache.get(h, k)) for h in hashes]) if hashes else np.zeros((0, 1), np.float16))
                for k in self.layers
            ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | Tuple[int, int]) -> Dict[str, Any]:
        i, version = item if isinstance(item, tuple) else (item, 0)
        a, b = int(self.offsets[version][i]), int(self.offsets[version][i + 1])
        feats = [s[a:b].float() for s in self.stores[version]]
        x = feats[0] if len(feats) == 1 else torch.stack(feats)  # (T, D) or (L, T, D)
        item = {"features": x, "label": self.labels[i], "index": i, "speaker": self.speakers[i]}
        if self.content is not None:
            item["content"] = self.content[version][i]
        return item


class AudioClips(Dataset):
    """Clips decoded on the fly (live mode). Item `(i, v)` is clip i at speed `speeds[v]` (data.speed_perturb;
    version 0 = speed 1)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], sample_rate: int, max_seconds: float, crop: str,
                 speakers: Optional[Sequence[int]] = None, speeds: Sequence[float] = (1.0,)):  # fmt: skip
        self.paths, self.labels = list(paths), list(labels)
        self.speakers = list(speakers) if speakers is not None else [0] * len(self.labels)
        self.sample_rate, self.max_seconds, self.crop = sample_rate, max_seconds, crop
        self.speeds = list(speeds)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | Tuple[int, int]) -> Dict[str, Any]:
        i, version = item if isinstance(item, tuple) else (item, 0)
        wave = load_clip(self.paths[i], self.sample_rate, self.max_seconds, self.crop, speed=self.speeds[version])
        return {"wave": wave, "label": self.labels[i], "index": i, "speaker": self.speakers[i]}


def _speakers(items: List[Dict[str, Any]]) -> torch.Tensor:
    return torch.tensor([it.get("speaker", 0) for it in items])


def collate_features(items: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    """Pad along time; mask (B, T) is True on real frames; speaker: index into SERDataModule.speaker_ids.

    Items with `content` (features of every frame the encoder attended to, padding included: adapted blocks under
    10 s / 30 s inputs) give `mask` = the first `content` frames (the clip's own audio, which the head pools over) and
    `input_mask` = every stored frame (the key mask the adapted blocks attend with)."""
    lengths = [it["features"].shape[-2] for it in items]
    t_max = max(lengths)
    first = items[0]["features"]
    out = first.new_zeros((len(items),) + first.shape[:-2] + (t_max, first.shape[-1]))
    for i, it in enumerate(items):
        out[i, ..., : lengths[i], :] = it["features"]
    frames = torch.arange(t_max)[None, :]
    mask = frames < torch.tensor(lengths)[:, None]
    batch = {
        "features": out,
        "mask": mask,
        "label": torch.tensor([it["label"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
        "speaker": _speakers(items),
    }
    if "content" in items[0]:
        batch["input_mask"], batch["mask"] = mask, frames < torch.tensor([it["content"] for it in items])[:, None]
    return batch


class CollateAudio:
    """Waves -> per-clip-exact log-mel batch for the live encoder."""

    def __init__(self, num_mel_bins: int, policy: LengthPolicy) -> None:
        self.frontend = LogMelFrontend(num_mel_bins)
        self.policy = policy

    def __call__(self, items: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        feats, frames, content = self.frontend([it["wave"] for it in items], self.policy)
        return {
            "input_features": feats,
            "input_frames": frames,
            "content_frames": content,
            "label": torch.tensor([it["label"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
            "speaker": _speakers(items),
        }


class LengthBucketBatchSampler(Sampler[List[int]]):
    """Batches of similar length, sharded over DDP ranks.

    shuffle=True (training): seeded per epoch; indices shuffled, cut into pools of `pool` batches, each pool
    sorted by length and batched, batch order shuffled. Every rank gets the same number of batches (DDP needs
    it): the batch list is padded by repeating batches, as Lightning's DistributedSampler would.
    shuffle=False (evaluation): sorted by length; batches dealt round-robin to ranks with NO padding, so each
    clip is evaluated exactly once across ranks.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0, bucketing: bool = True,
                 num_replicas: int = 1, rank: int = 0, pool: int = 32) -> None:  # fmt: skip
        self.lengths = list(lengths)
        self.batch_size, self.shuffle, self.seed, self.bucketing = batch_size, shuffle, seed, bucketing
        self.num_replicas, self.rank, self.pool = num_replicas, rank, pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> List[List[int]]:
        idx = list(range(len(self.lengths)))
        if self.shuffle:
            rng = random.Random(self.seed * 1_000_003 + self.epoch)
            rng.shuffle(idx)
            batches: List[List[int]] = []
            chunk = self.batch_size * self.pool if self.bucketing else len(idx)
            for s in range(0, len(idx), max(chunk, 1)):
                part = idx[s : s + chunk]
                if self.bucketing:
                    part.sort(key=lambda i: self.lengths[i])
                batches += [part[b : b + self.batch_size] for b in range(0, len(part), self.batch_size)]
            rng.shuffle(batches)
            if self.num_replicas > 1:
                per_rank = -(-len(batches) // self.num_replicas)
                batches += batches[: per_rank * self.num_replicas - len(batches)]
            return batches[self.rank :: self.num_replicas]
        idx.sort(key=lambda i: self.lengths[i])
        size = self.batch_size
        if self.num_replicas > 1:  # Lightning refuses a rank with zero eval batches: give every rank >= 1
            size = max(1, min(size, -(-len(idx) // self.num_replicas)))
        batches = [idx[b : b + size] for b in range(0, len(idx), size)]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[List[int]]:
        # lazy: the order is drawn at the first batch, after the epoch's set_epoch (Lightning creates the
        # first epoch's iterator before its epoch-start hooks run)
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())


class SpeedPerturbBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Training batches of (clip, version) pairs: the batches of `batches` (a LengthBucketBatchSampler), each clip
    drawn at one of `versions` speeds (0 = unperturbed), uniformly and independently, seeded by (seed, epoch,
    rank): every epoch sees every training clip once, at a fresh speed, so an epoch costs what it did without
    perturbation. run/callbacks.ReproducibleSteps calls set_epoch at every epoch start (a resumed run redraws the
    same speeds)."""

    def __init__(self, batches: LengthBucketBatchSampler, versions: int, seed: int = 0) -> None:
        self.batches, self.versions, self.seed = batches, versions, seed

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        rng = random.Random(f"speed-{self.seed}-{self.batches.epoch}-{self.batches.rank}")
        for batch in self.batches:
            yield [(i, rng.randrange(self.versions)) for i in batch]

    def __len__(self) -> int:
        return len(self.batches)


def as_data_config(data: DataConfig | Mapping[str, Any]) -> DataConfig:
    """A typed DataConfig from a DataConfig, the `data` section of a composed config, or a plain mapping (keys it
    lacks keep the schema defaults; unknown keys are refused with the list of valid ones)."""
    if isinstance(data, DataConfig):
        return data
    from omegaconf import DictConfig, OmegaConf

    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)  # type: ignore[assignment]
    known = {f.name for f in fields(DataConfig)}
    unknown = sorted(set(data) - known - {"seed"})
    if unknown:
        raise ValueError(f"unknown data setting(s) {unknown}; valid: {', '.join(sorted(known))}")
    return DataConfig(**{k: v for k, v in data.items() if k in known})


class SERDataModule(L.LightningDataModule):
    def __init__(
        self,
        data: DataConfig | Mapping[str, Any],
        features: FeatureSpec,
        encoder: FrozenWhisperEncoder | Callable[[], FrozenWhisperEncoder],
        seed: int = 0,
        report_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.cfg: DataConfig = as_data_config(data)
        self.audio = AudioSettings.of(self.cfg)
        self.features = features
        self._encoder = encoder
        self.seed = seed
        self.report_dir = Path(report_dir) if report_dir else None
        self.table: Optional[UtteranceTable] = None
        self.split: Optional[FoldSplit] = None
        self.splits: Dict[str, Any] = {}
        # data.speed_perturb: training clips are also drawn at these speeds, each from a cache of its own
        self.speeds: List[float] = [float(x) for x in (self.cfg.speed_perturb or [])]
        self._caches: Dict[float, FeatureCache] = {}  # speed -> cache (1.0: the clips themselves)
        self._datasets: Dict[str, Dataset] = {}
        self._speaker_ids: Optional[List[str]] = None

    # ------------------------------------------------------------------ sizes flow from the data
    @property
    def encoder(self) -> FrozenWhisperEncoder:
        if not isinstance(self._encoder, FrozenWhisperEncoder):
            self._encoder = self._encoder()
        return self._encoder

    def load_table(self) -> UtteranceTable:
        """The corpus' utterance table (built once, then read from the table cache)."""
        if self.table is None:
            self.table = build_table({**asdict(self.cfg), "seed": self.seed}, self.report_dir)
        return self.table

    @property
    def class_names(self) -> List[str]:
        return list(self.load_table().class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def speaker_ids(self) -> List[str]:
        """Every speaker of the corpus table, sorted; batches carry `speaker` = the index in this list."""
        if self._speaker_ids is None:
            self._speaker_ids = sorted(set(self.load_table().dataset["speaker"]))
        return self._speaker_ids

    def open_cache(self, speed: float = 1.0) -> FeatureCache:
        """The feature cache of the unperturbed clips, or (speed != 1) of their speed-perturbed copies."""
        if speed in self._caches:
            return self._caches[speed]
        self._caches[speed] = open_feature_cache(self.features, self.encoder, self.audio, speed)
        return self._caches[speed]

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        table = self.load_table()
        if self.features.cached:
            ds = table.dataset
            self.fill(dict(zip(ds["sha256"], ds["path"])), dict(zip(ds["sha256"], ds["duration"])))

    def fill(self, paths_by_hash: Dict[str, str], durations: Dict[str, float]) -> None:
        """Encode what the caches lack: the clips, and with data.speed_perturb their copies at every speed (all
        clips: each is a training clip in some fold, so one pass serves every fold and ensemble member)."""
        for speed in self._speeds("train"):
            fill_cache(
                self.open_cache(speed), self.encoder, paths_by_hash, durations, self.features.layers,
                self.features.policy, sample_rate=self.audio.sample_rate, max_seconds=self.audio.max_seconds,
                crop_where=self.audio.crop, batch_size=self.features.encode_batch_size, speed=speed,
            )  # fmt: skip

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            if self.features.cached:  # DDP: rank 0 may have filled the cache (prepare_data) since the first setup
                for speed in self._speeds("train"):
                    self.open_cache(speed).refresh()
            return
        table = self.load_table()
        self.split = make_split(
            table.corpus, self.cfg.fold, self.cfg.num_folds, self.cfg.val_speakers, self.cfg.val_speaker_ids, self.seed,
            val_fraction=self.cfg.val_fraction, rows=dataset_rows(table.dataset),
        )  # fmt: skip
        ds = table.dataset
        speakers = ds["speaker"]
        members = {
            "train": set(self.split.train_speakers),
            "val": set(self.split.val_speakers),
            "test": set(self.split.test_speakers),
        }
        for name, spk in members.items():
            rows = [i for i, s in enumerate(speakers) if s in spk]
            self.splits[name] = ds.select(rows)
        self._check_splits()
        if self.features.cached:
            for speed in self._speeds("train"):
                self.open_cache(speed).refresh()

    def _check_splits(self) -> None:
        assert self.split is not None
        check_independence(self.split)
        # speaker independence of the actual rows, not only of the speaker lists
        seen: Dict[str, str] = {}
        for name, d in self.splits.items():
            for s in set(d["speaker"]):
                if s in seen and seen[s] != name:
                    raise FoldError(f"speaker {s} is in both {seen[s]} and {name} (fold {self.split.fold})")
                seen[s] = name
        self._check_duplicate_audio()
        for name in ("train", "test"):
            missing = [c for c, n in zip(self.class_names, np.bincount(self.splits[name]["label"], minlength=self.num_classes)) if n == 0]
            if missing:
                raise FoldError(self._missing_message(name, missing))
        val_counts = np.bincount(self.splits["val"]["label"], minlength=self.num_classes)
        missing = [c for c, n in zip(self.class_names, val_counts) if n == 0]
        if missing:
            if not self.cfg.allow_incomplete_val:
                raise FoldError(self._missing_message("val", missing))
            warnings.warn(f"fold {self.split.fold}: validation speakers have no clips of {missing}; val/ua averages the "
                          "rest (data.allow_incomplete_val=true)")  # fmt: skip

    def _check_duplicate_audio(self) -> None:
        """The same audio content (the table's sha256) under several paths: in two splits it is leakage (an error
        naming the files); within one split it is counted twice (a warning naming them)."""
        assert self.split is not None
        where: Dict[str, List[Tuple[str, str, str]]] = {}
        for name, d in self.splits.items():
            for h, path, speaker in zip(d["sha256"], d["path"], d["speaker"]):
                where.setdefault(h, []).append((name, path, speaker))
        repeated = {h: v for h, v in where.items() if len(v) > 1}
        leaks = {h: v for h, v in repeated.items() if len({n for n, _, _ in v}) > 1}
        if leaks:
            listing = "; ".join(" = ".join(f"{p} ({n}, speaker {s})" for n, p, s in v) for v in list(leaks.values())[:10])
            raise FoldError(f"fold {self.split.fold}: {len(leaks)} identical recording(s) in two splits (leakage): {listing}. "
                            "Remove the copies, or give each copy the same speaker so they share a split")  # fmt: skip
        if repeated:
            listing = "; ".join(" = ".join(p for _, p, _ in v) for v in list(repeated.values())[:10])
            warnings.warn(f"fold {self.split.fold}: {len(repeated)} recording(s) appear under several paths in one split "
                          f"(each copy counts): {listing}")  # fmt: skip

    def _missing_message(self, split: str, missing: List[str]) -> str:
        assert self.split is not None and self.table is not None
        return missing_classes_message(self.table.corpus, self.split, split, sorted(set(self.splits[split]["speaker"])), missing,
                                       self.class_names, self.cfg.num_folds, self.seed)  # fmt: skip

    @property
    def class_weights(self) -> torch.Tensor:
        """Inverse-frequency weights from the training split (mean 1)."""
        counts = torch.bincount(torch.tensor(self.splits["train"]["label"]), minlength=self.num_classes).float()
        w = counts.sum() / (counts.clamp_min(1) * self.num_classes)
        return w

    # ------------------------------------------------------------------ loaders
    def _speeds(self, name: str) -> List[float]:
        """Speeds a split's clips are read at: version 0 is the clip itself; only training adds perturbed ones."""
        return [1.0] + (self.speeds if name == "train" else [])

    def _dataset(self, name: str) -> Dataset:
        d = self.splits[name]
        if self.features.cached:
            if name not in self._datasets:  # built once: every epoch reuses the in-memory features
                caches = [self.open_cache(speed) for speed in self._speeds(name)]
                self._datasets[name] = CachedFeatures(d["sha256"], d["label"], caches, self.features.layers,
                                                      self._speaker_indices(d))  # fmt: skip
            return self._datasets[name]
        return AudioClips(d["path"], d["label"], self.audio.sample_rate, self.audio.max_seconds, self.audio.crop,
                          self._speaker_indices(d), self._speeds(name))  # fmt: skip

    def _speaker_indices(self, split: Any) -> List[int]:
        index = {s: i for i, s in enumerate(self.speaker_ids)}
        return [index[s] for s in split["speaker"]]

    def _lengths(self, name: str) -> List[int]:
        sr, max_s = self.audio.sample_rate, self.audio.max_seconds
        return [encoder_frames(mel_frames(int(min(d, max_s) * sr))) for d in self.splits[name]["duration"]]

    def _loader(self, name: str, train: bool, whole: bool = False) -> DataLoader:
        world, rank = 1, 0
        if self.trainer is not None and not whole:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler: Sampler = LengthBucketBatchSampler(
            self._lengths(name), self.cfg.batch_size if train else self.cfg.eval_batch_size, shuffle=train,
            seed=self.seed, bucketing=self.cfg.length_bucketing, num_replicas=world, rank=rank,
        )  # fmt: skip
        if train and self.speeds:  # batches are bucketed by the unperturbed lengths (speed changes them by <= 1/speed)
            sampler = SpeedPerturbBatchSampler(sampler, len(self._speeds(name)), self.seed)
        collate = collate_features if self.features.cached else CollateAudio(self.encoder.num_mel_bins, self.features.policy)
        workers = self.cfg.num_workers
        return DataLoader(self._dataset(name), batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                          persistent_workers=workers > 0)  # fmt: skip

    def stats_dataloader(self) -> DataLoader:
        """The whole training split in a fixed order, on every DDP rank (feature statistics must not differ
        between ranks); no shuffling. Only training speakers: validation and test clips never contribute."""
        return self._loader("train", False, whole=True)

    def speaker_stats_dataloaders(self) -> List[DataLoader]:
        """Every split whole, in a fixed order, on every DDP rank: model.feature_norm=speaker normalises each clip
        with its own speaker's statistics, so test speakers' (unlabelled) clips are read too. Labels are unused."""
        return [self._loader(name, False, whole=True) for name in ("train", "val", "test") if len(self.splits[name])]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)
