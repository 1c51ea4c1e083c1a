"""Gated linear attention in pure PyTorch: one kernel, three forms (quadratic reference, chunked, recurrent).

For queries q_t, keys k_t (B, H, T, K), values v_t (B, H, T, V) and log forget gates a_t <= 0 (B, H, T, K), the
causal output is

    S_t = diag(exp(a_t)) S_{t-1} + k_t^T v_t          (S: K x V state)
    o_t = q_t S_t

Linear attention is a_t = 0, retention (RetNet) a constant a_t = log(gamma_h) per head, gated linear attention
(GLA) a data-dependent a_t per key channel. The three forms compute the same thing:
- `quadratic_reference`: o = ((q k^T) * decay) v with the (T, T) decay matrix: O(T^2), only for tests;
- `chunked`: chunks of C frames: inside a chunk the (C, C) form, across chunks the state carried forward:
  O(T C) time and O(T / C) states, never a (T, T) tensor: what the models run;
- `recurrent`: one step at a time (the definition): tests.
The chunked form multiplies queries by exp(A_t - A_0) and keys by exp(A_0 - A_s) inside a chunk (A: cumulative
log gate); log gates are clamped to >= MIN_LOG_GATE so that exp(-(A_s - A_0)) <= exp(C * 5) stays in fp32 range.

Bidirectional (SER sees the whole clip): `bidirectional` adds the causal pass and the causal pass over the
reversed sequence (the frame itself counted in both). Padding: padded frames get k = v = 0, so they add nothing
to any state; reversed, a clip's padding comes first and leaves its state at zero, so every real frame's output
is exactly what the clip alone gives.
"""

from __future__ import annotations

import os

import torch

MIN_LOG_GATE = -5.0  # per frame: the strongest forgetting a gate can ask for (exp(-5) = 0.0067)


def _chunk(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, N, C, D), zero-padded to N * C frames."""
    b, h, t, d = x.shape
    n = -(-t // size)
    if n * size != t:
        x = torch.nn.functional.pad(x, (0, 0, 0, n * size - t))
    return x.view(b, h, n, size, d)


def use_fla(x: torch.Tensor) -> bool:
    """Whether the flash-linear-attention Triton kernels serve this tensor: on CUDA, when the optional extra is
    installed (`pip install ser_lightning[cuda]`), unless SER_LINEAR_ATTENTION_KERNEL=torch."""
    choice = os.environ.get("SER_LINEAR_ATTENTION_KERNEL", "auto")
    if choice not in ("auto", "torch", "fla"):
        raise ValueError(f"SER_LINEAR_ATTENTION_KERNEL={choice!r}: use auto, torch or fla")
    if choice == "torch" or not x.is_cuda:
        return False
    import importlib.util

    if importlib.util.find_spec("fla") is None:
        if choice == "fla":
            raise RuntimeError("SER_LINEAR_ATTENTION_KERNEL=fla but flash-linear-attention is not installed")
        return False
    return True


def fla_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gate: torch.Tensor) -> torch.Tensor:
    """The same causal output through flash-linear-attention's chunked GLA kernel (CUDA; its layout is
    (B, T, H, K); queries are scaled here already, so scale=1). Tested equal to `chunked` where a GPU is lent."""
    from fla.ops.gla import chunk_gla

    gate = log_gate.clamp(min=MIN_LOG_GATE).expand_as(k)
    o, _ = chunk_gla(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), gate.transpose(1, 2).contiguous(),
                     scale=1.0)  # fmt: skip
    return o.transpose(1, 2)


def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gate: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Causal gated linear attention, chunk by chunk. q, k, log_gate (B, H, T, K); v (B, H, T, V) -> (B, H, T, V).
    log_gate broadcasts (e.g. (1, H, 1, 1) for retention's per-head constant). On CUDA with flash-linear-attention
    installed its Triton kernel computes the same thing (`use_fla`)."""
    if use_fla(q):
        return fla_chunked(q, k, v, log_gate)
    b, h, t, _ = q.shape
    log_gate = log_gate.clamp(min=MIN_LOG_GATE).expand_as(k)
    qc, kc, vc, gc = (_chunk(x, chunk) for x in (q, k, v, log_gate))  # (B, H, N, C, *)
    cum = gc.cumsum(3)  # A_t - A_0 within each chunk, inclusive: (B, H, N, C, K)
    q_in = qc * cum.exp()  # decay from the chunk start to t
    k_in = kc * (-cum).exp()  # undo the decay up to s (bounded: C * |MIN_LOG_GATE|)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    scores = (q_in @ k_in.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (B, H, N, C, C)
    out = scores @ vc  # intra-chunk part
    total = cum[:, :, :, -1:, :]  # (B, H, N, 1, K): the whole chunk's log decay
    k_end = kc * (total - cum).exp()  # each key decayed to the chunk's end
    updates = k_end.transpose(-1, -2) @ vc  # (B, H, N, K, V)
    state = q.new_zeros(b, h, q.shape[-1], v.shape[-1])
    inter = []
    # unbind once: indexing chunk n inside the loop would make backward fill a full-size gradient per chunk (O(N^2))
    steps = zip(q_in.unbind(2), total[:, :, :, 0, :, None].exp().unbind(2), updates.unbind(2))
    for q_n, decay_n, update_n in steps:  # states: the only sequential part, one step per chunk
        inter.append(q_n @ state)  # (B, H, C, V): what the earlier chunks left
        state = state * decay_n + update_n
    out = out + torch.stack(inter, 2)
    return out.reshape(b, h, -1, v.shape[-1])[:, :, :t]


