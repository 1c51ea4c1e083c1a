"""Real-world corpora (issue #19): stratified, size-balanced speaker folds; validation speakers that cover every
class; pooled CV metrics; and the defects of the bad-input probe (a rerun after bad audio, duplicate rows and
recordings, stray labels named by their rows, skips visible in the CV summary and `ser cache`, the W&B history of
a killed run)."""

from __future__ import annotations

import json
import random
import signal
import sys
from collections import Counter
from pathlib import Path

import fakes
import pytest

from ser_lightning.cli import main
from ser_lightning.config import compose
from ser_lightning.data.corpora.base import CorpusTable, Utterance
from ser_lightning.data.folds import FoldError, coverage_problem, fold_speakers, make_split
from ser_lightning.models.metrics import confusion_metrics

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import fault_helpers as fh  # noqa: E402

EMOTIONS = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry"}  # RAVDESS emotion codes


def _tiny(out: Path, work: Path, *extra: str) -> list:
    return ["model.encoder=random:test", "model.layer=1", "model.input_seconds=clip", "model.pooling=mean",
            "model.proj_dim=32", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "wandb.mode=disabled",
            f"cache.dir={work / 'cache'}", f"data.table_cache_dir={work / 'tables'}", f"output_dir={out}", *extra]  # fmt: skip


def unbalanced_ravdess_folder(root: Path, ravdess: Path) -> Path:
    """A label-folder corpus cut from RAVDESS like a broadcast collection: 3 speakers with every emotion, 3 big
    one-emotion speakers, 16 small one-emotion speakers (2-5 clips). Speakers are made-up names over RAVDESS
    actors' clips (each clip used once), labels are the clips' own emotions."""
    rng = random.Random(0)
    clips = {e: [] for e in EMOTIONS.values()}
    for actor in range(1, 25):
        for f in sorted((ravdess / f"Actor_{actor:02d}").glob("*.flac")):
            code = f.name.split("-")[2]
            if code in EMOTIONS:
                clips[EMOTIONS[code]].append(f)
    taken = {e: iter(v) for e, v in clips.items()}
    speakers = {f"all{i}": [e for e in EMOTIONS.values() for _ in range(2)] for i in range(3)}
    speakers.update({"bigneutral": ["neutral"] * 14, "bigangry": ["angry"] * 24, "bighappy": ["happy"] * 20})
    for i in range(16):
        speakers[f"small{i:02d}"] = [list(EMOTIONS.values())[i % 4]] * rng.randint(2, 5)
    for speaker, labels in speakers.items():
        for n, label in enumerate(labels):
            target = root / label / f"{speaker}_{label}_{n:02d}.flac"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(next(taken[label]))
    return root


# ------------------------------------------------------------------------------------------ folds


