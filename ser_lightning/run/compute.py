"""Compute accounting (issue #18): a run's FLOPs, counted by PyTorch's own counter `torch.utils.flop_counter`.

No hand formulas: every figure is FlopCounterMode's count of the REAL forward (and backward) of the run's own
modules (utils/flops.py: what the counter counts; models/flops.py: EncoderCost, ModuleCost), so the input policy,
the layers run, a token stride, fusion, context or adapted blocks are in the count by construction. The counts are
taken once per configuration at a few representative lengths (batch 1), fitted exactly by a polynomial in the
lengths (linear layers are linear in the frames, attention quadratic), verified on further lengths (else counted
per distinct length) and evaluated at every clip's real lengths. They are cached in
`<cache.dir>/../compute/<key>.json`, key = sha256 of everything that changes them (encoder sizes, layers fed and
read, input policy, stride, head options, adaptation): later folds and runs of the configuration only evaluate them.

Figures (results.json `compute`, summary.json `compute` as the mean over folds; GFLOPs = 1e9 FLOPs):
- `encoder_gflops_per_clip`: the frozen encoder (conv front end + blocks 1..max(layer fed), stride included) on one
  clip at its input length under `model.input_seconds` (clip: its own; 10: padded to >= 10 s; clip+T), mean over the
  corpus's clips; `encoder_gflops_per_audio_second`: summed over the clips / their seconds of audio.
- `head_gflops_per_clip`: the trained module's forward from the fed features (`model.adapt=top|lora`: the adapted
  encoder blocks, then the head), mean over the corpus's clips at each clip's own frame counts;
  `inference_gflops_per_clip` = encoder + head.
- `train_gflops_per_epoch`: forward + `loss.backward()` of the module (head + adapted blocks, gradient
  checkpointing's recomputation included) over every training clip once (speed-perturbed copies: the mean over the
  speeds), scaled by `trainer.limit_train_batches`, plus the validation forward over every validation clip; with
  `cache.enabled=false` also the encoder's forward over those clips. `train_gflops` = that x `epochs` (completed);
  `encode_gflops`: the encoder over every clip of the corpus once, at every speed (the cache fill; 0 when the
  encoder runs live); `total_gflops` = encode + train. summary.json adds `cv_total_gflops`: the corpus encoded once
  (the folds share the feature cache) + every fold's training.
- `trainable_parameters` (head + adapted) and `total_parameters` (every parameter on the inference path: the
  encoder's conv front end, positions and blocks run, the adapted blocks and adapters, the head).
Not counted: batch padding (each clip is counted alone at its own length), the test pass, feature-statistics passes
(`model.feature_norm`), sanity validation steps, element-wise work and the optimizer step.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ser_lightning.features.frontend import LengthPolicy, encoder_frames, mel_frames
from ser_lightning.models.flops import EncoderCost, ModuleCost, module_parameters, preserved, stride_of
from ser_lightning.utils.flops import ceil_div
from ser_lightning.utils.io import atomic_write_json, read_json

COUNTER = "torch.utils.flop_counter"
VERSION = 1
GIGA = 1e9
FIELDS = ("encoder_gflops_per_clip", "encoder_gflops_per_audio_second", "head_gflops_per_clip", "inference_gflops_per_clip",
          "train_gflops_per_epoch", "epochs", "train_gflops", "encode_gflops", "total_gflops", "trainable_parameters",
          "total_parameters")  # fmt: skip
SPLITS = ("train", "val", "test")
STATS = {"computed": 0}  # configurations counted in this process (the rest came from the disk cache)


# ---------------------------------------------------------------------------------------------- a run's figures
def compute_dir(cfg: Any) -> Path:
    """Next to the feature cache: `<cache.dir>/../compute`."""
    return Path(str(cfg.cache.dir)).expanduser().parent / "compute"


def identity(cfg: Any, encoder: Any, spec: Any, module: Any, input_frames: bool) -> Dict[str, Any]:
    """Everything that changes the counts (the cache key is its sha256)."""
    from omegaconf import OmegaConf

    c = encoder.encoder.config
    m = cfg.model
    adapt = str(m.get("adapt", "frozen") or "frozen")
    lora = m.get("lora") if adapt == "lora" else None
    adapter = module.adapter
    return {
        "version": VERSION, "torch": ".".join(torch.__version__.split(".")[:2]),
        "encoder": {k: getattr(c, k, None) for k in ("d_model", "encoder_layers", "encoder_attention_heads",
                                                   "encoder_ffn_dim", "num_mel_bins", "max_source_positions")},  # fmt: skip
        "fed_layers": [int(k) for k in module.layers], "read_layers": [int(k) for k in module.read_layers],
        "input_seconds": spec.policy.name, "input_frames": bool(input_frames),
        "encoder_stride": getattr(encoder, "stride_settings", None),
        "token_stride": {k: m.get(k, None) for k in ("encoder_stride_after", "token_stride", "token_pool")},
        "head": module.head.config.to_dict(),
        "adapt": {"mode": adapt, "blocks": [adapter.first, adapter.last] if adapter is not None else [],
                  "lora": OmegaConf.to_container(lora) if lora is not None else None,
                  "grad_checkpointing": bool(m.get("grad_checkpointing", False))},  # fmt: skip
    }


def limited_batches(batches: int, limit: Any) -> int:
    """Training batches per epoch under trainer.limit_train_batches, Lightning's rule: None = all, a value above 1 a
    count, else a fraction (at least one batch)."""
    if limit is None or batches == 0:
        return batches
    limit = float(limit)
    return min(batches, int(limit)) if limit > 1.0 else max(1, int(batches * limit))


def _train_fraction(cfg: Any, n_train: int) -> float:
    """The share of the training clips an epoch sees under trainer.limit_train_batches (1 when unset)."""
    batches = ceil_div(n_train, int(cfg.data.batch_size))
    return limited_batches(batches, cfg.trainer.get("limit_train_batches")) / batches if batches else 1.0


def compute_figures(cfg: Any, encoder: Any, dm: Any, module: Any, epochs: int) -> Dict[str, Any]:
    """The `compute` section of a fold's results.json (see the module docstring for what is counted)."""
    spec = dm.features
    policy: LengthPolicy = spec.policy
    input_frames = policy.pads and (not spec.cached or bool(getattr(spec, "input_frames", False)))
    ident = identity(cfg, encoder, spec, module, input_frames)
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = compute_dir(cfg) / f"{key}.json"
    stored = read_json(path)
    if not isinstance(stored, dict) or stored.get("key") != key:
        stored = {"key": key, "counter": COUNTER, "identity": ident}
    fresh = not all(name in stored for name in ("encoder", "head_forward", "head_train"))
    start = time.perf_counter()
    audio = dm.audio
    sr, max_s = int(audio.sample_rate), float(audio.max_seconds)
    e_stride = stride_of(getattr(encoder, "stride_settings", None))
    with preserved(module):
        enc = EncoderCost(encoder, module.layers, stored.setdefault("encoder", {}))
        mod = ModuleCost(module, encoder.output_dim, input_frames,
                         (stored.setdefault("head_forward", {}), stored.setdefault("head_train", {})))  # fmt: skip
        memo: Dict[Tuple[float, float], Tuple[float, float, float]] = {}

        def clip(seconds: float, speed: float = 1.0) -> Tuple[float, float, float]:
            """(encoder, module forward, module train step) FLOPs of one clip."""
            if (seconds, speed) not in memo:
                samples = int(min(float(seconds) / speed, max_s) * sr)
                t_mel = mel_frames(policy.input_samples(samples))
                content = ceil_div(encoder_frames(mel_frames(samples)), e_stride)
                feats = ceil_div(encoder_frames(t_mel), e_stride)
                point = mod.point(feats, content) if input_frames else mod.point(content)
                memo[(seconds, speed)] = (enc.flops(t_mel), mod.forward(point), mod.train(point))
            return memo[(seconds, speed)]

        everything = [float(d) for d in dm.load_table().dataset["duration"]]
        split = {name: [float(d) for d in dm.splits[name]["duration"]] for name in SPLITS}
        speeds = [1.0] + [float(s) for s in (getattr(dm, "speeds", None) or [])]
        enc_all = [clip(d)[0] for d in everything]
        head_all = [clip(d)[1] for d in everything]
        train_step = sum(sum(clip(d, s)[2] for s in speeds) / len(speeds) for d in split["train"])
        val_forward = sum(clip(d)[1] for d in split["val"])
        if not spec.cached:  # the encoder runs in every training and validation step
            train_step += sum(sum(clip(d, s)[0] for s in speeds) / len(speeds) for d in split["train"])
            val_forward += sum(clip(d)[0] for d in split["val"])
        encode = sum(clip(d, s)[0] for s in speeds for d in everything) if spec.cached else 0.0
    if enc.counted.changed or mod.forward.changed or mod.train.changed:
        stored["seconds"] = round(stored.get("seconds", 0.0) + time.perf_counter() - start, 3)
        atomic_write_json(path, stored)
        if fresh:
            STATS["computed"] += 1
    n = max(1, len(everything))
    audio_seconds = sum(min(d, max_s) for d in everything)
    per_epoch = (_train_fraction(cfg, len(split["train"])) * train_step + val_forward) / GIGA
    trainable, total = module_parameters(encoder, module, module.layers)
    figures = {
        "encoder_gflops_per_clip": sum(enc_all) / n / GIGA,
        "encoder_gflops_per_audio_second": sum(enc_all) / audio_seconds / GIGA if audio_seconds else 0.0,
        "head_gflops_per_clip": sum(head_all) / n / GIGA,
        "inference_gflops_per_clip": (sum(enc_all) + sum(head_all)) / n / GIGA,
        "train_gflops_per_epoch": per_epoch,
        "epochs": int(epochs),
        "train_gflops": per_epoch * int(epochs),
        "encode_gflops": encode / GIGA,
        "total_gflops": encode / GIGA + per_epoch * int(epochs),
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "clips": {**{name: len(split[name]) for name in SPLITS}, "all": len(everything)},
        "counter": COUNTER,
    }
    return figures


