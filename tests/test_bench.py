"""`ser bench` and `ser probe`: report structure, ratios computed from the two measured sides, the probe on a
tiny cached corpus. Sizes are tiny (random:test encoder, a handful of synthetic clips); no timing thresholds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ser_lightning.config import compose
from ser_lightning.run import bench, probe


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _check_rows(report):
    for r in report["rows"]:
        assert r["paper"] > 0 and r["ours"] > 0, r
        expected = r["ours"] / r["paper"] if r["better"] == "higher" else r["paper"] / r["ours"]
        assert r["ratio"] == pytest.approx(expected), r
        assert r["paper_how"] and r["ours_how"]


@pytest.fixture(scope="module")
def encode_report(tmp_path_factory):
    cfg = compose(["model.encoder=random:test", f"cache.dir={tmp_path_factory.mktemp('c')}"])
    return bench.run_bench(cfg, ["encode", "policies", "cache"], clips=6, paper_clips=2, batch_size=4,
                           policies=["clip", "5"], command="ser bench (test)")  # fmt: skip


def test_encode_and_cache_rows_come_from_both_measured_sides(encode_report):
    rep = encode_report
    assert {"cpu", "cores", "gpu", "torch", "date"} <= set(rep["machine"])
    parts = [r["part"] for r in rep["rows"]]
    assert parts.count("encode") >= 3 and parts.count("cache") == 1
    _check_rows(rep)
    enc = rep["encode"]
    assert enc["clips"] == 6 and enc["ours"]["clips_timed"] == 6
    assert enc["paper"]["clips_timed"] == 2 and enc["paper"]["extrapolated"]
    # the paper side is extrapolated from its measured per-clip time, ours is every clip measured
    assert enc["paper"]["seconds_all"] == pytest.approx(enc["paper"]["per_clip_s"] * 6)
    throughput = next(r for r in rep["rows"] if r["unit"] == "clips/s")
    assert throughput["paper"] == pytest.approx(6 / enc["paper"]["seconds_all"])
    assert throughput["ours"] == pytest.approx(6 / enc["ours"]["seconds"])
    assert "extrapolated" in throughput["paper_how"]
    # cache: our fp16 shard trimmed to each clip vs one fp32 1500 x d file per clip and layer
    c = rep["cache"]
    assert c["paper_bytes_per_clip_layer"] >= 1500 * c["dim"] * 4
    assert c["ours_bytes_per_clip_layer"] >= c["mean_frames"] * c["dim"] * 2
    assert [p["policy"] for p in rep["policies"]] == ["clip", "5s"]
    assert rep["policies"][1]["encoder_frames"] >= rep["policies"][0]["encoder_frames"]


def test_markdown_has_machine_table_and_ratios(encode_report, tmp_path):
    md = encode_report["markdown"]
    assert "| part | metric | paper recipe | ours | ours better by |" in md
    assert "CPU " in md and "GPU " in md and "torch " in md
    assert md.count("\n| encode |") >= 3 and "\n| cache |" in md
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nhand-written text\n")
    bench.append_markdown(out, md)
    bench.append_markdown(out, md)
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written text")
    assert text.count("<!-- ser bench results -->") == 1 and text.count("| part | metric |") == 2


def test_cv_part_runs_ser_cv_and_estimates_the_paper(tmp_path):
    cfg = compose(["model.encoder=random:test", "data.val_speakers=1", "trainer.max_epochs=1"])
    rep = bench.run_bench(cfg, ["cv"], clips=18, paper_clips=2, cv_folds=1, cv_epochs=1, speakers=6, num_folds=3,
                          workdir=tmp_path)  # fmt: skip
    _check_rows(rep)
    ours, est = rep["cv"]["ours"], rep["cv"]["paper"]
    assert ours["folds_run"] == [1] and ours["folds_all"] == [1, 2, 3] and ours["extrapolated"]
    assert ours["clips"] == 18 and ours["clips_missing_before"] == 18  # cold cache: every clip encoded
    assert ours["total_s"] == pytest.approx(ours["encode_s"] + ours["train_s"] * 3)
    assert est["total_s"] == pytest.approx(est["encode_s"] + est["train_s"] + est["eval_s"] + est["read_s"])
    assert est["encode_s"] == pytest.approx(18 * rep["cv"]["pieces"]["per_clip_encode_s"])
    assert (tmp_path / "cv" / "summary.json").is_file()


def test_paper_cv_estimate_adds_up_its_pieces():
    folds = [{"n_train": 33, "n_test": 5}, {"n_train": 16, "n_test": 7}]
    est = bench.paper_cv_estimate(10, 2.0, folds, epochs=3, train_step_s=0.5, eval_clip_s=0.1, read_file_s=0.01)
    assert est["encode_s"] == pytest.approx(20.0)
    assert est["train_s"] == pytest.approx(3 * (3 + 1) * 0.5)  # ceil(33/16) + ceil(16/16) steps per epoch
    assert est["eval_s"] == pytest.approx(3 * 12 * 0.1)
    assert est["read_s"] == pytest.approx(3 * (38 + 23) * 0.01)


def test_ratio_direction_and_helpers():
    assert bench._row("x", "m", 2.0, 8.0, "clips/s", "higher", "a", "b")["ratio"] == pytest.approx(4.0)
    assert bench._row("x", "m", 8.0, 2.0, "s", "lower", "a", "b")["ratio"] == pytest.approx(4.0)
    lengths = [5, 1, 4, 2, 3, 30, 6]
    batches = bench.length_batches(lengths, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len(b) <= 3 for b in batches)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)
    capped = bench.length_batches(lengths, batch_size=8, max_batch_samples=30)
    assert all(len(b) * max(lengths[i] for i in b) <= 30 or len(b) == 1 for b in capped)
    secs = bench.shemo_like_lengths(4000, seed=0)
    assert secs.min() >= 1.0 and secs.max() <= 30.0 and 3.5 < secs.mean() < 4.5
    clips = bench.SyntheticClips(secs[:5], seed=0)
    assert [len(c) for c in clips.waves()] == [int(round(s * 16000)) for s in secs[:5]]


def test_options_may_follow_the_overrides():
    import argparse

    from ser_lightning.cli import build_parser
    from ser_lightning.run.options import merge_late_options

    args = build_parser().parse_args(["bench", "model.encoder=random:test", "--clips", "5", "--no-write"])
    args = merge_late_options(args, bench.add_options)
    assert args.clips == 5 and args.no_write and args.overrides == ["model.encoder=random:test"]
    assert args.parts == "encode,cache"  # defaults stay
    assert isinstance(args, argparse.Namespace)


# ------------------------------------------------------------------------------------------------ probe
def test_probe_on_a_tiny_cached_corpus(emobox_ravdess, tmp_path):
    """96 tone clips (4 classes, class-dependent pitch), random:test encoder: the probe must beat chance by far,
    reuse the cache on a second run (--no-fill), and give the same numbers."""
    cfg = compose(["data=emobox", f"data.root={emobox_ravdess}", "data.val_speakers=1", "model.encoder=random:test",
                   "model.layers=[1,2]", f"cache.dir={tmp_path / 'cache'}", f"data.table_cache_dir={tmp_path / 't'}"])  # fmt: skip
    res = probe.run_probe(cfg, ["clip", "1"], c_grid=[0.01, 1.0], reference="1")
    assert res["layers"] == [1, 2] and res["folds"] == [1, 2, 3, 4, 5, 6]
    for pol in ("clip", "1s"):
        for k in (1, 2):
            r = res["policies"][pol]["layers"][k]
            assert len(r["folds"]) == 6
            assert all(f["C"] in (0.01, 1.0) for f in r["folds"].values())
            assert r["ua"]["mean"] > 0.5  # chance is 0.25
            assert r["ua"]["std"] >= 0 and 0 <= r["wa"]["mean"] <= 1
    assert res["policies"]["1s"]["mean_input_s"] > res["policies"]["clip"]["mean_input_s"]
    assert set(res["frontier"]) == {1, 2} and all(p in ("clip", "1s") for p in res["frontier"].values())
    paired = res["paired"]["clip"][2]  # clip minus the reference (1 s), fold by fold
    folds = res["policies"]["clip"]["layers"][2]["folds"]
    ref_folds = res["policies"]["1s"]["layers"][2]["folds"]
    assert paired["mean"] == pytest.approx(np.mean([folds[f]["test_ua"] - ref_folds[f]["test_ua"] for f in folds]))
    again = probe.run_probe(cfg, ["clip"], c_grid=[0.01, 1.0], fill=False)
    assert again["policies"]["clip"]["layers"][2]["ua"] == res["policies"]["clip"]["layers"][2]["ua"]
    md = probe.format_probe(res)
    assert "| clip |" in md and "| 1s |" in md and "Frontier" in md
    json.dumps(res)  # probe.json is plain JSON


def test_probe_refuses_an_empty_cache_with_no_fill(emobox_ravdess, tmp_path):
    cfg = compose(["data=emobox", f"data.root={emobox_ravdess}", "data.val_speakers=1", "model.encoder=random:test",
                   f"cache.dir={tmp_path / 'cache'}", f"data.table_cache_dir={tmp_path / 't'}"])  # fmt: skip
    with pytest.raises(ValueError, match="not in the cache"):
        probe.run_probe(cfg, ["clip"], fill=False)


def test_probe_fold_picks_c_on_validation_only():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    x = rng.standard_normal((120, 8)) + y[:, None] * 1.5
    idx = rng.permutation(120)
    train, val, test = idx[:60], idx[60:90], idx[90:]
    r = probe.probe_fold(x, y, train, val, test, [0.001, 1.0])
    assert r["C"] in (0.001, 1.0) and r["test_ua"] > 0.6
    assert (r["n_train"], r["n_val"], r["n_test"]) == (60, 30, 30)
    assert math.isfinite(r["val_ua"])


@pytest.mark.slow
def test_probe_on_real_whisper_tiny_features(ravdess_root, tiny_en_path, tmp_path):
    """tiny.en on 40 clips per class of RAVDESS: real features carry emotion (well above 1/8 chance)."""
    cfg = compose(["data=ravdess", f"data.root={ravdess_root}", "data.limit_per_class=40",
                   f"model.encoder={tiny_en_path}", "model.layers=[2,4]", f"cache.dir={tmp_path / 'cache'}",
                   f"data.table_cache_dir={tmp_path / 't'}"])  # fmt: skip
    res = probe.run_probe(cfg, ["clip"])
    assert res["policies"]["clip"]["layers"][4]["ua"]["mean"] > 0.25


def test_clip_plus_tail_policy():
    """'clip+T' (tried in the frontier study): T seconds of silence after the clip, capped at the 30 s window;
    the features kept (content frames) are the clip's own, and the name (a cache-key part) is distinct."""
    from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend, encoder_frames, mel_frames

    p = LengthPolicy.parse("clip+2")
    assert p.name == "clip+2s" and LengthPolicy.parse("clip").name == "clip" and LengthPolicy.parse("10").name == "10s"
    assert p.input_samples(16000) == 48000 and p.input_samples(470000) == 480000 and p.input_samples(480000) == 480000
    for bad in ("clip+0", "clip+x", "clip+30"):
        with pytest.raises(ValueError, match="clip\\+T"):
            LengthPolicy.parse(bad)
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    feats, frames, content = LogMelFrontend(80)([wave], p)
    assert int(frames[0]) == mel_frames(48000) and feats.shape[-1] == mel_frames(48000)
    assert int(content[0]) == encoder_frames(mel_frames(16000))


