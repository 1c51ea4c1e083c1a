"""Token resolution (issue #18): keep one frame in s, or average s consecutive frames, mask-aware.

`model.token_stride = 1 | 2 | 4`, `model.token_pool = skip | mean`, applied

- at the head input (`model.encoder_stride_after` null): SERHead strides the (normalised) features before fusion and
  the projector, so the projector, context and pooling run on T/s frames; the cached features are unchanged;
- inside the encoder after block j (`model.encoder_stride_after = j`): FrozenWhisperEncoder.set_stride; blocks
  j+1.. run on the shorter sequence and every layer it returns (those at or below j strided on output) has T/s
  frames. The features change, so the encoder's fingerprint (and with it the cache key) records the setting.

Frames form groups [g*s, (g+1)*s) counted from the clip's first frame, so a clip's groups never depend on how much
padding its batch added (padding invariance). A group is valid when it holds at least one valid frame:
`skip` keeps frame g*s of each group (valid exactly when the group is, masks being prefixes), `mean` averages the
group's valid frames only (a clip's last, partial group is the mean of the frames it has; padding never enters).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

TOKEN_STRIDES = (1, 2, 4)
TOKEN_POOLS = ("skip", "mean")


def check_stride(stride: int, pool: str) -> None:
    """ValueError listing what is allowed."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride not in TOKEN_STRIDES:
        raise ValueError(f"token_stride={stride!r}: use one of {', '.join(map(str, TOKEN_STRIDES))}")
    if pool not in TOKEN_POOLS:
        raise ValueError(f"token_pool={pool!r}: use one of {', '.join(TOKEN_POOLS)}")


def strided_length(frames: int, stride: int) -> int:
    """Frames left of a clip of `frames` frames: ceil(frames / stride) (its last group may be partial)."""
    return -(-int(frames) // int(stride))


class TokenStride(nn.Module):
    """`TokenStride(stride, pool)(x, mask) -> (x', mask')`: x (B, T, D) or (B, L, T, D), mask (B, T) bool ->
    x' (B, ceil(T/s), D) or (B, L, ceil(T/s), D), mask' (B, ceil(T/s)). stride 1 returns its inputs."""

    def __init__(self, stride: int = 1, pool: str = "skip") -> None:
        super().__init__()
        check_stride(stride, pool)
        self.stride, self.pool = int(stride), pool

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pool={self.pool}"

    def stride_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """mask (B, T) -> (B, ceil(T/s)): a group is valid when it holds a valid frame (skip: its first frame)."""
        s = self.stride
        if s == 1:
            return mask
        if self.pool == "skip":
            return mask[:, ::s]
        return self._grouped_mask(mask).any(-1)

    def _grouped_mask(self, mask: torch.Tensor) -> torch.Tensor:  # (B, G, s), padded with False
        s, t = self.stride, mask.shape[1]
        pad = (-t) % s
        if pad:
            mask = nn.functional.pad(mask, (0, pad), value=False)
        return mask.reshape(mask.shape[0], -1, s)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s = self.stride
        if s == 1:
            return x, mask
        if x.shape[-2] != mask.shape[1]:
            raise ValueError(f"token stride: features {tuple(x.shape)} and mask {tuple(mask.shape)} differ in length")
        mask = mask.bool()
        if self.pool == "skip":
            return x[..., ::s, :], mask[:, ::s]
        groups = self._grouped_mask(mask)  # (B, G, s)
        pad = groups.shape[1] * s - x.shape[-2]
        if pad:
            x = nn.functional.pad(x, (0, 0, 0, pad))
        xs = x.reshape(*x.shape[:-2], groups.shape[1], s, x.shape[-1])  # (B, [L,] G, s, D)
        keep = groups if x.dim() == 3 else groups[:, None]  # (B, [1,] G, s)
        # where, not multiply: padded frames may hold anything (a standardised pad is -mean/std; never inf * 0)
        total = torch.where(keep[..., None], xs, torch.zeros((), dtype=xs.dtype, device=xs.device)).sum(-2)
        count = keep.sum(-1, keepdim=True).clamp_min(1).to(xs.dtype)
        return total / count, groups.any(-1)


def maybe_stride(stride: int, pool: str) -> Optional[TokenStride]:
    """A TokenStride, or None for stride 1 (nothing to do)."""
    check_stride(stride, pool)
    return TokenStride(stride, pool) if int(stride) > 1 else None
