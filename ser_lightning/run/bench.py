"""`ser bench`: our pipeline against the paper's recipe, side by side, in one invocation.

    ser bench --parts encode,cache --clips 200 model.encoder=random:small          # synthetic ShEMO-like set
    ser bench --parts encode,cv,cache data=ravdess model.encoder=../shared/models/whisper-base-encoder model.layer=5
    ser bench --parts policies --clips 64 data=ravdess model.encoder=... 'model.layers=[1,2,3,4,5,6]'

Parts (any subset, comma-separated; each row says what was measured and what was estimated):
- encode: throughput (clips/s, audio s/s) and peak memory from audio to the requested layers' features in
  device memory. Ours uses `model.input_seconds=clip` unless the command line sets another policy (the
  config default may be '30'). Paper recipe = WhisperFeatureExtractor padding every clip to 30 s, fp32, the whole encoder
  run through transformers (`output_hidden_states=True`), one clip at a time; it costs the same for every clip,
  so it is timed on a sample (`--paper-clips`) and extrapolated to all clips. Ours = length-sorted batches,
  `model.input_seconds` policy (masked any-length forward), `model.encoder_dtype` (bf16 on CUDA by default),
  only blocks up to the deepest requested layer, `model.compile` optional; every clip is timed.
- policies: our throughput for each input policy (`--policies clip,5,10,15,30`) on the same clips.
- cv: one cross-validation of one configuration from audio to summary.json. Ours is MEASURED: `ser cv` run
  for real (table build, cache fill, training, testing, exports) on the corpus or on the synthetic set written
  to disk with synthetic labels / speakers. The paper side is ESTIMATED from measured pieces: per-clip encode
  time x clips (once, features written as fp32 1500-frame files), plus per fold and epoch: training steps of
  the same head at batch 16 on 1500-frame inputs, evaluating the test fold (the paper evaluated on it every
  epoch), and reading every clip's fp32 file (page cache warm: a lower bound).
- cache: bytes per clip and layer on disk: our FeatureCache shards (fp16, trimmed to each clip's frames)
  against one fp32 .npy file of 1500 x d per clip and layer (the paper); both written and measured.

Without `data=...` (data.root unset) the clips are a seeded synthetic ShEMO-like set: lognormal lengths
(mean ~4 s, 1..30 s), speech-like noise. The report (markdown table + machine) is printed and appended to
docs/benchmarks.md (`--write`, `--no-write`); `--json` stores every number.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

SAMPLE_RATE = 16000
PARTS = ("encode", "policies", "cv", "cache")
DEFAULT_WRITE = "docs/benchmarks.md"
# ShEMO without fear (the paper's 5 classes), for synthetic labels of the cv part
SHEMO_CLASSES = {"neutral": 1160, "anger": 1042, "sadness": 361, "happiness": 203, "surprise": 202}


# ------------------------------------------------------------------------------------------------ machine
def machine_info() -> Dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = []
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "torch_threads": torch.get_num_threads(),
        "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_avg_1_5_15": load,
    }  # fmt: skip


def machine_line(m: Dict[str, Any]) -> str:
    cuda = f", CUDA {m['cuda']}" if m.get("gpu", "none") != "none" else ""
    load = m.get("load_avg_1_5_15") or []
    load_txt = f"; load average at start {load[0]} (1 min)" if load else ""
    return (
        f"{m['date']}: CPU {m['cpu']} ({m['usable_cores']} usable cores, torch threads {m['torch_threads']}), "
        f"GPU {m['gpu']}{cuda}, torch {m['torch']}, Python {m['python']}{load_txt}"
    )


# ------------------------------------------------------------------------------------------------ memory
class PeakMemory(contextlib.AbstractContextManager):
    """Peak memory of a section: torch.cuda.max_memory_allocated on CUDA (weights included); on the CPU the
    peak resident set size sampled every few ms, minus the RSS at the start (what the section added)."""

    def __init__(self, device: Any) -> None:
        self.cuda = str(device).startswith("cuda")
        self.peak_bytes = 0
        self.kind = "cuda max_memory_allocated" if self.cuda else "peak RSS increase (sampled)"
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):  # pragma: no cover - not Linux: the process-lifetime peak
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        _trim_heap()  # hand freed heap memory back to the OS, so what this section allocates shows in the RSS
        self._start = self._peak = self.rss()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._peak = max(self._peak, self.rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = int(torch.cuda.max_memory_allocated())
            return None
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.rss())
        self.peak_bytes = int(self._peak - self._start)
        return None


def _trim_heap() -> None:
    """glibc keeps freed memory mapped (the RSS would hide a section's allocations); malloc_trim returns it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _sync(device: Any) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ clips
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


# ------------------------------------------------------------------------------------------------ encode
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


# ------------------------------------------------------------------------------------------------ cache
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


# ------------------------------------------------------------------------------------------------ cv
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


def time_head_paper(cfg: Any, dim: int, num_classes: int, device: Any, reps: int = 3) -> Dict[str, float]:
    """Seconds per training step (batch 16, 1500 frames, AdamW) and per evaluated clip of the configured head,
    on 1500-frame inputs: the paper's training and per-epoch test-fold evaluation, measured."""
    import torch

    from ser_lightning.models.head import SERHead

    m = cfg.model
    torch.manual_seed(0)
    head = SERHead(dim, num_classes, pooling=m.pooling, proj_dim=m.proj_dim, heads=m.heads, head_dim=m.head_dim,
                   dropout=m.dropout).to(device)  # fmt: skip
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    x = torch.randn(16, 1500, dim, device=device)
    mask = torch.ones(16, 1500, dtype=torch.bool, device=device)
    y = torch.randint(0, num_classes, (16,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(head(x, mask), y).backward()
        opt.step()

    step()
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    head.eval()
    with torch.no_grad():
        head(x, mask)
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            head(x, mask)
        _sync(device)
        eval_clip = (time.perf_counter() - t) / (reps * 16)
    return {"train_step_s": float(np.median(times)), "eval_clip_s": eval_clip}


def time_fp32_file_read(dim: int, workdir: Path, files: int = 16) -> float:
    """Seconds to np.load one 1500 x dim fp32 file (written just before: page cache warm, a lower bound)."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        p = workdir / f"u{i}.npy"
        np.save(p, np.full((1500, dim), i, np.float32))
        paths.append(p)
    np.load(paths[0])
    t = time.perf_counter()
    for p in paths:
        np.load(p)
    return (time.perf_counter() - t) / files


def paper_cv_estimate(n_clips: int, per_clip_encode_s: float, folds: Sequence[Dict[str, int]], epochs: int,
                      train_step_s: float, eval_clip_s: float, read_file_s: float, batch_size: int = 16) -> Dict[str, Any]:  # fmt: skip
    """The paper's CV time from measured pieces. folds: [{'n_train': ..., 'n_test': ...}] (its train set is every
    non-test speaker). Encoding once (fp32 files); then per fold and epoch: training steps, one test-fold
    evaluation, and one read of every clip's file."""
    encode = n_clips * per_clip_encode_s
    train = evaluate = read = 0.0
    for f in folds:
        train += epochs * math.ceil(f["n_train"] / batch_size) * train_step_s
        evaluate += epochs * f["n_test"] * eval_clip_s
        read += epochs * (f["n_train"] + f["n_test"]) * read_file_s
    return {"encode_s": encode, "train_s": train, "eval_s": evaluate, "read_s": read,
            "total_s": encode + train + evaluate + read}  # fmt: skip


def run_ours_cv(cfg: Any, encoder: Any, workdir: Path, folds: Optional[Sequence[int]], epochs: int,
                cold: bool) -> Dict[str, Any]:  # fmt: skip
    """`ser cv` for real on cfg's corpus; the cache fill is timed apart from training (cold: fresh cache dir)."""
    from omegaconf import OmegaConf, open_dict

    from ser_lightning.data.datamodule import FeatureSpec, SERDataModule
    from ser_lightning.features.frontend import LengthPolicy
    from ser_lightning.run.cv import corpus_folds, run_cv

    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.output_dir = str(workdir / "cv")
        c.trainer.max_epochs = int(epochs)
        c.trainer.enable_progress_bar = False
        c.wandb.mode = "disabled"
        if cold:
            c.cache.dir = str(workdir / "cache")
            c.data.table_cache_dir = str(workdir / "tables")
    all_folds = corpus_folds(c)
    run_folds = list(folds) if folds else all_folds
    with open_dict(c):
        c.cv.folds = run_folds
    start = time.perf_counter()
    layers = encoder.resolve_layers(_layer_list(c.model.layers, c.model.layer))
    spec = FeatureSpec(layers, LengthPolicy.parse(c.model.input_seconds), True, c.cache.dir, c.cache.dtype,
                       bool(c.cache.verify), int(c.cache.encode_batch_size))  # fmt: skip
    dm = SERDataModule(OmegaConf.to_container(c.data, resolve=True), spec, encoder, seed=c.seed)
    ds = dm._table().dataset
    hashes = list(ds["sha256"])
    cache = dm.open_cache()
    cache.refresh()
    missing = len(cache.missing(hashes, layers))
    dm.fill(dict(zip(hashes, ds["path"])), dict(zip(hashes, ds["duration"])))
    encode_s = time.perf_counter() - start
    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_cv(c, encoder=encoder)
    train_s = time.perf_counter() - t
    import json

    per_fold = []
    for k in run_folds:
        r = json.loads((workdir / "cv" / f"fold_{k}" / "results.json").read_text())
        per_fold.append({"fold": k, "n_train": r["n_train"], "n_val": r["n_val"], "n_test": r["n_test"],
                         "wall_s": r["wall_time_s"]})  # fmt: skip
    total = encode_s + train_s
    extrapolated = len(run_folds) < len(all_folds)
    return {
        "clips": len(hashes), "clips_missing_before": missing, "cold": cold, "encode_s": encode_s,
        "train_s": train_s, "folds_run": run_folds, "folds_all": all_folds, "epochs": int(epochs),
        "measured_s": total, "per_fold": per_fold, "extrapolated": extrapolated,
        "total_s": encode_s + train_s / len(run_folds) * len(all_folds), "ua": summary["test/ua"]["mean"],
        "layers": layers,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ report
def _row(part: str, metric: str, paper: float, ours: float, unit: str, better: str, how_paper: str,
         how_ours: str) -> Dict[str, Any]:  # fmt: skip
    """One side-by-side row; ratio = how many times ours is better, computed from the two numbers
    (better='higher': ours / paper; 'lower': paper / ours)."""
    if better == "higher":
        ratio = ours / paper if paper > 0 else float("inf")
    else:
        ratio = paper / ours if ours > 0 else float("inf")
    return {"part": part, "metric": metric, "unit": unit, "paper": paper, "ours": ours, "better": better,
            "ratio": ratio, "paper_how": how_paper, "ours_how": how_ours}  # fmt: skip


def encode_rows(e: Dict[str, Any]) -> List[Dict[str, Any]]:
    o, p, n = e["ours"], e["paper"], e["clips"]
    paper_how = (f"measured on {p['clips_timed']} clips, extrapolated to {n}" if p["extrapolated"]
                 else f"measured on all {n} clips")  # fmt: skip
    ours_how = f"measured on all {n} clips ({o['batches']} batches)"
    rows = [
        _row("encode", "throughput", n / p["seconds_all"], n / o["seconds"], "clips/s", "higher", paper_how, ours_how),
        _row("encode", "throughput", e["audio_s"] / p["seconds_all"], e["audio_s"] / o["seconds"], "audio s/s", "higher",
             paper_how, ours_how),
        _row("encode", f"time for {n} clips", p["seconds_all"], o["seconds"], "s", "lower", paper_how, ours_how),
    ]  # fmt: skip
    if p["peak_bytes"] > 0 and o["peak_bytes"] > 0:
        rows.append(_row("encode", f"peak memory ({o['memory_kind']})", p["peak_bytes"] / 2**20, o["peak_bytes"] / 2**20,
                         "MiB", "lower", f"measured ({p['clips_timed']} clips)", "measured"))  # fmt: skip
    return rows


def cv_rows(c: Dict[str, Any]) -> List[Dict[str, Any]]:
    ours, est = c["ours"], c["paper"]
    folds, epochs = len(ours["folds_all"]), ours["epochs"]
    ours_how = ("measured" if not ours["extrapolated"]
                else f"measured {len(ours['folds_run'])} of {folds} folds, training time extrapolated")  # fmt: skip
    ours_how += f"; cache {'cold' if ours['clips_missing_before'] else 'warm'} ({ours['clips_missing_before']} clips encoded)"
    return [
        _row("cv", f"one CV ({folds} folds x {epochs} epochs), audio to summary", est["total_s"], ours["total_s"], "s",
             "lower", "estimated from measured per-clip encode, head step, eval and file-read times", ours_how),
    ]  # fmt: skip


def cache_rows(c: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [
        _row("cache", "bytes per clip and layer", c["paper_bytes_per_clip_layer"] / 1e6, c["ours_bytes_per_clip_layer"] / 1e6,
             "MB", "lower", "measured (.npy of 1500 x d fp32)",
             f"measured ({c['clips']} clips x {len(c['layers'])} layers, {c['cache_dtype']}, mean {c['mean_frames']:.0f} frames)"),
    ]  # fmt: skip


def _fmt(x: float) -> str:
    if x == float("inf"):
        return "inf"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def format_report(report: Dict[str, Any]) -> str:
    s = report["setup"]
    lines = [
        f"### `ser bench` {report['machine']['date']}",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Setup: encoder `{s['encoder']}` ({s['num_layers']} layers, d={s['dim']}), requested layers {s['layers']}, "
        f"clips: {s['clips_desc']}; ours: policy {s['policy']}, {s['dtype']}, batch <= {s['batch_size']} "
        f"length-sorted, blocks 1..{max(s['layers'])} run{', torch.compile' if s['compile'] else ''}; "
        f"paper: 30 s padding, fp32, all {s['num_layers']} blocks, batch 1.",
        "",
        "| part | metric | paper recipe | ours | ours better by | paper: how | ours: how |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['part']} | {r['metric']} ({r['unit']}) | {_fmt(r['paper'])} | {_fmt(r['ours'])} | "
            f"{_fmt(r['ratio'])}x | {r['paper_how']} | {r['ours_how']} |"
        )
    if report.get("encode"):
        o = report["encode"]["ours"]
        lines += ["", f"Ours, split: front end {o['frontend_s']:.2f} s, encoder {o['encoder_s']:.2f} s "
                      f"(features left in device memory; copies to the host and cache writes are not in the encode rows)."]  # fmt: skip
    if report.get("policies"):
        lines += ["", "| policy (ours) | clips/s | audio s/s | encoder frames |", "|---|---|---|---|"]
        for p in report["policies"]:
            lines.append(f"| {p['policy']} | {_fmt(p['clips_per_s'])} | {_fmt(p['audio_s_per_s'])} | {p['encoder_frames']} |")
    if report.get("cv"):
        o, e = report["cv"]["ours"], report["cv"]["paper"]
        lines += [
            "",
            f"CV detail. Ours (measured): encode/cache fill {o['encode_s']:.1f} s + `ser cv` {o['train_s']:.1f} s for folds "
            f"{o['folds_run']} (of {len(o['folds_all'])}), {o['epochs']} epochs; mean test UA {100 * o['ua']:.2f}"
            f"{' (synthetic labels: meaningless)' if report['setup']['clips_desc'].startswith('synthetic') else ''}. Paper (estimated): encode {e['encode_s']:.0f} s + train "
            f"{e['train_s']:.0f} s + test-fold eval {e['eval_s']:.0f} s + fp32 file reads {e['read_s']:.0f} s, from "
            f"measured {report['cv']['pieces']['per_clip_encode_s']:.3f} s/clip encode, "
            f"{report['cv']['pieces']['train_step_s'] * 1000:.1f} ms/step (16 x 1500 frames), "
            f"{report['cv']['pieces']['eval_clip_s'] * 1000:.2f} ms/clip eval, "
            f"{report['cv']['pieces']['read_file_s'] * 1000:.2f} ms/file read.",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def append_markdown(path: Path, text: str) -> None:
    from ser_lightning.utils.io import atomic_write_text

    path = Path(path)
    head = path.read_text() if path.exists() else "# Benchmarks\n"
    if "<!-- ser bench results -->" not in head:
        head = head.rstrip("\n") + "\n\n## Results appended by `ser bench`\n\n<!-- ser bench results -->\n"
    atomic_write_text(path, head.rstrip("\n") + "\n\n" + text)


# ------------------------------------------------------------------------------------------------ driver
def _layer_list(layers: Optional[Sequence[int]], layer: int) -> List[int]:
    """model.layers if set, else [model.layer] (as models.module.layer_list, without importing Lightning)."""
    return list(layers) if layers else [layer]


def corpus_waves(cfg: Any, clips: Optional[int], seed: int) -> tuple:
    """(waves, description) of up to `clips` clips of cfg's corpus (seeded sample), decoded and cropped."""
    from omegaconf import OmegaConf

    from ser_lightning.data.table import build_table
    from ser_lightning.features.extract import load_clip

    data = OmegaConf.to_container(cfg.data, resolve=True)
    ds = build_table(data).dataset
    n = len(ds)
    idx = list(range(n))
    if clips and clips < n:
        idx = sorted(np.random.default_rng(seed).choice(n, size=clips, replace=False).tolist())
    paths = ds.select(idx)["path"]
    waves = [load_clip(p, int(data["sample_rate"]), float(data["max_seconds"]), data["crop"]) for p in paths]
    mean = np.mean([len(w) for w in waves]) / SAMPLE_RATE
    return waves, f"{cfg.data.name} ({len(waves)} of {n} clips, mean {mean:.2f} s)"


def run_bench(cfg: Any, parts: Sequence[str], clips: Optional[int] = None, paper_clips: int = 8,
              batch_size: Optional[int] = None, policies: Sequence[str] = ("clip", "5", "10", "15", "30"),
              cv_folds: Optional[int] = None, cv_epochs: Optional[int] = None, cold: bool = True,
              workdir: Optional[Path] = None, command: str = "ser bench", encoder: Any = None,
              speakers: int = 87, num_folds: int = 10, corpus_dir: Optional[Path] = None) -> Dict[str, Any]:  # fmt: skip
    """Run the chosen parts and return the report (rows with both sides and ratios, machine, details)."""
    import torch
    from omegaconf import OmegaConf, open_dict

    from ser_lightning.features.encoder import load_encoder
    from ser_lightning.features.frontend import LengthPolicy, encoder_frames, mel_frames

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown bench part(s) {unknown}; choose from {', '.join(PARTS)}")
    machine = machine_info()
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"
    if encoder is None:
        encoder = load_encoder(cfg.model.encoder, device=device, dtype=cfg.model.encoder_dtype, seed=cfg.seed)
        if cfg.model.compile:
            encoder.compile_blocks()
    device = next(encoder.parameters()).device
    layers = encoder.resolve_layers(_layer_list(cfg.model.layers, cfg.model.layer))
    policy = LengthPolicy.parse(cfg.model.input_seconds)
    dtype = str(next(encoder.parameters()).dtype).replace("torch.", "")
    if batch_size is None:
        batch_size = 256 if device.type == "cuda" else 16
    max_batch_samples = batch_size * 10 * SAMPLE_RATE  # at most ~10 s of padded audio per clip slot
    synthetic = OmegaConf.is_missing(cfg.data, "root")
    if synthetic:
        n = clips or 200
        lengths = shemo_like_lengths(n, cfg.seed)
        synth = SyntheticClips(lengths, cfg.seed)
        waves = synth.waves()
        clips_desc = f"synthetic ShEMO-like, {n} clips, mean {lengths.mean():.2f} s, {lengths.min():.1f}-{lengths.max():.1f} s (seed {cfg.seed})"
    else:
        waves, clips_desc = corpus_waves(cfg, clips, cfg.seed)
    own_tmp = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ser-bench-")) if own_tmp else Path(workdir)
    report: Dict[str, Any] = {
        "machine": machine, "command": command, "parts": list(parts), "rows": [],
        "setup": {"encoder": encoder.source, "num_layers": encoder.num_layers, "dim": encoder.output_dim,
                  "layers": layers, "policy": policy.name, "dtype": dtype, "batch_size": batch_size,
                  "compile": bool(getattr(encoder, "compiled", False)), "clips_desc": clips_desc, "device": str(device)},
    }  # fmt: skip
    try:
        paper_encoder = None
        paper_timing = None

        def get_paper_encoder():
            nonlocal paper_encoder
            if paper_encoder is None:
                same = next(encoder.parameters()).dtype == torch.float32 and not getattr(encoder, "compiled", False)
                paper_encoder = encoder if same else load_encoder(cfg.model.encoder, device=device, dtype="fp32", seed=cfg.seed)
            return paper_encoder

        if "encode" in parts or "cv" in parts:
            rng = np.random.default_rng(cfg.seed)
            sample = sorted(rng.choice(len(waves), size=min(paper_clips, len(waves)), replace=False).tolist())
            print(f"[ser bench] paper recipe: timing {len(sample)} clips (30 s, fp32, batch 1, all blocks)", file=sys.stderr)
            paper_timing = time_paper(get_paper_encoder(), [waves[i] for i in sample], max(layers))
        if "encode" in parts:
            print(f"[ser bench] ours: encoding {len(waves)} clips", file=sys.stderr)
            report["encode"] = bench_encode(encoder, None, waves, policy, layers, batch_size, paper_clips,
                                            max_batch_samples, cfg.seed, paper=paper_timing)  # fmt: skip
            report["rows"] += encode_rows(report["encode"])
        if "policies" in parts:
            print(f"[ser bench] ours: policies {list(policies)}", file=sys.stderr)
            report["policies"] = bench_policies(encoder, waves, policies, layers, batch_size, max_batch_samples)
        if "cv" in parts:
            c = copy.deepcopy(cfg)
            if synthetic:
                print(f"[ser bench] cv: writing {len(waves)} synthetic clips", file=sys.stderr)
                manifest = write_synthetic_corpus(Path(corpus_dir) if corpus_dir else workdir / "corpus", synth,
                                                  min(speakers, len(waves)), num_folds, SHEMO_CLASSES, cfg.seed)  # fmt: skip
                with open_dict(c):
                    c.data.name = "manifest"
                    c.data.root = str(manifest)
                    c.data.manifest = str(manifest)
                    c.data.num_folds = None
                    c.data.classes = None
            folds = None
            if cv_folds:
                from ser_lightning.run.cv import corpus_folds

                folds = corpus_folds(c)[:cv_folds]
            epochs = int(cv_epochs or cfg.trainer.max_epochs)
            print(f"[ser bench] cv: ours, `ser cv` for real ({'all' if not folds else folds} folds x {epochs} epochs)", file=sys.stderr)
            ours = run_ours_cv(c, encoder, workdir, folds, epochs, cold)
            n_classes = len(set(SHEMO_CLASSES)) if synthetic else None
            if n_classes is None:
                from ser_lightning.data.table import load_corpus

                n_classes = len(load_corpus(OmegaConf.to_container(c.data, resolve=True)).class_names)
            head = time_head_paper(cfg, encoder.output_dim, n_classes, device)
            read = time_fp32_file_read(encoder.output_dim, workdir / "paper_files")
            assert paper_timing is not None
            # the paper's train set is every non-test speaker (it had no validation split); folds not run are
            # assumed the size of the mean fold that was
            nf = [{"n_train": f["n_train"] + f["n_val"], "n_test": f["n_test"]} for f in ours["per_fold"]]
            scale = len(ours["folds_all"]) / len(nf)
            est = paper_cv_estimate(ours["clips"], paper_timing["per_clip_s"], nf, epochs, head["train_step_s"],
                                    head["eval_clip_s"], read)  # fmt: skip
            for key in ("train_s", "eval_s", "read_s"):
                est[key] *= scale
            est["total_s"] = est["encode_s"] + est["train_s"] + est["eval_s"] + est["read_s"]
            report["cv"] = {"ours": ours, "paper": est, "pieces": {"per_clip_encode_s": paper_timing["per_clip_s"],
                                                                     **head, "read_file_s": read}}  # fmt: skip
            report["rows"] += cv_rows(report["cv"])
        if "cache" in parts:
            frames = [encoder_frames(mel_frames(len(w))) for w in waves]
            report["cache"] = bench_cache(frames, encoder.output_dim, layers, workdir / "cache_size", cfg.cache.dtype)
            report["rows"] += cache_rows(report["cache"])
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    report["markdown"] = format_report(report)
    return report


def _add_options(p: argparse.ArgumentParser, late: bool = False) -> None:
    """The options (`late`: for options written after the overrides, which set only what they name)."""
    d = (lambda v: argparse.SUPPRESS) if late else (lambda v: v)
    p.add_argument("--parts", default=d("encode,cache"), help=f"comma-separated subset of {','.join(PARTS)} (default encode,cache)")
    p.add_argument("--clips", type=int, default=d(None), help="clips: synthetic set size (default 200) or a seeded sample of the corpus (default all)")
    p.add_argument("--paper-clips", type=int, default=d(8), help="clips the paper's recipe is timed on (then extrapolated)")
    p.add_argument("--batch-size", type=int, default=d(None), help="our encoder batch (default 16 on CPU, 256 on CUDA)")
    p.add_argument("--policies", default=d("clip,5,10,15,30"), help="input policies for --parts policies")
    p.add_argument("--cv-folds", type=int, default=d(None), help="run only the first K folds of the CV (training time extrapolated)")
    p.add_argument("--cv-epochs", type=int, default=d(None), help="epochs per fold (default trainer.max_epochs)")
    p.add_argument("--warm", action="store_true", default=d(False), help="cv: use cache.dir as it is (default: a fresh, cold cache)")
    p.add_argument("--speakers", type=int, default=d(87), help="synthetic cv: speakers (ShEMO: 87)")
    p.add_argument("--folds", type=int, default=d(10), help="synthetic cv: speaker folds (ShEMO: 10)")
    p.add_argument("--corpus-dir", default=d(None), help="synthetic cv: write (and keep) the corpus here: wavs + "
                   "manifest.csv, usable as data=manifest data.root=DIR/manifest.csv (e.g. for ser sweep)")  # fmt: skip
    p.add_argument("--write", default=d(DEFAULT_WRITE), help=f"markdown file the report is appended to (default {DEFAULT_WRITE})")
    p.add_argument("--no-write", action="store_true", default=d(False), help="print only")
    p.add_argument("--json", default=d(None), help="also write every number to this JSON file")


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("bench", help="speed and size against the paper's recipe (encode, policies, cv, cache); "
                                     "prints a table and appends it to docs/benchmarks.md")  # fmt: skip
    _add_options(p)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="group selections and key=value overrides (options may follow them)")

    def run(args: argparse.Namespace) -> int:
        args = parse_late_options(args, _add_options)
        from ser_lightning.config import compose, require
        from ser_lightning.utils.io import atomic_write_json

        overrides = list(args.overrides)
        if not any(o.lstrip("-").startswith("model.input_seconds=") for o in overrides):
            overrides.append("model.input_seconds=clip")  # ours: the clip policy unless another one is asked for
        cfg = compose(overrides)
        require(cfg, "model.encoder")
        parts = [x.strip() for x in args.parts.split(",") if x.strip()]
        command = "ser bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "ser bench"
        report = run_bench(cfg, parts, clips=args.clips, paper_clips=args.paper_clips, batch_size=args.batch_size,
                           policies=[x.strip() for x in args.policies.split(",") if x.strip()], cv_folds=args.cv_folds,
                           cv_epochs=args.cv_epochs, cold=not args.warm, command=command, speakers=args.speakers,
                           num_folds=args.folds, corpus_dir=args.corpus_dir)  # fmt: skip
        print(report["markdown"])
        if not args.no_write:
            append_markdown(Path(args.write), report["markdown"])
            print(f"[ser bench] appended to {args.write}")
        if args.json:
            atomic_write_json(args.json, {k: v for k, v in report.items() if k != "markdown"})
        return 0

    return run


def parse_late_options(args: argparse.Namespace, add_options: Callable[..., None]) -> argparse.Namespace:
    """Options written after the first override (`ser bench model.encoder=x --clips 5`) land in the overrides
    (argparse.REMAINDER); parse them out so that options and overrides may come in any order."""
    late = argparse.ArgumentParser(add_help=False, prog="ser")
    add_options(late, late=True)
    late.add_argument("overrides", nargs="*")
    ns = late.parse_intermixed_args(list(args.overrides or []))
    merged = argparse.Namespace(**vars(args))
    for key, value in vars(ns).items():
        setattr(merged, key, value)
    return merged