def test_encode_waves_returns_compact_exact_copies():
    """Per clip and layer: exactly the encoder's output on the clip's frames, in arrays that own their memory
    (a view would keep the whole padded batch output alive while a shard is collected)."""
    import torch

    from ser_lightning.features.encoder import load_encoder
    from ser_lightning.features.extract import encode_waves
    from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend

    enc, fe = load_encoder("random:test"), LogMelFrontend(80)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 20000)]
    policy = LengthPolicy.parse("5")
    got = encode_waves(enc, fe, waves, policy, [1, 2])
    ref = enc(*fe(waves, policy), [1, 2])
    for k in (1, 2):
        for i, n in enumerate(ref.mask.sum(1).tolist()):
            arr = got[k][i]
            assert arr.dtype == np.float32 and arr.shape == (n, enc.output_dim) and arr.flags.owndata
            assert torch.equal(torch.from_numpy(arr), ref.layers[k][i, :n])


def test_probe_clip_means_per_speaker_normalisation():
    """model.feature_norm=speaker in the probe: each clip's frames standardised with its speaker's frame statistics
    (hand-computed here), so a speaker-wide offset and scale vanish."""
    rng = np.random.default_rng(3)
    clips = {f"h{i}": rng.normal(size=(5 + i, 4)) * (1 + i % 2 * 9) + (i % 2) * 50 for i in range(6)}  # 2 speakers
    speakers = ["a" if i % 2 == 0 else "b" for i in range(6)]

    class Cache:
        def get(self, h, k):
            return clips[h] * k  # layer k scales the features

    got = probe.clip_means(Cache(), list(clips), [1, 2], speakers)
    for k in (1, 2):
        for s in ("a", "b"):
            rows = [i for i, sp in enumerate(speakers) if sp == s]
            frames = np.concatenate([clips[f"h{i}"] * k for i in rows])
            for i in rows:
                want = ((clips[f"h{i}"] * k - frames.mean(0)) / frames.std(0)).mean(0)
                np.testing.assert_allclose(got[k][i], want, rtol=1e-5, atol=1e-5)
    plain = probe.clip_means(Cache(), list(clips), [1])
    np.testing.assert_allclose(plain[1][0], clips["h0"].mean(0), rtol=1e-6)