def test_unbalanced_corpus_folds_hold_every_class_in_every_split_and_cv_runs_to_the_end(tmp_path, ravdess_root, cfg):
    """The issue's acceptance check: before, the greedy put most speakers into one fold and `ser cv` stopped at
    fold 1 ("the train split has no clips of class(es) ..."); now every split of every fold holds every class,
    the test folds are of comparable size, the CV finishes and reports pooled metrics."""
    from ser_lightning.run.stats import data_stats, format_stats

    root = unbalanced_ravdess_folder(tmp_path / "corpus", ravdess_root)
    stats = data_stats(cfg(name="folder", root=str(root)), num_folds=4, val_speakers=2, seed=0)
    print(format_stats(stats))  # the fold table (shown with -s)
    sizes = [f["test"]["clips"] for f in stats["folds"]]
    assert len(sizes) == 4 and max(sizes) / min(sizes) <= 2.0, sizes
    for f in stats["folds"]:
        for split in ("train", "val", "test"):
            assert f[split]["missing_classes"] == [], (f["fold"], split, f[split]["counts"])
    assert stats["coverage_problem"] is None
    out = tmp_path / "cv"
    assert main(["cv", "data=folder", f"data.root={root}", "data.num_folds=4", *_tiny(out, tmp_path)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"] == [1, 2, 3, 4] and summary["n_test"] == sum(sizes)
    want = confusion_metrics(summary["confusion_matrix"])
    assert summary["pooled"]["test/ua"] == pytest.approx(want["ua"]) and "Pooled over the folds" in (out / "summary.md").read_text()


def test_impossible_fold_counts_are_said_up_front_with_the_count_that_works():
    utts = [Utterance(f"/x/{s}_{i}.wav", label, s) for s, labels in
            {"a": "xy", "b": "xy", "c": "xy", "d": "x", "e": "x"}.items() for i, label in enumerate(labels)]  # fmt: skip
    table = CorpusTable("toy", utts, ["x", "y"])
    assert coverage_problem(table, 3) is None
    problem = coverage_problem(table, 4)
    assert "4 folds cannot each hold every class: y (3 speakers)" in problem and "data.num_folds=3 (or fewer)" in problem


def test_validation_speakers_cover_every_class_and_keep_the_plain_draw_when_it_does():
    # one-emotion speakers: a plain draw of 2 speakers cannot cover 4 classes; the chosen ones do, seeded, per fold
    spec = {f"s{i:02d}": ["neutral", "happy", "sad", "angry"][i % 4] for i in range(20)}
    utts = [Utterance(f"/x/{s}_{j}.wav", label, s) for s, label in spec.items() for j in range(3)]
    table = CorpusTable("one-emotion", utts, ["angry", "happy", "neutral", "sad"])
    for fold in fold_speakers(table, 4, 0):
        split = make_split(table, fold, 4, val_speakers=2, seed=0)
        assert {spec[s] for s in split.val_speakers} == set(table.class_names), split
        assert {spec[s] for s in split.train_speakers} == set(table.class_names)
        assert split == make_split(table, fold, 4, val_speakers=2, seed=0)
    # val_fraction: at least that share of the non-test clips
    split = make_split(table, 1, 4, val_speakers=1, seed=0, val_fraction=0.4)
    rest = [u for u in utts if u.speaker not in split.test_speakers]
    assert sum(u.speaker in split.val_speakers for u in rest) >= 0.4 * len(rest)
    # every speaker with every class (RAVDESS): the validation speakers are the plain seeded draw, as before
    spec = {f"a{i:02d}": None for i in range(12)}
    utts = [Utterance(f"/x/{s}_{c}.wav", c, s) for s in spec for c in ("x", "y", "z")]
    table = CorpusTable("balanced", utts, ["x", "y", "z"], folds={1: ["a00", "a01"], 2: ["a02", "a03"]})
    rest = sorted(set(spec) - {"a00", "a01"})
    assert make_split(table, 1, val_speakers=2, seed=5).val_speakers == sorted(random.Random("5-1").sample(rest, 2))


def test_a_validation_split_without_a_class_is_an_error_unless_allowed(tmp_path):
    from ser_lightning.run.build import build_datamodule

    root = fakes.make_folder(tmp_path / "c", speakers=("a1", "a2", "a3", "a4"), labels=("calm", "loud"))
    fakes.write_audio(root / "calm" / "b1_calm_00.wav", freq=300, seed=999)  # a one-class speaker
    base = ["data=folder", f"data.root={root}", "data.num_folds=2", "data.val_speaker_ids=[b1]",
            "model.encoder=random:test", f"data.table_cache_dir={tmp_path / 't'}"]  # fmt: skip
    cfg = compose(base)
    test_fold = next(k for k, spk in fold_speakers_of(cfg).items() if "b1" not in spk)
    _, dm = build_datamodule(compose(base + [f"data.fold={test_fold}"]))
    with pytest.raises(FoldError, match=r"(?s)the val split has no clips of class\(es\) \[.loud.\].*allow_incomplete_val"):
        dm.setup()
    _, dm = build_datamodule(compose(base + [f"data.fold={test_fold}", "data.allow_incomplete_val=true"]))
    with pytest.warns(UserWarning, match="validation speakers have no clips of \\['loud'\\]"):
        dm.setup()


def fold_speakers_of(cfg):
    from ser_lightning.data.table import load_corpus

    from omegaconf import OmegaConf

    return fold_speakers(load_corpus(OmegaConf.to_container(cfg.data)), cfg.data.num_folds, cfg.seed)


# ------------------------------------------------------------------------------------------ pooled metrics


def test_pooled_metrics_match_hand_computed_values():
    got = confusion_metrics([[3, 1], [2, 4]])
    assert got["wa"] == pytest.approx(7 / 10)
    assert got["ua"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    f1 = [2 * 3 / (4 + 5), 2 * 4 / (6 + 5)]  # 2 tp / (support + predicted)
    assert got["f1_macro"] == pytest.approx(sum(f1) / 2) and got["f1_weighted"] == pytest.approx((4 * f1[0] + 6 * f1[1]) / 10)
    # a class no fold's test speakers hold: left out of UA (its recall is undefined), named
    got = confusion_metrics([[2, 0, 0], [0, 0, 0], [1, 0, 3]])
    assert got["absent"] == [1] and got["ua"] == pytest.approx((1 + 3 / 4) / 2)


def test_pooled_metrics_equal_torchmetrics_on_the_concatenated_predictions():
    import torch
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    from ser_lightning.models.metrics import build_metrics

    g = torch.Generator().manual_seed(0)
    target, preds = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    metrics = build_metrics(["a", "b", "c", "d"])
    metrics.update(preds, target)
    want = metrics.compute()
    got = confusion_metrics(multiclass_confusion_matrix(preds, target, 4).tolist())
    for key in ("wa", "ua", "f1_macro", "f1_weighted"):
        assert got[key] == pytest.approx(float(want[key]), abs=1e-6), key


# ------------------------------------------------------------------------------------------ defects


def test_a_run_stopped_by_bad_audio_does_not_block_its_corrected_rerun(tmp_path, capsys):
    """Defects 1 and 7: following the error's advice (data.on_bad_audio=skip) works for `ser train` and `ser cv`,
    and the skip is said in the CV summary and by `ser cache`."""
    root = fakes.make_folder(tmp_path / "c", speakers=("a1", "a2", "a3", "a4"), labels=("calm", "loud"), per_label=2)
    (root / "calm" / "a1_calm_empty.wav").write_bytes(b"")
    common = ["data=folder", f"data.root={root}", "data.num_folds=2", "data.val_speakers=1"]
    for command in ("train", "cv"):
        out = tmp_path / command
        assert main([command, *common, *_tiny(out, tmp_path)]) == 1
        assert "a1_calm_empty.wav" in capsys.readouterr().err
        assert main([command, *common, "data.on_bad_audio=skip", *_tiny(out, tmp_path)]) == 0
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["data"]["skipped"] == 1 and summary["data"]["skipped_files"][0]["path"].endswith("a1_calm_empty.wav")
    assert "1 clip(s) skipped as unusable" in (tmp_path / "cv" / "summary.md").read_text()
    capsys.readouterr()
    assert main(["cache", *common, "data.on_bad_audio=skip", *_tiny(tmp_path / "cache_run", tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "1 clip(s) skipped" in printed and "a1_calm_empty.wav" in printed
    listed = next((tmp_path / "cache").rglob("bad_audio.json"))
    assert json.loads(listed.read_text())["files"][0]["path"].endswith("a1_calm_empty.wav")


def test_another_configuration_that_trained_is_still_refused(tmp_path):
    from ser_lightning.run.rundir import RunConflictError, claim_output_dir

    out = tmp_path / "run"
    out.mkdir()
    claim_output_dir(out, compose(["model.encoder=random:test", "data.root=/x"]))
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunConflictError, match="holds a run of a different configuration"):
        claim_output_dir(out, compose(["model.encoder=random:test", "data.root=/x", "seed=1"]))


def test_manifest_duplicates_and_conflicting_labels(tmp_path, cfg):
    from ser_lightning.data.table import load_corpus

    fakes.write_audio(tmp_path / "a.wav")
    fakes.write_audio(tmp_path / "b.wav", freq=300)
    rows = [{"path": "a.wav", "label": "x", "speaker": "s1"}, {"path": "b.wav", "label": "y", "speaker": "s1"},
            {"path": "a.wav", "label": "x", "speaker": "s1"}]  # fmt: skip
    table = load_corpus(cfg(name="manifest", manifest=str(fakes.write_manifest(tmp_path / "m.csv", rows))))
    assert len(table.utterances) == 2 and table.excluded == {"duplicate manifest row": 1}
    assert "m.csv line 4 repeats" in table.notes[0] and "line 2" in table.notes[0]
    rows[2]["label"] = "y"
    with pytest.raises(ValueError, match=r"m2\.csv line 4: .*a\.wav is labelled 'y' .* line 2 labels it 'x'"):
        load_corpus(cfg(name="manifest", manifest=str(fakes.write_manifest(tmp_path / "m2.csv", rows))))


def test_identical_recordings_in_two_splits_are_refused_as_leakage(tmp_path):
    from ser_lightning.run.build import build_datamodule

    manifest = fakes.make_manifest_corpus(tmp_path / "c", fold_of={"s1": 1, "s2": 1, "s3": 2, "s4": 2, "s5": 3, "s6": 3})
    text = manifest.read_text()
    (tmp_path / "c" / "audio" / "s5" / "copy.wav").write_bytes((tmp_path / "c" / "audio" / "s1" / "sad_0.wav").read_bytes())
    manifest.write_text(text + "audio/s5/copy.wav,sad,s5,3\n")
    _, dm = build_datamodule(compose(["data=manifest", f"data.manifest={manifest}", "data.fold=3", "data.val_speakers=1",
                                      "model.encoder=random:test", f"data.table_cache_dir={tmp_path / 't'}"]))  # fmt: skip
    with pytest.raises(FoldError, match=r"(?s)identical recording\(s\) in two splits \(leakage\).*s1/sad_0\.wav.*copy\.wav"):
        dm.setup()


def test_a_stray_label_is_named_by_its_rows_with_the_cure(tmp_path):
    from ser_lightning.run.build import build_datamodule

    manifest = fakes.make_manifest_corpus(tmp_path / "c", fold_of={"s1": 1, "s2": 1, "s3": 2, "s4": 2, "s5": 3, "s6": 3})
    fakes.write_audio(tmp_path / "c" / "audio" / "s6" / "odd.wav", freq=900)
    manifest.write_text(manifest.read_text() + "audio/s6/odd.wav,bored,s6,3\n")
    _, dm = build_datamodule(compose(["data=manifest", f"data.manifest={manifest}", "data.fold=3", "data.val_speakers=1",
                                      "model.encoder=random:test", f"data.table_cache_dir={tmp_path / 't'}"]))  # fmt: skip
    with pytest.raises(FoldError) as e:
        dm.setup()
    text = str(e.value)
    assert "the train split has no clips of class(es) ['bored']" in text
    assert "class 'bored': 1 clip(s) from 1 speaker(s) in the corpus: " in text and "odd.wav (speaker s6)" in text
    assert "data.classes=[angry,happy,sad]" in text


def _offline_history(run_dir: Path) -> dict:
    """epoch -> logged keys of the newest offline W&B run folder under run_dir."""
    from test_wandb import _complete_records, _key

    newest = max(run_dir.glob("wandb/offline-run-*"), key=lambda p: p.name)
    (log,) = newest.glob("run-*.wandb")
    epochs: dict = {}
    for r in _complete_records(log):
        if r.WhichOneof("record_type") == "history":
            row = {_key(i): json.loads(i.value_json) for i in r.history.item}
            if "epoch" in row and "val/ua" in row:
                epochs.setdefault(int(row["epoch"]), set()).update(row)
    return epochs


def test_wandb_history_survives_a_kill(tmp_path_factory, tmp_path):
    """Defect 8: a fold SIGKILLed in epoch 2 and resumed: its (offline) W&B run holds every epoch's validation
    metrics, those before the kill included (replayed from history.jsonl)."""
    from ser_lightning.run.train import train

    out = tmp_path / "run"
    overrides = fh.tiny_overrides(out, fh.shared_work(tmp_path_factory), "trainer.max_epochs=3")
    overrides = [o for o in overrides if o != "wandb.mode=disabled"] + ["wandb.mode=offline"]
    base = fh.trained_run(tmp_path_factory)
    batches = -(-json.loads((base / "results.json").read_text())["n_train"] // fh.BATCH)
    proc = fh.run_ser(["train", *overrides], fault=f"train_batch:{2 * batches + 2}", action="kill")  # epoch 3
    assert proc.returncode == -signal.SIGKILL, fh.describe(proc)
    assert [e["epoch"] for e in map(json.loads, (out / "history.jsonl").read_text().splitlines())] == [0, 1]
    train(compose(overrides))
    history = _offline_history(out)
    assert sorted(history) == [0, 1, 2], history
    assert all("val/ua" in keys for keys in history.values())
    assert Counter(e["epoch"] for e in map(json.loads, (out / "history.jsonl").read_text().splitlines())) == {0: 1, 1: 1, 2: 1}


@pytest.mark.parametrize("content, message", [
    ("", r"empty manifest \(expected a header row\)"),
    ("path,label,speaker\n", "the manifest has no rows"),
])  # fmt: skip
def test_empty_manifests_are_named(tmp_path, cfg, content, message):
    from ser_lightning.data.table import load_corpus

    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(ValueError, match=rf"m\.csv: {message}"):
        load_corpus(cfg(name="manifest", manifest=str(tmp_path / "m.csv")))


def test_a_label_outside_data_classes_is_excluded_and_counted_never_silently(tmp_path, cfg):
    from ser_lightning.data.table import load_corpus

    manifest = fakes.make_manifest_corpus(tmp_path / "c")
    fakes.write_audio(tmp_path / "c" / "audio" / "s1" / "odd.wav", freq=900)
    manifest.write_text(manifest.read_text() + "audio/s1/odd.wav,bored,s1\n")
    table = load_corpus(cfg(name="manifest", manifest=str(manifest), classes=["sad", "angry", "happy"]))
    assert "bored" not in table.class_names and table.excluded == {"class bored not selected": 1}
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['calm'\]; available: angry, bored, happy, sad"):
        load_corpus(cfg(name="manifest", manifest=str(manifest), classes=["calm"]))
