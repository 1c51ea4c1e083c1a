"""Linear-cost temporal context (model.context = retention | gla | linear): the chunked form the models run equals
the quadratic reference and the recurrent definition; real frames do not see padding; frame order matters; dropout
is off in eval; a 30-minute input trains on the CPU without any (T, T) tensor."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ser_lightning.models import linear_attention as la
from ser_lightning.models.context import build_context
from ser_lightning.models.head import SERHead

KINDS = ("retention", "gla", "linear")


def _inputs(b=2, h=3, t=45, k=6, v=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, key, val = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64) for d in (k, k, v))
    gate = torch.nn.functional.logsigmoid(torch.randn(b, h, t, k, generator=g, dtype=torch.float64) * 2)
    return q, key, val, gate


@pytest.mark.parametrize("gate_kind", ["data", "constant", "none"])
@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_chunked_equals_quadratic_and_recurrent(gate_kind, chunk):
    q, k, v, gate = _inputs()
    gate = {"data": gate, "constant": torch.full((1, 3, 1, 1), -0.2, dtype=torch.float64),
            "none": torch.zeros(1, 1, 1, 1, dtype=torch.float64)}[gate_kind]  # fmt: skip
    reference = la.quadratic_reference(q, k, v, gate)
    torch.testing.assert_close(la.recurrent(q, k, v, gate), reference)
    torch.testing.assert_close(la.chunked(q, k, v, gate, chunk=chunk), reference)


def test_bidirectional_forms_agree_and_ignore_padding():
    q, k, v, gate = _inputs(b=2, t=40)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 23:] = False
    outs = {form: la.bidirectional(q, k, v, gate, mask, form, chunk=8) for form in ("chunked", "quadratic", "recurrent")}
    torch.testing.assert_close(outs["chunked"], outs["quadratic"])
    torch.testing.assert_close(outs["recurrent"], outs["quadratic"])
    # clip 1 alone (its 23 real frames) == clip 1 padded in the batch, whatever the padded frames hold
    alone = la.bidirectional(*(x[1:2, :, :23] for x in (q, k, v, gate)), mask[1:2, :23], "chunked", chunk=8)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[1, :, 23:] = 1e3
    padded = la.bidirectional(q2, k2, v2, gate, mask, "chunked", chunk=8)
    torch.testing.assert_close(padded[1:2, :, :23], alone)
    # and both directions count: without forgetting, the first frame sees the last one and vice versa
    keep = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    base = la.bidirectional(q, k, v, keep, mask)
    later, earlier = v.clone(), v.clone()
    later[0, :, -1] += 1.0
    earlier[0, :, 0] += 1.0
    assert not torch.allclose(la.bidirectional(q, k, later, keep, mask)[0, :, 0], base[0, :, 0])
    assert not torch.allclose(la.bidirectional(q, k, earlier, keep, mask)[0, :, -1], base[0, :, -1])


@pytest.mark.parametrize("kind", KINDS)
def test_context_module_forms_agree(kind):
    torch.manual_seed(0)
    attn = la.LinearAttention(16, heads=4, kind=kind, chunk=8).double().eval()
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 17:] = False
    torch.testing.assert_close(attn(x, mask, form="chunked"), attn(x, mask, form="quadratic"))


@pytest.mark.parametrize("kind", KINDS)
def test_head_with_linear_context_sees_order_and_has_no_dropout_in_eval(kind):
    torch.manual_seed(0)
    head = SERHead(input_dim=24, num_classes=4, pooling="mean", proj_dim=16, heads=2, head_dim=4, dropout=0.5,
                   context=kind, context_layers=2)  # fmt: skip
    x, mask = torch.randn(1, 30, 24), torch.ones(1, 30, dtype=torch.bool)
    head.eval()
    torch.testing.assert_close(head(x, mask), head(x, mask))
    assert not torch.allclose(head(x, mask), head(x[:, torch.randperm(30)], mask), atol=1e-4)
    head.train()
    assert not torch.allclose(head(x, mask), head(x, mask))


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("kind", KINDS)
def test_thirty_minutes_train_on_the_cpu_without_a_quadratic_tensor(kind):
    """30 min of audio = 90,000 encoder frames (50 per second), batch 1: finite gradients, and no tensor anywhere
    near T^2 (8.1e9 elements, 32 GB in fp32) is ever built, forward or backward."""
    torch.manual_seed(0)
    t, dim = 30 * 60 * 50, 32
    context = build_context(kind, dim, layers=1, dropout=0.1)
    x = torch.randn(1, t, dim, requires_grad=True)
    mask = torch.ones(1, t, dtype=torch.bool)
    with _LargestTensor() as watch:
        context(x, mask).pow(2).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in context.parameters() if p.grad is not None)
    assert watch.largest < 100 * t * dim, f"a tensor of {watch.largest} elements: not linear in T={t}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the flash-linear-attention kernels)")
def test_flash_linear_attention_kernel_equals_the_pytorch_path(monkeypatch):
    pytest.importorskip("fla", reason="the optional `cuda` extra (flash-linear-attention) is not installed")
    q, k, v, gate = (x.float().cuda() for x in _inputs(b=2, h=4, t=300, k=32, v=32))
    monkeypatch.setenv("SER_LINEAR_ATTENTION_KERNEL", "torch")
    reference = la.chunked(q, k, v, gate)
    monkeypatch.setenv("SER_LINEAR_ATTENTION_KERNEL", "fla")
    assert la.use_fla(q)
    torch.testing.assert_close(la.chunked(q, k, v, gate), reference, rtol=2e-3, atol=2e-3)


def test_ten_minute_recording_goes_through_ser_predict_with_an_efficient_context(tmp_path, ravdess_root):
    """RAVDESS clips concatenated into a 10-minute recording, predicted on the CPU by a head with a gla context:
    every 30 s window is scored, the recording gets the mean of its windows."""
    import numpy as np
    import soundfile as sf

    from ser_lightning.audio import decode
    from ser_lightning.config import compose
    from ser_lightning.run.predict import predict_files
    from ser_lightning.run.train import train

    cfg = compose([
        "data=ravdess", f"data.root={ravdess_root}", "data.fold=2", "data.limit_per_class=8", "model.encoder=random:test",
        "model.layer=2", "model.context=gla", "model.pooling=mean", "model.input_seconds=clip", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "wandb.mode=disabled", f"cache.dir={tmp_path / 'cache'}",
        f"data.table_cache_dir={tmp_path / 'tables'}", f"output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    train(cfg)
    clips = sorted(ravdess_root.glob("Actor_0*/*.flac"))[:200]
    wave = np.concatenate([decode(str(p))[0] for p in clips])
    wave = np.resize(wave, 600 * 16000)  # exactly 10 minutes (clips repeated if they run short)
    path = tmp_path / "ten_minutes.wav"
    sf.write(path, wave, 16000)
    (record,) = predict_files(tmp_path / "run", [str(path)])
    assert record["error"] is None and len(record["windows"]) == 20 and record["duration"] == 600.0
    assert abs(sum(record["probs"].values()) - 1) < 1e-5