def test_probe_clip_statistics_mean_and_std():
    """--stats meanstd: a clip's features are the mean and then the std of its frames (hand-computed), also under
    speaker normalisation (std of standardised frames = clip std / speaker std)."""
    rng = np.random.default_rng(4)
    clips = {f"h{i}": rng.normal(size=(6 + i, 3)) * (1 + i) for i in range(4)}
    speakers = ["a", "b", "a", "b"]

    class Cache:
        def get(self, h, k):
            return clips[h] + k

    got = probe.clip_means(Cache(), list(clips), [2], with_std=True)[2]
    assert got.shape == (4, 6)
    for i in range(4):
        c = clips[f"h{i}"] + 2
        np.testing.assert_allclose(got[i], np.concatenate([c.mean(0), c.std(0)]), rtol=1e-5)
    spk = probe.clip_means(Cache(), list(clips), [2], speakers, with_std=True)[2]
    frames_a = np.concatenate([clips["h0"] + 2, clips["h2"] + 2])
    standardised = (clips["h2"] + 2 - frames_a.mean(0)) / frames_a.std(0)
    np.testing.assert_allclose(spk[2], np.concatenate([standardised.mean(0), standardised.std(0)]), rtol=1e-5, atol=1e-6)


def test_probe_concatenated_layers_row(emobox_ravdess, tmp_path):
    """--concat: one more row, the requested layers' clip statistics side by side, probed like a layer."""
    cfg = compose(["data=emobox", f"data.root={emobox_ravdess}", "data.val_speakers=1", "model.encoder=random:test",
                   "model.layers=[1,2]", f"cache.dir={tmp_path / 'cache'}", f"data.table_cache_dir={tmp_path / 't'}"])  # fmt: skip
    res = probe.run_probe(cfg, ["clip"], c_grid=[0.01, 1.0], reference="clip", stats="meanstd", concat=True)
    assert res["layers"] == [1, 2, "1+2"] and res["stats"] == "meanstd"
    joined = res["policies"]["clip"]["layers"]["1+2"]
    assert len(joined["folds"]) == 6 and joined["ua"]["mean"] > 0.5  # chance is 0.25
    md = probe.format_probe(res)
    assert "L1+2 UA" in md and "mean and std of one layer; L1+2: those layers" in md
    json.dumps(res)
    with pytest.raises(ValueError, match="stats"):
        probe.run_probe(cfg, ["clip"], stats="max")
