"""manifest (CSV / JSONL) and folder corpora: columns, path resolution and escape refusal, folds, speakers."""

from __future__ import annotations

import fakes
import pytest

from ser_lightning.data.folds import check_independence, fold_speakers, make_split
from ser_lightning.data.table import build_table, load_corpus

SPEAKERS = ("s1", "s2", "s3", "s4", "s5", "s6")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest_loads_with_sorted_classes_and_auto_folds(tmp_path, cfg, fmt):
    manifest = fakes.make_manifest_corpus(tmp_path / "c", fmt=fmt)
    table = load_corpus(cfg(name="manifest", manifest=str(manifest)))
    assert table.class_names == ["angry", "happy", "sad"]
    assert table.counts() == {"angry": 6, "happy": 6, "sad": 6}
    assert table.speakers() == list(SPEAKERS)
    assert table.folds is None
    assert table.utterances[0].path == str((tmp_path / "c" / "audio" / "s1" / "sad_0.wav").resolve())
    folds = fold_speakers(table, 3, seed=0)
    assert sorted(s for f in folds.values() for s in f) == list(SPEAKERS) and len(folds) == 3
    for k in folds:
        check_independence(make_split(table, k, num_folds=3, val_speakers=1))
    # the default k is 5 (data.num_folds unset)
    assert len(fold_speakers(table, None, seed=0)) == 5


def test_manifest_root_option_and_classes_order(tmp_path, cfg):
    manifest = fakes.make_manifest_corpus(tmp_path / "c")
    table = load_corpus(cfg(name="manifest", root=str(manifest), classes=["sad", "happy"]))
    assert table.class_names == ["sad", "happy"]
    assert table.excluded == {"class angry not selected": 6}


def test_fold_column_gives_official_folds(tmp_path, cfg):
    fold_of = {"s1": 1, "s2": 1, "s3": 2, "s4": 2, "s5": 3, "s6": 3}
    manifest = fakes.make_manifest_corpus(tmp_path / "c", fold_of=fold_of)
    table = load_corpus(cfg(name="manifest", manifest=str(manifest)))
    assert table.folds == {1: ["s1", "s2"], 2: ["s3", "s4"], 3: ["s5", "s6"]}
    assert make_split(table, 2, val_speakers=1).test_speakers == ["s3", "s4"]


def test_speaker_in_two_folds_is_refused(tmp_path, cfg):
    rows = [{"path": "a.wav", "label": "x", "speaker": "s1", "fold": 1}, {"path": "b.wav", "label": "y", "speaker": "s1", "fold": 2}]
    manifest = fakes.write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(ValueError, match=r"m\.csv line 3: speaker s1 is in fold 2 but also in fold 1"):
        load_corpus(cfg(name="manifest", manifest=str(manifest)))


def test_custom_column_names_and_missing_column(tmp_path, cfg):
    fakes.write_audio(tmp_path / "a.wav")
    rows = [{"path": "a.wav", "emotion": "calm", "actor": "A1"}]
    manifest = fakes.write_manifest(tmp_path / "m.jsonl", rows)
    table = load_corpus(cfg(name="manifest", manifest=str(manifest), label_column="emotion", speaker_column="actor"))
    assert (table.utterances[0].label, table.utterances[0].speaker) == ("calm", "A1")
    with pytest.raises(ValueError, match="no 'speaker' column; columns are: actor, emotion, path"):
        load_corpus(cfg(name="manifest", manifest=str(manifest), label_column="emotion"))


def test_empty_cell_names_the_row(tmp_path, cfg):
    rows = [{"path": "a.wav", "label": "x", "speaker": "s1"}, {"path": "b.wav", "label": "", "speaker": "s2"}]
    manifest = fakes.write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(ValueError, match=r"m\.csv line 3: empty label"):
        load_corpus(cfg(name="manifest", manifest=str(manifest)))


@pytest.mark.parametrize("bad", ["../outside.wav", "audio/../../outside.wav", "/etc/passwd"])
def test_paths_escaping_the_root_are_refused(tmp_path, cfg, bad):
    root = tmp_path / "corpus"
    rows = [{"path": "ok.wav", "label": "x", "speaker": "s1"}, {"path": bad, "label": "x", "speaker": "s2"}]
    manifest = fakes.write_manifest(root / "m.csv", rows)
    with pytest.raises(ValueError, match=rf"m\.csv line 3: path '{bad}' is outside the audio root .*allow_outside_root=true"):
        load_corpus(cfg(name="manifest", manifest=str(manifest)))
    table = load_corpus(cfg(name="manifest", manifest=str(manifest), allow_outside_root=True))
    assert len(table.utterances) == 2


def test_audio_root_option(tmp_path, cfg):
    fakes.write_audio(tmp_path / "audio" / "s1_a.wav")
    manifest = fakes.write_manifest(tmp_path / "meta" / "m.csv", [{"path": "s1_a.wav", "label": "x", "speaker": "s1"}])
    table = load_corpus(cfg(name="manifest", manifest=str(manifest), audio_root=str(tmp_path / "audio")))
    assert table.utterances[0].path == str((tmp_path / "audio" / "s1_a.wav").resolve())
    with pytest.raises(ValueError, match="outside the audio root"):
        fakes.write_manifest(manifest, [{"path": "../meta/m.csv", "label": "x", "speaker": "s1"}])
        load_corpus(cfg(name="manifest", manifest=str(manifest), audio_root=str(tmp_path / "audio")))


def test_manifest_table_builds(tmp_path, cfg):
    manifest = fakes.make_manifest_corpus(tmp_path / "c")
    t = build_table(cfg(name="manifest", manifest=str(manifest), num_folds=3))
    assert len(t.dataset) == 18 and sorted(set(t.dataset["speaker"])) == list(SPEAKERS)


def test_folder_corpus(tmp_path, cfg):
    root = fakes.make_folder(tmp_path / "myset", per_label=2)
    fakes.make_folder(tmp_path / "myset", speakers=("spk07",), labels=("happy",), sep="-")
    (tmp_path / "myset" / "happy" / "notes.txt").write_text("not audio")
    table = load_corpus(cfg(name="folder", root=str(root)))
    assert table.name == "folder-myset"
    assert table.class_names == ["angry", "happy", "neutral", "sad"]
    assert table.counts() == {"angry": 12, "happy": 13, "neutral": 12, "sad": 12}
    assert table.speakers() == [f"spk{i:02d}" for i in range(1, 8)]
    assert table.folds is None
    for k, speakers in fold_speakers(table, 5, seed=1).items():
        check_independence(make_split(table, k, num_folds=5, val_speakers=1, seed=1))


def test_folder_speaker_that_cannot_be_parsed_names_the_file(tmp_path, cfg):
    root = fakes.make_folder(tmp_path / "myset")
    fakes.write_audio(root / "sad" / "recording.wav")
    with pytest.raises(ValueError, match=r"sad/recording\.wav: cannot read a speaker from the file name"):
        load_corpus(cfg(name="folder", root=str(root)))
    (root / "sad" / "recording.wav").rename(root / "sad" / "_recording.wav")
    with pytest.raises(ValueError, match=r"_recording\.wav: cannot read a speaker"):
        load_corpus(cfg(name="folder", root=str(root)))
