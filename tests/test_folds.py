"""Fold helpers: class coverage per split (check_fold_classes), corpus default classes, auto folds."""

from __future__ import annotations

import pytest

from ser_lightning.data.corpora.base import CorpusTable, Utterance, select_classes
from ser_lightning.data.folds import FoldError, check_fold_classes, fold_speakers, make_split


def _table(spec, **kw):
    """spec: speaker -> labels."""
    utts = [Utterance(f"/x/{s}_{i}.wav", label, s) for s, labels in spec.items() for i, label in enumerate(labels)]
    return CorpusTable("toy", utts, sorted({u.label for u in utts}), **kw)


def test_check_fold_classes_names_fold_split_and_classes():
    classes = ["angry", "happy", "sad"]
    check_fold_classes({"train": ["angry", "happy", "sad"], "val": ["sad", "happy", "angry"], "test": classes}, classes, 1)
    with pytest.raises(FoldError, match=r"fold 4: val split has no happy, sad; test split has no angry"):
        check_fold_classes({"train": classes, "val": ["angry"], "test": ["happy", "sad"]}, classes, 4)


def test_a_fold_missing_a_class_is_caught_on_a_real_split():
    # 'sad' only comes from speaker d, who is the test fold of fold 2: training on fold 2 never sees it
    spec = {"a": ["angry", "happy"], "b": ["angry", "happy"], "c": ["happy", "angry"], "d": ["sad", "angry"]}
    table = _table(spec, folds={1: ["a"], 2: ["d"]})
    split = make_split(table, 2, val_speaker_ids=["c"])
    labels = {name: [u.label for u in table.utterances if u.speaker in set(getattr(split, f"{name}_speakers"))]
              for name in ("train", "val", "test")}  # fmt: skip
    with pytest.raises(FoldError, match=r"fold 2: train split has no sad; val split has no sad"):
        check_fold_classes(labels, table.class_names, 2)


def test_default_classes_apply_only_when_classes_is_none():
    table = _table({"a": ["x", "y", "z"], "b": ["x", "y", "z"]}, default_classes=["x", "y"])
    chosen = select_classes(table, None)
    assert chosen.class_names == ["x", "y"] and chosen.excluded == {"class z not selected": 2}
    explicit = select_classes(table, ["z", "x", "y"])
    assert explicit.class_names == ["z", "x", "y"] and explicit.excluded == {}
    plain = _table({"a": ["x", "y"]})
    assert select_classes(plain, None) is plain
    with pytest.raises(ValueError, match="listed more than once"):
        select_classes(table, ["x", "x"])


def test_auto_folds_cover_every_speaker_once_and_are_seeded():
    spec = {f"s{i}": ["a", "b"] if i % 2 else ["b", "c"] for i in range(10)}
    table = _table(spec)
    folds = fold_speakers(table, 5, seed=3)
    assert sorted(folds) == [1, 2, 3, 4, 5]
    assert sorted(s for f in folds.values() for s in f) == sorted(spec)
    assert folds == fold_speakers(table, 5, seed=3)
    with pytest.raises(FoldError, match="10 speakers cannot make 11"):
        fold_speakers(table, 11, seed=0)