def fold_compute(cfg: Any, encoder: Any, dm: Any, module: Any, epochs: int) -> Optional[Dict[str, Any]]:
    """compute_figures for `ser train`; a failure is a warning (None), never a lost run."""
    try:
        return compute_figures(cfg, encoder, dm, module, epochs)
    except Exception as e:  # noqa: BLE001 - accounting must not cost the trained run its results
        warnings.warn(f"compute accounting failed ({type(e).__name__}: {e}); results.json has no compute figures")
        return None


# ---------------------------------------------------------------------------------------------- folds, ensembles
def cv_compute(folds: Sequence[Optional[Mapping[str, Any]]]) -> Optional[Dict[str, Any]]:
    """summary.json `compute`: the mean over folds of every figure, and `cv_total_gflops`, the whole CV's cost:
    the corpus encoded once (the folds share the feature cache) plus every fold's training. None unless every
    fold has figures."""
    if not folds or any(not isinstance(f, Mapping) for f in folds):
        return None
    n = len(folds)

    def mean(values: Sequence[Any]) -> Optional[float]:
        # a figure some fold lacks (figures written by an older version, or by hand) is None, not an error: a report
        # over such runs must still build
        return sum(float(v) for v in values) / n if all(isinstance(v, (int, float)) for v in values) else None

    out: Dict[str, Any] = {k: mean([f.get(k) for f in folds]) for k in FIELDS}
    for k in ("trainable_parameters", "total_parameters"):
        out[k] = None if out[k] is None else int(round(out[k]))
    clips = [f.get("clips") if isinstance(f.get("clips"), Mapping) else {} for f in folds]
    out["clips"] = {k: mean([c.get(k) for c in clips]) for k in (*SPLITS, "all") if all(k in c for c in clips)}
    out["counter"] = COUNTER
    out["folds"] = n
    encode, train = [f.get("encode_gflops") for f in folds], [f.get("train_gflops") for f in folds]
    known = all(isinstance(v, (int, float)) for v in encode + train)
    out["cv_total_gflops"] = max(map(float, encode)) + sum(map(float, train)) if known else None
    return out


