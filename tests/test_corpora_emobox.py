"""EmoBox loader: jsonl + label_map + fold files, fold-group speakers, disjointness checks, audio_root."""

from __future__ import annotations

import json
import shutil

import fakes
import pytest

from ser_lightning.data.folds import make_split
from ser_lightning.data.table import build_table, load_corpus


def test_labels_mapped_and_class_order_from_label_map(emobox_ravdess, cfg):
    table = load_corpus(cfg(name="emobox", manifest=str(emobox_ravdess)))
    assert table.name == "emobox-ravdess"
    # label_map order (Angry, Surprise, Sad, Disgust, Happy, Calm, Neutral, Fear), classes present only
    assert table.class_names == ["Angry", "Sad", "Happy", "Neutral"]
    assert table.counts() == {"Angry": 24, "Sad": 24, "Happy": 24, "Neutral": 24}


def test_folds_are_fold_groups_and_speaker_independent(emobox_ravdess, cfg):
    table = load_corpus(cfg(name="emobox", root=str(emobox_ravdess)))  # root works like manifest
    assert table.folds == {k: [f"fold{k}-group"] for k in range(1, 7)}
    by_key = {u.key: u for u in table.utterances}
    # EmoBox fold 1 tests actors 01 11 20 21
    assert {by_key[f"ravdess-03-01-01-01-01-01-{a:02d}"].speaker for a in (1, 11, 20, 21)} == {"fold1-group"}
    assert by_key["ravdess-03-01-05-01-01-01-04"].speaker == "fold2-group"
    for fold in range(1, 7):
        split = make_split(table, fold, val_speakers=1, seed=0)
        assert split.test_speakers == [f"fold{fold}-group"]
        assert len(split.train_speakers) == 4 and len(split.val_speakers) == 1
    assert any("speaker group" in n for n in table.notes)


def test_speaker_field_is_used_when_present(tmp_path, cfg):
    ds_dir = fakes.make_emobox(tmp_path, actors=range(1, 25), codes=("01", "05"), speaker_field=True)
    table = load_corpus(cfg(name="emobox", manifest=str(ds_dir / "ravdess.jsonl")))
    assert table.folds[1] == ["Actor_01", "Actor_11", "Actor_20", "Actor_21"]
    assert len(table.speakers()) == 24
    split = make_split(table, 1, val_speakers=2)
    assert len(split.train_speakers) == 18


def test_audio_paths_resolve_against_the_checkout_or_audio_root(emobox_ravdess, tmp_path, cfg):
    table = load_corpus(cfg(name="emobox", manifest=str(emobox_ravdess)))
    checkout = emobox_ravdess.parent.parent
    u = table.utterances[0]
    assert u.path.startswith(str(checkout.resolve() / "downloads" / "ravdess"))
    t = build_table(cfg(name="emobox", manifest=str(emobox_ravdess), limit_per_class=2))
    assert len(t.dataset) == 8
    elsewhere = tmp_path / "audio_copy"
    shutil.copytree(checkout / "downloads", elsewhere / "downloads")
    moved = load_corpus(cfg(name="emobox", manifest=str(emobox_ravdess), audio_root=str(elsewhere)))
    assert moved.utterances[0].path.startswith(str(elsewhere / "downloads"))


def _rewrite(path, fn):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in fn(rows)))


def test_a_key_in_two_test_folds_is_refused(tmp_path, cfg):
    ds_dir = fakes.make_emobox(tmp_path, actors=range(1, 25), codes=("01",))
    extra = [json.loads(line) for line in (ds_dir / "fold_1" / "ravdess_test_fold_1.jsonl").read_text().splitlines()][:1]
    _rewrite(ds_dir / "fold_2" / "ravdess_test_fold_2.jsonl", lambda rows: rows + extra)
    with pytest.raises(ValueError, match="ravdess-03-01-01-01-01-01-01 is in the test sets of folds 1 and 2: folds must be disjoint"):
        load_corpus(cfg(name="emobox", manifest=str(ds_dir)))


def test_train_and_test_overlap_is_refused(tmp_path, cfg):
    ds_dir = fakes.make_emobox(tmp_path, actors=range(1, 25), codes=("01",))
    test_rows = [json.loads(line) for line in (ds_dir / "fold_3" / "ravdess_test_fold_3.jsonl").read_text().splitlines()]
    _rewrite(ds_dir / "fold_3" / "ravdess_train_fold_3.jsonl", lambda rows: rows + test_rows[:2])
    with pytest.raises(ValueError, match="fold 3: 2 key.s. in both train and test"):
        load_corpus(cfg(name="emobox", manifest=str(ds_dir)))


def test_unknown_label_names_the_key(tmp_path, cfg):
    ds_dir = fakes.make_emobox(tmp_path, actors=range(1, 25), codes=("01",))

    def corrupt(rows):
        rows[5]["emo"] = "Bored"
        return rows

    _rewrite(ds_dir / "ravdess.jsonl", corrupt)
    with pytest.raises(ValueError, match=r"key ravdess-03-01-01-01-01-01-06: label 'Bored' is not in .*label_map\.json"):
        load_corpus(cfg(name="emobox", manifest=str(ds_dir)))


def test_segments_and_bad_locations_are_refused(tmp_path, cfg):
    ds_dir = fakes.make_emobox(tmp_path, actors=range(1, 25), codes=("01",))

    def segment(rows):
        rows[0].update(start_time=0.0, end_time=1.0)
        return rows

    _rewrite(ds_dir / "ravdess.jsonl", segment)
    with pytest.raises(ValueError, match="segment entries"):
        load_corpus(cfg(name="emobox", manifest=str(ds_dir)))
    with pytest.raises(FileNotFoundError, match="not an EmoBox data/<ds> folder"):
        load_corpus(cfg(name="emobox", manifest=str(tmp_path)))
