"""FLOPs accounting (run/compute.py, models/flops.py, utils/flops.py): torch.utils.flop_counter's count of one Whisper
block equals the analytic count, the exact fits reproduce direct counts, input policy and layer choice change the
encoder's figure as they must, and `ser train` writes results.json `compute` (cached per configuration) and the W&B
summary `compute/*`; CV summaries, ensembles and the sweep leaderboard carry the figures."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from ser_lightning.models.flops import EncoderCost
from ser_lightning.run import compute as C
from ser_lightning.utils.flops import Counted, count_flops, fit_counts


def test_one_whisper_block_counts_exactly_its_matrix_products():
    """Linear layers: q, k, v, out (4 d^2) and fc1, fc2 (2 d ffn) per frame, 2 FLOPs per multiply-add; attention:
    Q K^T and A V, 2 * 2 * T^2 * d. The counter counts nothing else: LayerNorm, softmax, GELU, the residual adds
    and the biases are free; attention is counted through SDPA's math backend (two bmm)."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

    d, ffn, t = 64, 256, 37
    config = WhisperConfig(d_model=d, encoder_ffn_dim=ffn, encoder_attention_heads=2)
    config._attn_implementation = "sdpa"
    block = WhisperEncoderLayer(config).eval()
    x = torch.randn(1, t, d)
    with torch.no_grad():
        flops = count_flops(lambda: block(x, None))
    assert flops == 2 * t * (4 * d * d + 2 * d * ffn) + 2 * 2 * t * t * d


