"""Fusion of several encoder layers into one stream: (B, L, T, D) -> (B, T, D') (`model.layers` + `model.fusion`).

- weighted: SUPERB's learned softmax-weighted sum of the layers;
- conv: Qieemo's multi-block fusion (MMF) as we read it: each block projected, then mixed across blocks by a
  learned convolution over the block axis (a 1x1 Conv1d whose channels are the blocks; the paper's Conv2D over
  the (block, feature) plane with a kernel spanning the blocks);
- cma: Qieemo's cross-layer attention (CMA): the fused "emotional" stream of `model.layers` (fused by
  `model.cma.query_fusion`) is the query and attends to a second read-out, `model.cma.layers` (default the last
  layer: the closest Whisper has to a phonetic stream), projected to the head's width; multi-head, padded keys
  masked, residual + feed-forward. Both streams are cached layers: nothing extra is encoded.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn


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


class CrossLayerAttention(nn.Module):
    """query (B, T, P) attends to keys/values (B, T, P) of another depth; mask (B, T) True on real frames.

    Pre-norm: h = q + MHA(LN(q), LN(kv)); h + FFN(LN(h)). Padded keys get no weight, so a real frame's output
    does not depend on the padding. In eval, `entropy` holds each head's attention entropy of the last batch,
    averaged over real query frames and divided by log(number of real keys): 1 = uniform, 0 = one key."""

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.fusion=cma: proj_dim {dim} is not divisible by model.cma.heads={heads}")
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.entropy: torch.Tensor | None = None  # (H,), eval only
        self.weights: torch.Tensor | None = None  # (B, H, T, T) of the last eval batch (attention maps)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k = self.norm_kv(kv)
        out, w = self.attn(self.norm_q(q), k, k, key_padding_mask=~mask, need_weights=not self.training,
                           average_attn_weights=False)  # fmt: skip
        if w is not None:  # (B, H, Tq, Tk)
            with torch.no_grad():
                ent = -(w * w.clamp_min(1e-12).log()).sum(-1)  # (B, H, Tq)
                n_keys = mask.sum(1).clamp_min(2).to(ent.dtype)  # (B,)
                ent = ent / n_keys.log()[:, None, None]
                real = mask[:, None, :].to(ent.dtype)
                self.entropy = ((ent * real).sum((0, 2)) / real.sum((0, 2)).clamp_min(1)).detach()
                self.weights = w.detach()
        h = q + self.dropout(out)
        return h + self.dropout(self.ffn(self.norm_ff(h)))


# model.fusion choices (config validation reads this list); cma is assembled by the head (models/head.py)
FUSIONS: Dict[str, Callable[..., nn.Module]] = {"weighted": WeightedLayerSum, "conv": ConvLayerFusion, "cma": CrossLayerAttention}
# how the query stream of cma fuses several layers
QUERY_FUSIONS = ("weighted", "conv")


def build_fusion(name: str, num_layers: int, dim: int, proj_dim: int, layernorm: bool = True) -> tuple:
    """(fusion module or None for one layer, the width it outputs)."""
    if name not in QUERY_FUSIONS:
        raise ValueError(f"unknown layer fusion '{name}'; available: {', '.join(QUERY_FUSIONS)}")
    if num_layers <= 1:
        return None, dim
    if name == "conv":
        return ConvLayerFusion(num_layers, dim, proj_dim, layernorm), proj_dim
    return WeightedLayerSum(num_layers, dim, layernorm), dim