def ensemble_compute(members: Sequence[Optional[Mapping[str, Any]]]) -> Optional[Dict[str, Any]]:
    """An ensemble fold's `compute`: one encoder pass and every member's head per clip; every member's training;
    the corpus encoded once; parameters: the encoder once, every member's head and adapted blocks."""
    if not members or any(not isinstance(m, Mapping) for m in members):
        return None
    first: Mapping[str, Any] = members[0]  # type: ignore[assignment]

    def total(key: str) -> float:
        return sum(float(m[key]) for m in members)  # type: ignore[index]

    head = total("head_gflops_per_clip")
    train = total("train_gflops")
    return {
        "encoder_gflops_per_clip": first["encoder_gflops_per_clip"],
        "encoder_gflops_per_audio_second": first["encoder_gflops_per_audio_second"],
        "head_gflops_per_clip": head,
        "inference_gflops_per_clip": float(first["encoder_gflops_per_clip"]) + head,
        "train_gflops_per_epoch": total("train_gflops_per_epoch"),
        "epochs": max(int(m["epochs"]) for m in members),  # type: ignore[index]
        "train_gflops": train,
        "encode_gflops": first["encode_gflops"],
        "total_gflops": float(first["encode_gflops"]) + train,
        "trainable_parameters": int(total("trainable_parameters")),
        # the encoder once; every further member adds its own trained head and adapted blocks
        "total_parameters": int(first["total_parameters"] + total("trainable_parameters") - first["trainable_parameters"]),
        "clips": dict(first["clips"]),
        "counter": COUNTER,
    }
