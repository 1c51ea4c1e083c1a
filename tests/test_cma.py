"""model.fusion=cma (Qieemo's cross-layer attention): padding invariance like the poolings', the key/value stream
really matters, attention entropy is 1 for uniform attention, and `ser train` -> export -> `ser predict`
reproduces the evaluation's scores with both streams read from the cache."""

import json

import pytest
import torch

from ser_lightning.config import compose
from ser_lightning.models.head import SERHead
from ser_lightning.models.pooling import POOLINGS

D = 24


def _head(pooling="qkv", query_layers=2, kv_layers=1, query_fusion="conv", dropout=0.1):
    torch.manual_seed(0)
    return SERHead(input_dim=D, num_classes=4, pooling=pooling, proj_dim=16, heads=2, head_dim=4, dropout=dropout,
                   num_layers=query_layers, num_kv_layers=kv_layers, fusion="cma", cma_heads=4,
                   cma_query_fusion=query_fusion)  # fmt: skip


@pytest.mark.parametrize("query_fusion", ["conv", "weighted"])
@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_cma_head_is_invariant_to_padding(pooling, query_fusion):
    head = _head(pooling, query_fusion=query_fusion).eval()
    clip = torch.randn(1, 3, 29, D)
    alone = head(clip, torch.ones(1, 29, dtype=torch.bool))
    padded = torch.full((2, 3, 70, D), 7.0)  # garbage padding, in a batch with a longer clip
    padded[0, :, :29] = clip[0]
    padded[1] = torch.randn(3, 70, D)
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[0, 29:] = False
    torch.testing.assert_close(head(padded, mask)[:1], alone, rtol=1e-4, atol=1e-5)


def test_the_key_value_stream_changes_the_output_and_dropout_is_off_in_eval():
    head = _head(dropout=0.5).eval()
    x, mask = torch.randn(2, 3, 20, D), torch.ones(2, 20, dtype=torch.bool)
    other = x.clone()
    other[:, 2] = torch.randn(2, 20, D)  # only the key/value layer differs
    assert not torch.allclose(head(x, mask), head(other, mask), atol=1e-4)
    torch.testing.assert_close(head(x, mask), head(x, mask))
    with pytest.raises(ValueError, match="query \\+ key/value layers"):
        head(x[:, :2], mask)


def test_attention_entropy_is_one_for_uniform_attention():
    head = _head().eval()
    with torch.no_grad():
        head.cma.attn.in_proj_weight[: 2 * 16].zero_()  # queries and keys 0: every score equal
        head.cma.attn.in_proj_bias.zero_()
    mask = torch.ones(2, 25, dtype=torch.bool)
    mask[1, 10:] = False
    head(torch.randn(2, 3, 25, D), mask)
    torch.testing.assert_close(head.cma.entropy, torch.ones(4))
    head.train()
    head(torch.randn(2, 3, 25, D), mask)  # training: no weights computed (fast path), the last eval value stays
    assert head.cma.entropy.shape == (4,)


def test_cma_trains_exports_and_predicts_the_same_scores(tmp_path, ravdess_root):
    from ser_lightning.run.predict import predict_files
    from ser_lightning.run.train import train

    cfg = compose([
        "data=ravdess", f"data.root={ravdess_root}", "data.fold=2", "data.limit_per_class=12", "model.encoder=random:test",
        "model.layers=[2]", "model.fusion=cma", "model.cma.layers=[1]", "model.cma.heads=2", "model.pooling=mean", "model.input_seconds=clip", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "wandb.mode=disabled", f"cache.dir={tmp_path / 'cache'}",
        f"data.table_cache_dir={tmp_path / 'tables'}", f"output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    results = train(cfg)
    assert results["layers"] == [2, 1]  # the query layer, then the key/value layer (model.cma.layers)
    meta = json.loads((tmp_path / "run" / "export" / "head.json").read_text())
    assert (meta["head"]["fusion"], meta["head"]["num_layers"], meta["head"]["num_kv_layers"]) == ("cma", 1, 1)
    assert meta["head"]["cma_heads"] == 2
    stored = json.loads((tmp_path / "run" / "test_predictions.json").read_text())
    records = predict_files(tmp_path / "run", stored["path"][:6])
    for record, probs in zip(records, stored["probabilities"][:6]):
        assert record["error"] is None
        assert [record["probs"][c] for c in stored["class_names"]] == pytest.approx(probs, abs=1e-4)
    # the attention maps of a few test clips and each head's entropy, shown by `ser report`
    attention = json.loads((tmp_path / "run" / "results.json").read_text())["cma_attention"]
    assert len(attention["entropy_per_head"]) == 2 and all(0 <= x <= 1 for x in attention["entropy_per_head"])
    assert (tmp_path / "run" / attention["map"]).is_file()
    from ser_lightning.run.report import make_report

    make_report([tmp_path / "run"], tmp_path / "report", wandb_mode="disabled")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Cross-layer attention" in text and "cma_fold2.png" in text
