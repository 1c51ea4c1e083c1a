"""Temporal context before pooling: (B, T, D) + mask (B, T) -> (B, T, D), every real frame's output independent
of how much padding follows the clip (so the poolings stay padding-invariant).

Mean and attentive poolings see each frame on its own; emotion lives partly in how pitch and energy move over
the utterance. `model.context` adds a small trainable layer over time between the projector and the pooling:
- `conv`: residual 1-D convolutions over time (padded frames zeroed first, so a clip's last frames see the same
  zeros whatever the padding length);
- `transformer`: pre-norm Transformer encoder layers (4 heads, sinusoidal frame positions), padded keys masked:
  softmax attention, quadratic in the length (PyTorch SDPA inside);
- `retention`, `gla`, `linear`: pre-norm blocks of bidirectional attention whose cost is LINEAR in the length
  (models/linear_attention.py: multi-scale retention, gated linear attention, plain linear attention), for
  minutes-long recordings where softmax attention runs out of memory.
"""

from __future__ import annotations

import math
from typing import Callable, Dict

import torch
from torch import nn


def sinusoidal_positions(t: int, d: int, device: torch.device) -> torch.Tensor:
    """(T, D) sinusoidal frame positions from the clip's start (the same for a clip alone or padded): without them
    self-attention followed by a pooling would not see frame order at all."""
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq[: d // 2])
    return pe


class NoContext(nn.Module):
    def __init__(self, **_: object) -> None:
        super().__init__()

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return h


class ConvContext(nn.Module):
    def __init__(self, dim: int, layers: int = 1, kernel: int = 5, dropout: float = 0.1, **_: object) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(dim, dim, kernel, padding=kernel // 2), nn.GELU(), nn.Dropout(dropout))
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        for block, norm in zip(self.blocks, self.norms):
            h = h * keep  # padded frames -> 0: the convolution's own zero padding, whatever the padded length
            h = norm(h + block(h.transpose(1, 2)).transpose(1, 2))  # (B, T, D)
        return h * keep


class TransformerContext(nn.Module):
    def __init__(self, dim: int, layers: int = 1, heads: int = 4, dropout: float = 0.1, **_: object) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.context=transformer: proj_dim {dim} is not divisible by {heads} attention heads")
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="gelu")  # fmt: skip
        # no nested-tensor fast path: it would change which padded positions are computed between train and eval
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pe = sinusoidal_positions(h.shape[1], h.shape[2], h.device)
        return self.encoder(h + pe.to(h.dtype), src_key_padding_mask=~mask)  # padded keys get no attention weight


class LinearContext(nn.Module):
    """Pre-norm blocks: x + LinearAttention(LN(x)), then x + FFN(LN(x)); sinusoidal frame positions first."""

    def __init__(self, dim: int, layers: int = 1, heads: int = 4, dropout: float = 0.1, kind: str = "gla", **_: object) -> None:
        super().__init__()
        from ser_lightning.models.linear_attention import LinearAttention

        self.attn = nn.ModuleList(LinearAttention(dim, heads, kind) for _ in range(layers))
        self.norm1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.norm2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.ffn = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)) for _ in range(layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device).to(h.dtype)
        for attn, n1, n2, ffn in zip(self.attn, self.norm1, self.norm2, self.ffn):
            h = h + self.dropout(attn(n1(h), mask))
            h = h + self.dropout(ffn(n2(h)))
        return h


def _linear(kind: str) -> Callable[..., nn.Module]:
    return lambda **kw: LinearContext(kind=kind, **kw)


CONTEXTS: Dict[str, Callable[..., nn.Module]] = {
    "none": NoContext, "conv": ConvContext, "transformer": TransformerContext,
    "retention": _linear("retention"), "gla": _linear("gla"), "linear": _linear("linear"),
}  # fmt: skip


def build_context(name: str, dim: int, layers: int = 1, dropout: float = 0.1) -> nn.Module:
    if name not in CONTEXTS:
        raise ValueError(f"unknown model.context '{name}'; available: {', '.join(CONTEXTS)}")
    return CONTEXTS[name](dim=dim, layers=layers, dropout=dropout)