def quadratic_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gate: torch.Tensor) -> torch.Tensor:
    """The same output through the (T, T, K) decay tensor: O(T^2 K) memory, for tests on short inputs."""
    log_gate = log_gate.clamp(min=MIN_LOG_GATE).expand_as(k)
    cum = log_gate.cumsum(2)  # (B, H, T, K)
    decay = cum[:, :, :, None, :] - cum[:, :, None, :, :]  # (B, H, T, S, K): A_t - A_s
    t = q.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    decay = decay.masked_fill(~causal[None, None, :, :, None], float("-inf")).exp()
    scores = torch.einsum("bhtk,bhsk,bhtsk->bhts", q, k, decay)
    return scores @ v


def recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gate: torch.Tensor) -> torch.Tensor:
    """The definition, one frame at a time (tests)."""
    log_gate = log_gate.clamp(min=MIN_LOG_GATE).expand_as(k)
    b, h, t, kd = q.shape
    state = q.new_zeros(b, h, kd, v.shape[-1])
    out = []
    for i in range(t):
        state = state * log_gate[:, :, i, :, None].exp() + k[:, :, i, :, None] * v[:, :, i, None, :]
        out.append((q[:, :, i, None, :] @ state)[:, :, 0])
    return torch.stack(out, 2)


def bidirectional(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gate: torch.Tensor, mask: torch.Tensor,
                  form: str = "chunked", chunk: int = 32) -> torch.Tensor:  # fmt: skip
    """Causal + anti-causal output; mask (B, T) True on real frames (padded frames' k and v are zeroed)."""
    keep = mask[:, None, :, None].to(k.dtype)
    k, v = k * keep, v * keep
    run = {"chunked": lambda *a: chunked(*a, chunk=chunk), "quadratic": quadratic_reference, "recurrent": recurrent}[form]
    gate = log_gate.expand_as(k) if log_gate.shape[2] != 1 else log_gate
    forward = run(q, k, v, gate)
    flip = lambda x: x.flip(2) if x.shape[2] != 1 else x  # noqa: E731 - a constant gate has no time axis
    backward = run(flip(q), flip(k), flip(v), flip(gate)).flip(2)
    return forward + backward


class LinearAttention(torch.nn.Module):
    """Bidirectional multi-head attention of linear cost in the length: kind = linear | retention | gla.

    - linear: feature map elu + 1 on queries and keys, no forgetting, output divided by q . sum(k) (softmax's
      normaliser, made linear);
    - retention (RetNet): a fixed decay gamma_h = 1 - 2^(-5 - h) per head (multi-scale), per-head GroupNorm and
      a swish output gate;
    - gla: a data-dependent forget gate per key channel, log a_t = logsigmoid(x W) / 16 (low-rank W), per-head
      GroupNorm and a swish output gate.
    Padded frames never reach a real frame's output (see `bidirectional`)."""

    def __init__(self, dim: int, heads: int = 4, kind: str = "gla", chunk: int = 32) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.context={kind}: proj_dim {dim} is not divisible by {heads} heads")
        self.kind, self.heads, self.head_dim, self.chunk = kind, heads, dim // heads, chunk
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.out = torch.nn.Linear(dim, dim)
        if kind == "retention":
            gamma = 1 - 2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float32))
            self.register_buffer("log_decay", gamma.log().view(1, heads, 1, 1), persistent=False)
        if kind == "gla":
            self.gate = torch.nn.Sequential(torch.nn.Linear(dim, 16, bias=False), torch.nn.Linear(16, dim))
        if kind in ("retention", "gla"):
            self.output_gate = torch.nn.Linear(dim, dim)
            self.norm = torch.nn.GroupNorm(heads, dim, affine=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, D/H)
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, form: str = "chunked") -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (self._heads(p) for p in self.qkv(x).chunk(3, dim=-1))
        if self.kind == "linear":
            q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
            ones = torch.ones_like(v[..., :1])
            o = bidirectional(q, k, torch.cat([v, ones], -1), q.new_zeros(1, 1, 1, 1), mask, form, self.chunk)
            o = o[..., :-1] / o[..., -1:].clamp_min(1e-6)  # numerator / (q . sum of keys)
            return self.out(o.transpose(1, 2).reshape(b, t, d))
        q = q * self.head_dim**-0.5
        if self.kind == "retention":
            gate = self.log_decay.to(x.dtype)
        else:
            gate = self._heads(torch.nn.functional.logsigmoid(self.gate(x)) / 16.0)
        o = bidirectional(q, k, v, gate, mask, form, self.chunk).transpose(1, 2).reshape(b, t, d)
        o = self.norm(o.reshape(b * t, d)).view(b, t, d)  # per head, per frame: padding-invariant
        return self.out(torch.nn.functional.silu(self.output_gate(x)) * o)