def test_exact_fit_reproduces_direct_counts_at_other_lengths():
    from ser_lightning.features.encoder import load_encoder

    encoder = load_encoder("random:test")
    cost = EncoderCost(encoder, [2])
    assert cost.counted.coefficients, "the encoder's count is a polynomial in (T_mel, ceil(T_mel/2))"
    for t_mel in (17, 98, 255, 1000, 3000):  # odd and even, far outside the fitted lengths
        assert cost.flops(t_mel) == cost.counted.count(cost.point(t_mel))
    # a count that is not such a polynomial is detected and counted per length instead
    step = Counted({}, lambda p: 1000 * (p[0] // 7), [(-1, 0), (0, 1), (0, 2)], [(x,) for x in (10, 20, 33, 45, 61)])
    assert not step.coefficients and step((50,)) == 7000 and step.store["by_point"] == {"50": 7000}
    fit = fit_counts(lambda p: 3 + 5 * p[0] + 7 * p[0] ** 2, [(-1, 0), (0, 1), (0, 2)], [(x,) for x in (4, 9, 13, 21, 30)])
    assert fit == [Fraction(3), Fraction(5), Fraction(7)]


def test_input_policy_and_layers_change_the_encoder_figure():
    from ser_lightning.features.encoder import load_encoder

    encoder = load_encoder("random:base")
    last = EncoderCost(encoder, [6])
    three_s, ten_s = 3 * 16000, 10 * 16000
    assert last.clip_flops(three_s, "10") == last.clip_flops(ten_s, "clip") == last.clip_flops(ten_s, "10")
    assert last.clip_flops(three_s, "clip") < last.clip_flops(three_s, "clip+2") < last.clip_flops(three_s, "10")
    assert EncoderCost(encoder, [3]).clip_flops(three_s, "clip") < last.clip_flops(three_s, "clip")


def _overrides(tmp: Path, ravdess_root, *extra):
    return [
        "data=ravdess", f"data.root={ravdess_root}", "data.fold=2", "data.limit_per_class=30",
        "model.encoder=random:test", "model.layer=2", "model.pooling=qkv", "model.heads=2", "model.input_seconds=clip",
        "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "wandb.mode=offline",
        f"wandb.dir={tmp / 'wb'}", f"cache.dir={tmp / 'cache' / 'features'}", f"data.table_cache_dir={tmp / 'tables'}",
        f"output_dir={tmp / 'run'}", *extra,
    ]  # fmt: skip


def test_train_writes_compute_figures_counted_once_per_configuration(tmp_path, ravdess_root):
    from test_wandb import read_run

    from ser_lightning.cli import main
    from ser_lightning.config import compose
    from ser_lightning.run.build import build_training

    computed = C.STATS["computed"]
    assert main(["train", *_overrides(tmp_path, ravdess_root)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    c = results["compute"]
    assert set(c) == {*C.FIELDS, "clips", "counter"} and c["counter"] == "torch.utils.flop_counter"
    assert all(c[k] > 0 for k in C.FIELDS), c
    assert c["epochs"] == 2
    assert c["total_gflops"] == pytest.approx(c["encode_gflops"] + c["train_gflops"])
    assert c["train_gflops"] == pytest.approx(2 * c["train_gflops_per_epoch"])
    assert c["inference_gflops_per_clip"] == pytest.approx(c["encoder_gflops_per_clip"] + c["head_gflops_per_clip"])
    assert c["clips"]["train"] == results["n_train"] and c["clips"]["val"] == results["n_val"]
    assert c["clips"]["test"] == results["n_test"] and c["clips"]["all"] == sum(c["clips"][s] for s in C.SPLITS)
    # the encoder once over every clip (the cache fill): per clip x clips
    assert c["encode_gflops"] == pytest.approx(c["encoder_gflops_per_clip"] * c["clips"]["all"])
    assert c["trainable_parameters"] == results["trainable_parameters"]["head"] < c["total_parameters"]
    # the W&B run's summary carries the same figures
    (run_dir,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    summary = read_run(run_dir)["summary"]
    for key in ("inference_gflops_per_clip", "total_gflops", "trainable_parameters"):
        assert summary[f"compute/{key}"] == pytest.approx(c[key])
    # counted once per configuration: another run of it (another folder) reads the cached counts
    assert C.STATS["computed"] == computed + 1
    (cached,) = (tmp_path / "cache" / "compute").glob("*.json")
    stamp = cached.stat().st_mtime_ns
    cfg = compose(_overrides(tmp_path, ravdess_root, f"output_dir={tmp_path / 'again'}", "wandb.mode=disabled"))
    encoder, dm, module = build_training(cfg)
    again = C.compute_figures(cfg, encoder, dm, module, epochs=2)
    assert C.STATS["computed"] == computed + 1 and cached.stat().st_mtime_ns == stamp
    assert again["encoder_gflops_per_clip"] == pytest.approx(c["encoder_gflops_per_clip"])
    assert again["head_gflops_per_clip"] == pytest.approx(c["head_gflops_per_clip"])


@pytest.mark.parametrize("extra", [
    ("model.input_seconds=10", "model.adapt=lora", "model.adapt_blocks=1"),
    ("model.encoder_stride_after=1", "model.token_stride=2"),
], ids=["lora-10s", "encoder-stride"])  # fmt: skip
def test_adapted_and_strided_configurations_are_exact_fits(tmp_path, ravdess_root, extra):
    """Adapted blocks under a 10 s input run on every input frame and the head on the clip's own (a fit in both),
    a stride inside the encoder runs the blocks above it on ceil(T/2) frames: still exact fits, no per-length counts."""
    from ser_lightning.config import compose
    from ser_lightning.run.build import build_training

    figures = {}
    for name, more in (("frozen", ()), ("changed", extra)):
        cfg = compose(_overrides(tmp_path, ravdess_root, "wandb.mode=disabled", *more))
        encoder, dm, module = build_training(cfg)
        figures[name] = C.compute_figures(cfg, encoder, dm, module, epochs=1)
    for path in (tmp_path / "cache" / "compute").glob("*.json"):
        stored = json.loads(path.read_text())
        assert all("coefficients" in stored[s] for s in ("encoder", "head_forward", "head_train")), path.name
    frozen, changed = figures["frozen"], figures["changed"]
    if "model.adapt=lora" in extra:  # the top block moves from the encoder into the (trained) module
        assert changed["head_gflops_per_clip"] > frozen["head_gflops_per_clip"]
        assert changed["train_gflops_per_epoch"] > frozen["train_gflops_per_epoch"]
        assert changed["trainable_parameters"] > frozen["trainable_parameters"]
    else:
        assert changed["encoder_gflops_per_clip"] < frozen["encoder_gflops_per_clip"]
        assert changed["head_gflops_per_clip"] < frozen["head_gflops_per_clip"]


def test_cv_summary_ensemble_and_leaderboard_carry_the_figures():
    from types import SimpleNamespace

    from ser_lightning.run.sweep.leaderboard import leaderboard_markdown
    from ser_lightning.tracking import cv_metrics, trial_metrics

    def fold(encode: float, train: float) -> dict:
        return {"encoder_gflops_per_clip": 2.0, "encoder_gflops_per_audio_second": 0.5, "head_gflops_per_clip": 0.25,
                "inference_gflops_per_clip": 2.25, "train_gflops_per_epoch": train / 4, "epochs": 4, "train_gflops": train,
                "encode_gflops": encode, "total_gflops": encode + train, "trainable_parameters": 10, "total_parameters": 100,
                "clips": {"train": 6, "val": 2, "test": 2, "all": 10}, "counter": C.COUNTER}  # fmt: skip

    folds = [fold(20.0, 8.0), fold(20.0, 12.0)]
    cv = C.cv_compute(folds)
    assert cv is not None and cv["total_gflops"] == 30.0 and cv["train_gflops"] == 10.0 and cv["folds"] == 2
    assert cv["cv_total_gflops"] == 20.0 + 8.0 + 12.0  # the corpus encoded once, both folds trained
    assert C.cv_compute([folds[0], None]) is None  # a fold without figures: no mean that pretends otherwise
    ens = C.ensemble_compute(folds)
    assert ens["inference_gflops_per_clip"] == 2.0 + 0.5 and ens["total_gflops"] == 20.0 + 20.0
    assert ens["total_parameters"] == 110 and ens["trainable_parameters"] == 20
    assert trial_metrics({"compute": folds[0]})["compute/total_gflops"] == 28.0
    logged = cv_metrics({"compute": cv})
    assert logged["compute/cv_total_gflops"] == 40.0 and logged["compute/clips/all"] == 10.0

    trials = [{"name": "a", "status": "finished", "metric": 0.5, "params": {"x": 1}, "metrics": logged},
              {"name": "b", "status": "failed", "metric": None, "params": {"x": 2}, "metrics": None, "error": "boom",
               "returncode": 1, "log": "b.log"}]  # fmt: skip
    sweep = SimpleNamespace(trials=trials, metric="cv/test/ua_mean", varying=["x"], goal="maximize", state={}, dir=Path("s"))
    rows = [line for line in leaderboard_markdown(sweep).splitlines() if line.startswith("| ")]
    assert rows[0].endswith("| inference GFLOPs/clip | total GFLOPs |")
    assert rows[1].endswith("| 2.25 | 40 |") and rows[2].endswith("| - | - |")
