"""RAVDESS loader on the real corpus in ../shared/corpora/ravdess (skipped with the reason when absent)."""

from __future__ import annotations

from ser_lightning.data.folds import make_split
from ser_lightning.data.table import build_table, load_corpus


def test_counts_speakers_and_emobox_folds(ravdess_root, cfg):
    table = load_corpus(cfg(name="ravdess", root=str(ravdess_root)))
    assert len(table.utterances) == 1440
    counts = table.counts()
    assert counts["neutral"] == 96
    assert all(n == 192 for c, n in counts.items() if c != "neutral") and len(counts) == 8
    assert table.speakers() == [f"Actor_{a:02d}" for a in range(1, 25)]
    assert table.folds[1] == ["Actor_01", "Actor_11", "Actor_20", "Actor_21"]
    assert table.excluded == {}
    tested = []
    for fold in range(1, 7):
        split = make_split(table, fold, val_speakers=2)
        assert not set(split.test_speakers) & (set(split.train_speakers) | set(split.val_speakers))
        tested += split.test_speakers
    assert sorted(tested) == table.speakers()  # every actor tested exactly once


def test_class_subset_and_a_small_table(ravdess_root, cfg, tmp_path):
    c = cfg(name="ravdess", root=str(ravdess_root), classes=["neutral", "happy", "sad", "angry"], limit_per_class=2)
    table = load_corpus(c)
    assert table.counts() == {"neutral": 96, "happy": 192, "sad": 192, "angry": 192}
    assert table.excluded["class calm not selected"] == 192
    t = build_table(c, report_dir=tmp_path / "r")
    assert len(t.dataset) == 8 and set(t.dataset["label_name"]) == {"neutral", "happy", "sad", "angry"}
    assert all(2.0 < d < 6.0 for d in t.dataset["duration"])
