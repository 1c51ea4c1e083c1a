"""Trainable head: (layer fusion) -> projector (Linear to proj_dim + LayerNorm) -> pooling -> classifier.

Sizes come from the encoder (`input_dim`, number of fused layers) and the data (`num_classes`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from ser_lightning.models.context import CONTEXTS, build_context
from ser_lightning.models.fusion import FUSIONS, QUERY_FUSIONS, CrossLayerAttention, WeightedLayerSum, build_fusion
from ser_lightning.models.pooling import POOLINGS, build_pooling
from ser_lightning.models.stride import TOKEN_POOLS, TokenStride, check_stride

# none; standardize: one mean/std per layer and channel from the training split (stored in the head);
# speaker: each speaker's own mean/std over all of that speaker's clips (labels unused), given per batch
FEATURE_NORMS = ("none", "standardize", "speaker")


class FeatureAugment(nn.Module):
    """Training-only regularisers on (cached) features: dropout and SpecAugment-style time / channel masks."""

    def __init__(self, dropout: float = 0.0, time_masks: int = 0, time_width: int = 10,
                 feature_masks: int = 0, feature_width: int = 32) -> None:  # fmt: skip
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.time_masks, self.time_width = time_masks, time_width
        self.feature_masks, self.feature_width = feature_masks, feature_width

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x (B, T, D), mask (B, T)
        if not self.training:
            return x
        x = self.dropout(x)
        if self.time_masks or self.feature_masks:
            import torchaudio.transforms as T

            keep = torch.ones_like(x[..., :1])  # (B, T, 1)
            lengths = mask.sum(1)
            for b in range(x.shape[0]):
                n = int(lengths[b])
                for _ in range(self.time_masks):
                    w = int(torch.randint(0, min(self.time_width, max(n // 5, 1)) + 1, ()))
                    s = int(torch.randint(0, max(n - w, 1), ()))
                    keep[b, s : s + w] = 0
            x = x * keep
            if self.feature_masks:
                fm = T.FrequencyMasking(self.feature_width, iid_masks=True)
                for _ in range(self.feature_masks):
                    x = fm(x.transpose(1, 2).unsqueeze(1)).squeeze(1).transpose(1, 2)
        return x


@dataclass
class HeadConfig:
    """Everything that defines a head's architecture: its constructor argument, written into head.json and read
    back by `load_head`. A new head option is one field here (plus its user-facing field in config.ModelConfig,
    which `from_options` picks up by name)."""

    input_dim: int  # encoder width (encoder.output_dim)
    num_classes: int  # datamodule.num_classes
    num_layers: int = 1  # encoder layers fused (model.layers)
    num_kv_layers: int = 0  # fusion=cma: layers of the key/value stream (model.cma.layers), after the query layers
    pooling: str = "qkv"
    proj_dim: int = 256
    heads: int = 6
    head_dim: int = 4
    num_queries: int = 4
    dropout: float = 0.1
    fusion: str = "weighted"
    fusion_layernorm: bool = True
    cma_heads: int = 4
    cma_query_fusion: str = "conv"
    feature_norm: str = "none"
    context: str = "none"
    context_layers: int = 1
    # training-only feature regularisers (FeatureAugment): no parameters, inactive in eval
    feature_dropout: float = 0.0
    time_mask: int = 0
    time_mask_width: int = 10
    feature_mask: int = 0
    feature_mask_width: int = 32
    # token resolution at the head input (models/stride.py): keep one frame in token_stride (skip) or average them
    # (mean); no parameters. 1 when the stride sits inside the encoder (model.encoder_stride_after, see from_options)
    token_stride: int = 1
    token_pool: str = "skip"

    def __post_init__(self) -> None:
        for name, value, choices in (("pooling", self.pooling, POOLINGS), ("fusion", self.fusion, FUSIONS),
                                     ("context", self.context, CONTEXTS), ("feature_norm", self.feature_norm, FEATURE_NORMS),
                                     ("cma_query_fusion", self.cma_query_fusion, QUERY_FUSIONS),
                                     ("token_pool", self.token_pool, TOKEN_POOLS)):  # fmt: skip
            if value not in choices:
                raise ValueError(f"{name}={value!r}: use one of {', '.join(choices)}")
        check_stride(self.token_stride, self.token_pool)
        if (self.fusion == "cma") != (self.num_kv_layers > 0):
            raise ValueError(f"fusion={self.fusion!r} with {self.num_kv_layers} key/value layers: cross-layer attention "
                             "(fusion=cma) needs its key/value layers (model.cma.layers), and only it reads them")  # fmt: skip

    @classmethod
    def from_options(cls, options: Mapping[str, Any], input_dim: int, num_classes: int, num_layers: int = 1,
                     num_kv_layers: int = 0) -> "HeadConfig":  # fmt: skip
        """The head a `model` config section describes (its fields of the same names; the sizes come from the
        encoder and the data). Keys the section lacks keep their defaults (head.json of older exports)."""
        sizes = {"input_dim": input_dim, "num_classes": num_classes, "num_layers": num_layers, "num_kv_layers": num_kv_layers}
        flat = {**options, **{f"cma_{k}": v for k, v in (options.get("cma") or {}).items()}}  # model.cma.heads -> cma_heads
        if options.get("encoder_stride_after") is not None:  # the stride is applied inside the encoder, not again here
            flat["token_stride"] = 1
        return cls(**sizes, **{f.name: flat[f.name] for f in fields(cls) if f.name not in sizes and f.name in flat})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "HeadConfig":
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown head option(s) {unknown} (written by a newer ser_lightning?)")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class SERHead(nn.Module):
    """`SERHead(HeadConfig(...))`; `SERHead(input_dim, num_classes, pooling=..., ...)` is the same with the
    config's fields as keyword arguments."""

    def __init__(self, config: HeadConfig | int | None = None, num_classes: Optional[int] = None, **options: Any) -> None:
        super().__init__()
        if not isinstance(config, HeadConfig):
            sizes = {k: v for k, v in (("input_dim", config), ("num_classes", num_classes)) if v is not None}
            config = HeadConfig(**sizes, **options)
        elif num_classes is not None or options:
            raise TypeError("pass either a HeadConfig or its fields, not both")
        self.config = c = config
        self.num_layers = c.num_layers
        self.feature_norm = c.feature_norm
        self.standardize = c.feature_norm == "standardize"
        # speaker: statistics of the clip's own speaker, passed in with every batch (`norm_stats`), not stored
        self.speaker_norm = c.feature_norm == "speaker"
        if self.standardize:
            # per layer and channel, from the training split (set_feature_stats); saved with the head so that
            # evaluation, export and prediction apply exactly the training normalisation
            self.register_buffer("feature_mean", torch.zeros(c.num_layers + c.num_kv_layers, c.input_dim))
            self.register_buffer("feature_std", torch.ones(c.num_layers + c.num_kv_layers, c.input_dim))
        query_fusion = c.cma_query_fusion if c.fusion == "cma" else c.fusion
        self.fusion, projector_in = build_fusion(query_fusion, c.num_layers, c.input_dim, c.proj_dim, c.fusion_layernorm)
        self.cma: Optional[CrossLayerAttention] = None
        if c.fusion == "cma":  # the key/value stream: its layers summed (learned weights), projected to the head's width
            self.kv_fusion = WeightedLayerSum(c.num_kv_layers, c.input_dim, c.fusion_layernorm) if c.num_kv_layers > 1 else None
            self.kv_projector = nn.Sequential(nn.LayerNorm(c.input_dim), nn.Linear(c.input_dim, c.proj_dim))
            self.cma = CrossLayerAttention(c.proj_dim, c.cma_heads, c.dropout)
        self.token_stride = TokenStride(c.token_stride, c.token_pool)
        self.augment = FeatureAugment(c.feature_dropout, c.time_mask, c.time_mask_width, c.feature_mask, c.feature_mask_width)
        self.projector = nn.Sequential(nn.Linear(projector_in, c.proj_dim), nn.LayerNorm(c.proj_dim))
        self.context = build_context(c.context, c.proj_dim, c.context_layers, c.dropout)
        self.pooling = build_pooling(c.pooling, c.proj_dim, c.heads, c.head_dim, c.dropout, c.num_queries)
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(c.proj_dim, c.num_classes)

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """mean, std: (L, D) over the training frames of each fused layer."""
        if not self.standardize:
            raise RuntimeError("this head was built with feature_norm='none'")
        shape = tuple(self.feature_mean.shape)
        if tuple(mean.shape) != shape or tuple(std.shape) != shape:
            raise ValueError(f"feature stats must be {shape}, got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-5))

    def forward(self, features: torch.Tensor, mask: torch.Tensor,
                norm_stats: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:  # fmt: skip
        """features (B, T, D) or (B, L, T, D); mask (B, T) -> logits (B, C).
        norm_stats (feature_norm='speaker' only): per-clip mean and std of its speaker, (B, L, D) each."""
        if self.speaker_norm:
            if norm_stats is None:
                raise ValueError("this head was trained with feature_norm='speaker': pass norm_stats, the mean and std "
                                 "(B, L, D) of each clip's speaker (SERModule and `ser predict` compute them)")  # fmt: skip
            mean, std = norm_stats
            if features.dim() == 4:
                features = (features - mean[:, :, None]) / std[:, :, None]  # (B, L, T, D)
            else:
                features = (features - mean[:, 0, None]) / std[:, 0, None]  # (B, T, D)
        elif norm_stats is not None:
            raise ValueError(f"norm_stats given to a head with feature_norm={self.feature_norm!r}")
        if self.standardize:
            # padded frames become -mean/std, not 0: harmless, every pooling masks them
            if features.dim() == 4:
                features = (features - self.feature_mean[:, None]) / self.feature_std[:, None]  # (B, L, T, D)
            else:
                features = (features - self.feature_mean[0]) / self.feature_std[0]  # (B, T, D)
        # token resolution (model.token_stride): after the normalisation, before fusion and projector. The standardize
        # / speaker statistics are computed on the full-resolution frames the head is fed (SERModule.feature_stats,
        # `ser predict`), so they are applied to those frames; mean groups then average normalised frames (a
        # per-channel affine map commutes with skip and with a mean, so the order changes rounding only), and the
        # padded frames normalisation turns into -mean/std are masked out of every group. Fusion, cross-layer
        # attention, projector, context and pooling all run on T/s frames; FeatureAugment's time masks count them.
        features, mask = self.token_stride(features, mask)
        kv = None
        if self.cma is not None:  # (B, Lq + Lkv, T, D): the query layers, then the key/value layers
            expected = self.num_layers + self.config.num_kv_layers
            if features.dim() != 4 or features.shape[1] != expected:
                raise ValueError(f"fusion=cma: expected (B, {expected}, T, D) features (query + key/value layers), "
                                 f"got {tuple(features.shape)}")  # fmt: skip
            features, kv = features[:, : self.num_layers], features[:, self.num_layers :]
            features = features[:, 0] if self.num_layers == 1 else features
            kv = kv[:, 0] if self.kv_fusion is None else self.kv_fusion(kv)  # (B, T, D)
        if features.dim() == 4:
            if self.fusion is None:
                raise ValueError(f"got {features.shape[1]} layers but the head was built for {self.num_layers}")
            features = self.fusion(features)
        features = self.augment(features, mask)
        h = self.projector(features)  # (B, T, proj_dim)
        if self.cma is not None:
            h = self.cma(h, self.kv_projector(kv), mask)
        h = self.context(h, mask)
        pooled = self.pooling(h, mask)  # (B, proj_dim)
        return self.classifier(self.dropout(pooled))
