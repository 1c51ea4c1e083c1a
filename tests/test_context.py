"""model.context (temporal layers between projector and pooling): the head stays exactly padding-invariant, it
sees frame ORDER (a mean-pooled head without context cannot), and dropout is off in eval."""

import pytest
import torch

from ser_lightning.models.context import CONTEXTS, build_context
from ser_lightning.models.head import SERHead

D = 24


def _head(context, pooling="mean", dropout=0.3):
    torch.manual_seed(0)
    return SERHead(input_dim=D, num_classes=4, pooling=pooling, proj_dim=16, heads=2, head_dim=4, dropout=dropout,
                   context=context, context_layers=2)  # fmt: skip


def _padded(clip, total, fill):
    x = torch.full((1, total, D), fill)
    x[:, : clip.shape[1]] = clip
    mask = torch.zeros(1, total, dtype=torch.bool)
    mask[:, : clip.shape[1]] = True
    return x, mask


@pytest.mark.parametrize("pooling", ["mean", "attentive", "qkv"])
@pytest.mark.parametrize("context", sorted(CONTEXTS))
def test_head_with_context_is_invariant_to_padding_and_batching(context, pooling):
    head = _head(context, pooling).eval()
    clip = torch.randn(1, 37, D)
    alone = head(clip, torch.ones(1, 37, dtype=torch.bool))
    torch.testing.assert_close(head(*_padded(clip, 60, 0.0)), alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head(*_padded(clip, 400, 9.0)), alone, rtol=1e-4, atol=1e-5)  # garbage padding
    # in a batch with a longer clip
    other = torch.randn(1, 80, D)
    batch = torch.cat([_padded(clip, 80, -3.0)[0], other])
    mask = torch.cat([_padded(clip, 80, 0.0)[1], torch.ones(1, 80, dtype=torch.bool)])
    torch.testing.assert_close(head(batch, mask)[:1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("context", ["conv", "transformer"])
def test_context_sees_frame_order(context):
    clip = torch.randn(1, 30, D)
    mask = torch.ones(1, 30, dtype=torch.bool)
    shuffled = clip[:, torch.randperm(30)]
    plain = _head("none").eval()  # masked mean of per-frame projections: order cannot matter
    torch.testing.assert_close(plain(clip, mask), plain(shuffled, mask), rtol=1e-4, atol=1e-5)
    head = _head(context).eval()
    assert not torch.allclose(head(clip, mask), head(shuffled, mask), atol=1e-4)


@pytest.mark.parametrize("context", ["conv", "transformer"])
def test_context_dropout_is_off_in_eval(context):
    head = _head(context, dropout=0.5)
    x, mask = torch.randn(3, 20, D), torch.ones(3, 20, dtype=torch.bool)
    head.eval()
    torch.testing.assert_close(head(x, mask), head(x, mask))
    head.train()
    assert not torch.allclose(head(x, mask), head(x, mask))


def test_unknown_context_lists_the_choices():
    with pytest.raises(ValueError, match="none, conv, transformer"):
        build_context("lstm", D)
