"""Pooling layers H (B, T, D) + mask (B, T) -> a (B, D). Every pooling ignores padded frames exactly.

`mask` is True on real frames. Padded frames may hold any value (zeros, garbage, NaN-free noise): they never
reach the output, so a clip gives the same vector whether padded to 100 or 1000 frames.
"""

from __future__ import annotations

import math
from typing import Callable, Dict

import torch
from torch import nn

NEG_INF = -1e9  # large negative instead of -inf: stays finite in fp16/bf16 softmax


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) -> (B, D): mean over real frames only."""
    w = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over time of scores (B, T, ...) with padded frames given zero weight."""
    shape = mask.shape + (1,) * (scores.dim() - 2)
    scores = scores.masked_fill(~mask.view(shape), NEG_INF)
    return torch.softmax(scores.float(), dim=1).to(scores.dtype)


def _zero_padded(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # padded frames must not leak into sums even if they hold inf/NaN-free garbage times zero weight
    return h.masked_fill(~mask.unsqueeze(-1), 0.0)


class MeanPooling(nn.Module):
    """Masked average over frames (the paper's baseline, without its 30 s padding bug)."""

    def __init__(self, dim: int, **_: object) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(_zero_padded(h, mask), mask)


class StatsPooling(nn.Module):
    """Masked mean and standard deviation over frames, concatenated and mapped back to D (x-vector style
    statistics pooling, no attention): a = [mean_t(h), std_t(h)] W."""

    def __init__(self, dim: int, **_: object) -> None:
        super().__init__()
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = _zero_padded(h, mask)
        mean = masked_mean(h, mask)  # (B, D)
        var = masked_mean(_zero_padded((h - mean.unsqueeze(1)) ** 2, mask), mask)
        return self.out(torch.cat([mean, var.clamp_min(1e-6).sqrt()], dim=-1))


class AttentivePooling(nn.Module):
    """Multi-head attentive average pooling (protocols.md).

    per head i: e_t = tanh(h_t W1_i + b_i) w2_i + k_i, alpha = softmax_t(e), head_i = alpha^T (H W^V_i);
    a = concat(head_1..head_n) W_out.
    """

    def __init__(self, dim: int, heads: int = 6, head_dim: int = 4, dropout: float = 0.1, **_: object) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.score_hidden = nn.Linear(dim, heads * head_dim)  # W1, b for all heads
        self.score_out = nn.Parameter(torch.empty(heads, head_dim))  # w2 per head
        self.score_bias = nn.Parameter(torch.zeros(heads))  # k per head
        nn.init.normal_(self.score_out, std=head_dim**-0.5)
        self.value = nn.Linear(dim, heads * head_dim)  # W^V
        self.out = nn.Linear(heads * head_dim, dim)  # W_out
        self.dropout = nn.Dropout(dropout)

    def attention(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape
        hidden = self.dropout(torch.tanh(self.score_hidden(h))).view(b, t, self.heads, self.head_dim)
        scores = torch.einsum("bthk,hk->bth", hidden, self.score_out) + self.score_bias  # (B, T, heads)
        return masked_softmax(scores, mask)  # (B, T, heads)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = _zero_padded(h, mask)
        b, t, _ = h.shape
        alpha = self.attention(h, mask)
        values = self.value(h).view(b, t, self.heads, self.head_dim)
        pooled = torch.einsum("bth,bthk->bhk", alpha, values)  # (B, heads, head_dim)
        return self.out(pooled.reshape(b, -1))


class AttentiveStatsPooling(AttentivePooling):
    """Multi-head attentive statistics pooling (Okabe et al. 2018): weighted mean and std per head."""

    def __init__(self, dim: int, heads: int = 6, head_dim: int = 4, dropout: float = 0.1, **kw: object) -> None:
        super().__init__(dim, heads, head_dim, dropout)
        self.out = nn.Linear(2 * heads * head_dim, dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = _zero_padded(h, mask)
        b, t, _ = h.shape
        alpha = self.attention(h, mask)
        values = self.value(h).view(b, t, self.heads, self.head_dim)
        mean = torch.einsum("bth,bthk->bhk", alpha, values)
        second = torch.einsum("bth,bthk->bhk", alpha, values * values)
        std = (second - mean * mean).clamp_min(1e-6).sqrt()
        return self.out(torch.cat([mean, std], dim=-1).reshape(b, -1))


class QKVPooling(nn.Module):
    """Multi-head QKV pooling with the (masked) mean frame as the query, CLIP-style (protocols.md).

    q = mean_t(H); head_i = softmax(q W^Q_i (H W^K_i)^T / sqrt(d_k)) H W^V_i; a = concat(heads) W_out.
    """

    def __init__(self, dim: int, heads: int = 6, head_dim: int = 4, dropout: float = 0.1, **_: object) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.query = nn.Linear(dim, heads * head_dim)
        self.key = nn.Linear(dim, heads * head_dim)
        self.value = nn.Linear(dim, heads * head_dim)
        self.out = nn.Linear(heads * head_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = _zero_padded(h, mask)
        b, t, _ = h.shape
        q = self.query(masked_mean(h, mask)).view(b, self.heads, self.head_dim)  # (B, heads, dk)
        k = self.key(h).view(b, t, self.heads, self.head_dim)
        v = self.value(h).view(b, t, self.heads, self.head_dim)
        scores = torch.einsum("bhk,bthk->bth", q, k) / math.sqrt(self.head_dim)  # (B, T, heads)
        alpha = self.dropout(masked_softmax(scores, mask))
        pooled = torch.einsum("bth,bthk->bhk", alpha, v)
        return self.out(pooled.reshape(b, -1))


class LearnedQueryPooling(nn.Module):
    """Several learned queries attend over the frames (Perceiver / CLS-style readout), multi-head."""

    def __init__(
        self, dim: int, heads: int = 6, head_dim: int = 4, dropout: float = 0.1, num_queries: int = 4, **_: object
    ) -> None:
        super().__init__()
        self.heads, self.head_dim, self.num_queries = heads, head_dim, num_queries
        self.queries = nn.Parameter(torch.randn(num_queries, heads, head_dim) * head_dim**-0.5)
        self.key = nn.Linear(dim, heads * head_dim)
        self.value = nn.Linear(dim, heads * head_dim)
        self.out = nn.Linear(num_queries * heads * head_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = _zero_padded(h, mask)
        b, t, _ = h.shape
        k = self.key(h).view(b, t, self.heads, self.head_dim)
        v = self.value(h).view(b, t, self.heads, self.head_dim)
        scores = torch.einsum("qhk,bthk->btqh", self.queries, k) / math.sqrt(self.head_dim)  # (B, T, Q, heads)
        alpha = self.dropout(masked_softmax(scores, mask))
        pooled = torch.einsum("btqh,bthk->bqhk", alpha, v)
        return self.out(pooled.reshape(b, -1))


POOLINGS: Dict[str, Callable[..., nn.Module]] = {
    "mean": MeanPooling,
    "stats": StatsPooling,
    "attentive": AttentivePooling,
    "qkv": QKVPooling,
    "attentive_stats": AttentiveStatsPooling,
    "learned_query": LearnedQueryPooling,
}


def build_pooling(name: str, dim: int, heads: int, head_dim: int, dropout: float, num_queries: int = 4) -> nn.Module:
    if name not in POOLINGS:
        raise ValueError(f"unknown pooling '{name}'; available: {', '.join(sorted(POOLINGS))}")
    return POOLINGS[name](dim=dim, heads=heads, head_dim=head_dim, dropout=dropout, num_queries=num_queries)
