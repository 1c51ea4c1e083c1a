"""Trainable head: (layer fusion) -> projector (Linear to proj_dim + LayerNorm) -> pooling -> classifier.

Sizes come from the encoder (`input_dim`, number of fused layers) and the data (`num_classes`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ser_lightning.models.context import build_context
from ser_lightning.models.pooling import build_pooling

# none; standardize: one mean/std per layer and channel from the training split (stored in the head);
# speaker: each speaker's own mean/std over all of that speaker's clips (labels unused), given per batch
FEATURE_NORMS = ("none", "standardize", "speaker")


class WeightedLayerSum(nn.Module):
    """SUPERB-style fusion: softmax-weighted sum of layers (each optionally LayerNorm-ed first)."""

    def __init__(self, num_layers: int, dim: int, layernorm: bool = True) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False) if layernorm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, T, D) -> (B, T, D)
        w = torch.softmax(self.weights, dim=0).to(x.dtype)
        return torch.einsum("l,bltd->btd", w, self.norm(x))


class ConvLayerFusion(nn.Module):
    """Qieemo-style fusion: project every layer, then mix along the layer axis with a small 1-D conv."""

    def __init__(self, num_layers: int, dim: int, out_dim: int, layernorm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False) if layernorm else nn.Identity()
        self.proj = nn.Linear(dim, out_dim)
        self.mix = nn.Conv1d(num_layers, 1, kernel_size=1)  # learned per-layer mixing after projection
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, T, D) -> (B, T, out_dim)
        b, layers, t, _ = x.shape
        p = self.act(self.proj(self.norm(x)))  # (B, L, T, P)
        mixed = self.mix(p.permute(0, 2, 1, 3).reshape(b * t, layers, -1))  # (B*T, 1, P)
        return mixed.view(b, t, -1)


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


class SERHead(nn.Module):
    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        pooling: str = "qkv",
        proj_dim: int = 256,
        heads: int = 6,
        head_dim: int = 4,
        dropout: float = 0.1,
        num_layers: int = 1,
        fusion: str = "weighted",
        fusion_layernorm: bool = True,
        num_queries: int = 4,
        augment: Optional[FeatureAugment] = None,
        feature_norm: str = "none",
        context: str = "none",
        context_layers: int = 1,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm={feature_norm!r}: use one of {', '.join(FEATURE_NORMS)}")
        self.feature_norm = feature_norm
        self.standardize = feature_norm == "standardize"
        # speaker: statistics of the clip's own speaker, passed in with every batch (`norm_stats`), not stored
        self.speaker_norm = feature_norm == "speaker"
        if self.standardize:
            # per layer and channel, from the training split (set_feature_stats); saved with the head so that
            # evaluation, export and prediction apply exactly the training normalisation
            self.register_buffer("feature_mean", torch.zeros(num_layers, input_dim))
            self.register_buffer("feature_std", torch.ones(num_layers, input_dim))
        self.fusion: Optional[nn.Module] = None
        projector_in = input_dim
        if num_layers > 1 and fusion == "weighted":
            self.fusion = WeightedLayerSum(num_layers, input_dim, fusion_layernorm)
        elif num_layers > 1 and fusion == "conv":
            self.fusion = ConvLayerFusion(num_layers, input_dim, proj_dim, fusion_layernorm)
            projector_in = proj_dim
        self.augment = augment or FeatureAugment()
        self.projector = nn.Sequential(nn.Linear(projector_in, proj_dim), nn.LayerNorm(proj_dim))
        self.context = build_context(context, proj_dim, context_layers, dropout)
        self.pooling = build_pooling(pooling, proj_dim, heads, head_dim, dropout, num_queries)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(proj_dim, num_classes)

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
        if features.dim() == 4:
            if self.fusion is None:
                raise ValueError(f"got {features.shape[1]} layers but the head was built for {self.num_layers}")
            features = self.fusion(features)
        features = self.augment(features, mask)
        h = self.context(self.projector(features), mask)  # (B, T, proj_dim)
        pooled = self.pooling(h, mask)  # (B, proj_dim)
        return self.classifier(self.dropout(pooled))
