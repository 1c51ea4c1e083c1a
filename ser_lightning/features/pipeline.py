"""THE builder of the feature side of every job (train, cv, cache, probe, bench): the frozen encoder on its
device, what the head reads from it (FeatureSpec) and the feature cache those features live in.

    encoder = load_config_encoder(cfg)               # device from trainer.accelerator; model.compile applied
    spec = feature_spec(cfg, encoder)                # layers resolved 1..L, input policy, cache settings
    cache = open_feature_cache(spec, encoder, audio) # keyed by everything that changes the features
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from ser_lightning.features.cache import FeatureCache, cache_for
from ser_lightning.features.encoder import FrozenWhisperEncoder, load_encoder
from ser_lightning.features.frontend import LengthPolicy

FRONTEND_VERSION = "whisper-logmel-v1"


@dataclass
class FeatureSpec:
    """What the model reads from the encoder (part of the cache key together with the encoder fingerprint)."""

    layers: List[int]  # resolved 1..L
    policy: LengthPolicy
    cached: bool = True
    cache_dir: str = ".ser_cache/features"
    cache_dtype: str = "fp16"
    verify: bool = True
    encode_batch_size: int = 16
    # adapted blocks under a padding input policy (10 s / 30 s / clip+T): the fed layers keep every frame the encoder
    # attended to (their own cache key), since the adapted blocks attend to the padding frames too
    input_frames: bool = False


@dataclass(frozen=True)
class AudioSettings:
    """How clips are turned into encoder input before the encoder (changes the features: in the cache key)."""

    sample_rate: int = 16000
    max_seconds: float = 30.0
    crop: str = "center"

    @classmethod
    def of(cls, data: Any) -> "AudioSettings":
        """From a data config (typed DataConfig, DictConfig or a dict with the same keys)."""
        get = data.get if isinstance(data, dict) else (lambda k, d=None: getattr(data, k, d))
        return cls(int(get("sample_rate", 16000)), float(get("max_seconds", 30.0)), str(get("crop", "center")))


def encoder_device(accelerator: str = "auto") -> str:
    """The one device rule: CUDA when there is one and the trainer may use it (trainer.accelerator auto / gpu /
    cuda), else the CPU."""
    return "cuda" if torch.cuda.is_available() and str(accelerator) in ("auto", "gpu", "cuda") else "cpu"


def load_config_encoder(cfg: Any, encoder: Optional[FrozenWhisperEncoder] = None) -> FrozenWhisperEncoder:
    """The frozen encoder of a configuration (model.encoder, model.encoder_dtype, seed for random:<size>), on
    encoder_device(trainer.accelerator); `model.compile` compiles its blocks. A given encoder is reused (and
    compiled when the configuration asks for it)."""
    if encoder is None:
        encoder = load_encoder(cfg.model.encoder, device=encoder_device(cfg.trainer.accelerator),
                               dtype=cfg.model.encoder_dtype, seed=cfg.seed)  # fmt: skip
    if bool(cfg.model.compile) and not encoder.compiled:
        encoder.compile_blocks()
    return configure_stride(encoder, cfg.model)


def configure_stride(encoder: FrozenWhisperEncoder, model: Any) -> FrozenWhisperEncoder:
    """Set (or clear) the encoder's token stride from a model section (issue #18): model.encoder_stride_after = j puts
    model.token_stride / token_pool after block j (the head then gets token_stride 1, HeadConfig.from_options); null
    leaves the encoder unstrided (the stride, if any, is the head's). Checked against the encoder (j in 1..L-1) and
    the adaptation (j below the first adapted block). Returns the encoder; a reused encoder is reconfigured."""
    after = model.get("encoder_stride_after")
    stride, pool = int(model.get("token_stride", 1)), str(model.get("token_pool", "skip"))
    if after is not None and stride > 1:
        plan = adaptation(model, encoder)
        if plan is not None and int(after) >= plan[0][0]:
            first, last = plan[0][0], plan[0][-1]
            raise ValueError(f"model.encoder_stride_after={after} with model.adapt={model.adapt}: the adapted blocks "
                             f"{first}..{last} are fed from layer {first - 1} and run at full resolution, so the stride "
                             f"must come before them: encoder_stride_after in 1..{first - 1}, or null (the stride at the "
                             "head input)")  # fmt: skip
    return encoder.set_stride(after, stride, pool)


def layer_list(layers: Optional[Sequence[int]], layer: int) -> List[int]:
    """model.layers when set (fusion), else [model.layer]."""
    return [int(x) for x in layers] if layers else [int(layer)]


def head_layers(model: Any, encoder: FrozenWhisperEncoder) -> tuple:
    """(query layers, key/value layers), resolved 1..L: model.layers (or [model.layer]); with model.fusion=cma also
    model.cma.layers (default: the last layer), else []. The head reads them in that order."""
    query = encoder.resolve_layers(layer_list(model.layers, model.layer))
    kv: List[int] = []
    if model.get("fusion") == "cma":
        kv = encoder.resolve_layers(list((model.get("cma") or {}).get("layers") or [-1]))
    return query, kv


def adaptation(model: Any, encoder: FrozenWhisperEncoder) -> Optional[tuple]:
    """model.adapt=top|lora: (adapted blocks, fed layers): the k blocks ending at the deepest read layer (query and, with
    fusion=cma, key/value layers), and the layers
    the module is fed (from the cache or the live encoder): the read layers below the first adapted block, then that
    block's input layer. None when the encoder is frozen."""
    if model.get("adapt", "frozen") == "frozen":
        return None
    from ser_lightning.models.adapt import adapted_blocks

    query, kv = head_layers(model, encoder)
    read = list(dict.fromkeys(query + kv))  # fusion=cma: the key/value layers are read (and may be adapted) too
    blocks = adapted_blocks(read, int(model.adapt_blocks), encoder.num_layers)
    fed = [k for k in read if k < blocks[0]]
    return blocks, fed + ([blocks[0] - 1] if blocks[0] - 1 not in fed else [])


def feature_spec(cfg: Any, encoder: FrozenWhisperEncoder, *, layers: Optional[Sequence[int]] = None,
                 policy: Optional[str] = None, cached: Optional[bool] = None) -> FeatureSpec:  # fmt: skip
    """The configuration's FeatureSpec (`layers` / `policy` / `cached` override model.layers / input_seconds /
    cache.enabled, e.g. for the probe's policy list or the cache command)."""
    m, c = cfg.model, cfg.cache
    adapted = adaptation(m, encoder)
    default_layers = adapted[1] if adapted else sum(head_layers(m, encoder), [])
    length_policy = LengthPolicy.parse(m.input_seconds if policy is None else policy)
    return FeatureSpec(
        layers=encoder.resolve_layers(list(layers)) if layers is not None else default_layers,
        policy=length_policy,
        input_frames=adapted is not None and length_policy.pads,
        cached=bool(c.enabled) if cached is None else bool(cached),
        cache_dir=str(c.dir),
        cache_dtype=str(c.dtype),
        verify=bool(c.verify),
        encode_batch_size=int(c.encode_batch_size),
    )


def open_feature_cache(spec: FeatureSpec, encoder: FrozenWhisperEncoder, audio: AudioSettings,
                       speed: float = 1.0) -> FeatureCache:  # fmt: skip
    """The feature cache of these clips' features (speed != 1: of their speed-perturbed copies). The key holds
    the encoder's weights AND compute dtype (a bf16 GPU cache is never served to an fp32 CPU run), the front
    end, the input policy, crop and sample rate, the storage dtype and the speed."""
    return cache_for(
        spec.cache_dir, encoder.fingerprint, {"n_mels": encoder.num_mel_bins, "frontend": FRONTEND_VERSION},
        spec.policy.name, audio.max_seconds, audio.crop, dtype=spec.cache_dtype, verify=spec.verify,
        sample_rate=audio.sample_rate, verify_layers=spec.layers, speed=speed, compute_dtype=encoder.compute_dtype,
        input_frames=spec.input_frames,
    )  # fmt: skip


def encoder_identity(encoder: FrozenWhisperEncoder, layers: Sequence[int], policy: str) -> Dict[str, Any]:
    """What a run / an export records about the features it read."""
    return {
        "source": encoder.source, "fingerprint": encoder.fingerprint, "layers": list(layers),
        "num_layers": encoder.num_layers, "output_dim": encoder.output_dim, "num_mel_bins": encoder.num_mel_bins,
        "input_seconds": policy,
        # model.encoder_stride_after: {after, stride, pool} (also in the fingerprint); `ser predict` sets it again
        **({"stride": encoder.stride_settings} if encoder.stride_settings else {}),
    }  # fmt: skip
