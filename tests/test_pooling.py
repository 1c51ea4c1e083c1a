"""Poolings: exact invariance to padding, dropout off in eval, and the paper's equations."""

import math

import pytest
import torch

from ser_lightning.models.head import SERHead
from ser_lightning.models.pooling import POOLINGS, build_pooling, masked_mean

D = 32


def _padded(h: torch.Tensor, total: int, fill: float) -> tuple:
    """(1, total, D) with the clip first and `fill`-valued garbage after; mask True on the clip."""
    t = h.shape[1]
    x = torch.full((1, total, h.shape[2]), fill)
    x[:, :t] = h
    mask = torch.zeros(1, total, dtype=torch.bool)
    mask[:, :t] = True
    return x, mask


@pytest.mark.parametrize("name", sorted(POOLINGS))
def test_pooling_is_invariant_to_extra_padding(name):
    torch.manual_seed(0)
    pool = build_pooling(name, D, heads=3, head_dim=4, dropout=0.3).eval()
    clip = torch.randn(1, 57, D)
    a = pool(*_padded(clip, 100, 0.0))
    b = pool(*_padded(clip, 1000, 7.5))  # padding with large garbage values must not leak
    c = pool(clip, torch.ones(1, 57, dtype=torch.bool))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    # and the clip content does matter (the check above is not vacuous)
    assert not torch.allclose(a, pool(*_padded(clip.flip(2), 100, 0.0)))


@pytest.mark.parametrize("name", sorted(POOLINGS))
def test_batched_equals_alone(name):
    torch.manual_seed(1)
    pool = build_pooling(name, D, heads=2, head_dim=8, dropout=0.1).eval()
    lengths = [5, 40, 23]
    clips = [torch.randn(1, n, D) for n in lengths]
    batch = torch.randn(3, 40, D)  # noise in the padding
    mask = torch.zeros(3, 40, dtype=torch.bool)
    for i, c in enumerate(clips):
        batch[i, : lengths[i]] = c[0]
        mask[i, : lengths[i]] = True
    out = pool(batch, mask)
    for i, c in enumerate(clips):
        torch.testing.assert_close(out[i : i + 1], pool(c, torch.ones(1, lengths[i], dtype=torch.bool)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(POOLINGS))
def test_dropout_is_off_in_eval_and_on_in_train(name):
    torch.manual_seed(2)
    head = SERHead(input_dim=D, num_classes=4, pooling=name, proj_dim=16, heads=2, head_dim=4, dropout=0.5)
    x, mask = torch.randn(4, 30, D), torch.ones(4, 30, dtype=torch.bool)
    head.eval()
    torch.testing.assert_close(head(x, mask), head(x, mask))
    head.train()
    assert not torch.allclose(head(x, mask), head(x, mask)), "dropout should make training passes differ"


def test_masked_mean_by_hand():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean(h, mask), torch.tensor([[2.0, 3.0]]))


def test_qkv_matches_the_paper_equation_head_by_head():
    """head_i = softmax(q W^Q_i (H W^K_i)^T / sqrt(d_k)) H W^V_i with q = mean_t(H); a = concat W_out."""
    torch.manual_seed(3)
    heads, dk, t = 3, 4, 11
    pool = build_pooling("qkv", D, heads=heads, head_dim=dk, dropout=0.0).eval()
    H = torch.randn(t, D)
    q = H.mean(0)
    outs = []
    for i in range(heads):
        sl = slice(i * dk, (i + 1) * dk)
        Wq, bq = pool.query.weight[sl], pool.query.bias[sl]
        Wk, bk = pool.key.weight[sl], pool.key.bias[sl]
        Wv, bv = pool.value.weight[sl], pool.value.bias[sl]
        Q = q @ Wq.T + bq
        K = H @ Wk.T + bk
        V = H @ Wv.T + bv
        alpha = torch.softmax(K @ Q / math.sqrt(dk), dim=0)
        outs.append(alpha @ V)
    expected = pool.out(torch.cat(outs))
    got = pool(H[None], torch.ones(1, t, dtype=torch.bool))[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_attentive_matches_the_paper_equation_head_by_head():
    """e_t = tanh(h_t W1 + b) w2 + k, alpha = softmax_t(e), head_i = alpha^T H W^V_i."""
    torch.manual_seed(4)
    heads, dh, t = 2, 4, 9
    pool = build_pooling("attentive", D, heads=heads, head_dim=dh, dropout=0.0).eval()
    H = torch.randn(t, D)
    outs = []
    for i in range(heads):
        sl = slice(i * dh, (i + 1) * dh)
        e = torch.tanh(H @ pool.score_hidden.weight[sl].T + pool.score_hidden.bias[sl]) @ pool.score_out[i] + pool.score_bias[i]
        alpha = torch.softmax(e, dim=0)
        outs.append(alpha @ (H @ pool.value.weight[sl].T + pool.value.bias[sl]))
    expected = pool.out(torch.cat(outs))
    torch.testing.assert_close(pool(H[None], torch.ones(1, t, dtype=torch.bool))[0], expected, rtol=1e-5, atol=1e-6)


def test_unknown_pooling_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: attentive, attentive_stats, learned_query, mean, qkv"):
        build_pooling("max", D, 2, 4, 0.1)


def test_multi_layer_fusion_heads_are_padding_invariant():
    torch.manual_seed(5)
    for fusion in ("weighted", "conv"):
        head = SERHead(input_dim=D, num_classes=3, pooling="qkv", proj_dim=16, heads=2, head_dim=4, num_layers=3, fusion=fusion).eval()
        clip = torch.randn(1, 3, 20, D)
        padded = torch.cat([clip, torch.randn(1, 3, 30, D) * 5], dim=2)
        mask = torch.zeros(1, 50, dtype=torch.bool)
        mask[:, :20] = True
        torch.testing.assert_close(head(clip, torch.ones(1, 20, dtype=torch.bool)), head(padded, mask), rtol=1e-5, atol=1e-5)


def test_stats_pooling_by_hand():
    """[mean, std] over the real frames only (population std), through the output map."""
    pool = build_pooling("stats", 2, heads=1, head_dim=1, dropout=0.0)
    with torch.no_grad():
        pool.out.weight.copy_(torch.eye(4)[:2] + torch.eye(4)[2:])  # a = mean + std, per channel
        pool.out.bias.zero_()
    h = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [50.0, -50.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(pool(h, mask), torch.tensor([[2.0 + 1.0, 4.0 + 2.0]]))
