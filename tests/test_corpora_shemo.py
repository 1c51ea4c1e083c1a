"""ShEMO loader: file names, the 5-class default (fear excluded), 4/6-class options, the paper's folds, zips."""

from __future__ import annotations

import zipfile

import fakes
import pytest

from ser_lightning.audio import ZIP_SEPARATOR, decode
from ser_lightning.data.corpora import shemo
from ser_lightning.data.folds import check_independence, make_split
from ser_lightning.data.table import build_table, load_corpus

FIVE = ["anger", "happiness", "neutral", "sadness", "surprise"]


def test_default_is_five_classes_with_fear_excluded(shemo_tree, cfg):
    table = load_corpus(cfg(name="shemo", root=str(shemo_tree)))
    assert table.class_names == FIVE
    assert table.counts() == {c: 87 for c in FIVE}
    assert table.excluded == {"class fear not selected": 2}
    assert len(table.speakers()) == 87
    assert all(u.label != "fear" for u in table.utterances)


def test_six_and_four_class_options(shemo_tree, cfg):
    six = load_corpus(cfg(name="shemo", root=str(shemo_tree), classes=FIVE + ["fear"]))
    assert six.class_names == FIVE + ["fear"]
    assert six.counts() == {**{c: 87 for c in FIVE}, "fear": 2}
    assert six.excluded == {}
    four = load_corpus(cfg(name="shemo", root=str(shemo_tree), classes=["anger", "happiness", "neutral", "sadness"]))
    assert four.counts() == {"anger": 87, "happiness": 87, "neutral": 87, "sadness": 87}
    assert four.excluded == {"class surprise not selected": 87, "class fear not selected": 2}


def test_unknown_class_is_refused(shemo_tree, cfg):
    with pytest.raises(ValueError, match="unknown class.*'angry'.*available: anger"):
        load_corpus(cfg(name="shemo", root=str(shemo_tree), classes=["angry"]))


def test_speaker_and_label_from_file_name(shemo_tree, cfg):
    table = load_corpus(cfg(name="shemo", root=str(shemo_tree)))
    by_key = {u.key: u for u in table.utterances}
    assert (by_key["F01A01"].label, by_key["F01A01"].speaker) == ("anger", "F01")
    assert (by_key["M56W01"].label, by_key["M56W01"].speaker) == ("surprise", "M56")
    assert (by_key["M12H01"].label, by_key["M12N01"].label, by_key["M12S01"].label) == ("happiness", "neutral", "sadness")
    assert by_key["F01A01"].path.endswith("female/F01A01.wav")


def test_paper_folds_exactly():
    folds = shemo.FOLDS
    assert sorted(folds) == list(range(1, 11))
    assert folds[1] == ["F01", "F02", "F03", "M01", "M02", "M03", "M04", "M05", "M06"]
    assert folds[6] == ["F16", "F17", "F18", "M31", "M32", "M33", "M34", "M35", "M36"]
    assert folds[7] == ["F19", "F20", "F21", "M37", "M38", "M39", "M40", "M41"]
    assert folds[8] == ["F22", "F23", "F24", "M42", "M43", "M44", "M45", "M46"]
    assert folds[9] == ["F25", "F26", "F27", "M47", "M48", "M49", "M50", "M51"]
    assert folds[10] == ["F28", "F29", "F30", "F31", "M52", "M53", "M54", "M55", "M56"]
    everyone = [s for k in folds for s in folds[k]]
    assert sorted(everyone) == sorted(fakes.SHEMO_SPEAKERS)  # each of the 87 speakers tested exactly once


def test_every_fold_is_speaker_independent(shemo_tree, cfg):
    table = load_corpus(cfg(name="shemo", root=str(shemo_tree)))
    for fold in range(1, 11):
        split = make_split(table, fold, val_speakers=2, seed=0)
        check_independence(split)
        assert split.test_speakers == sorted(shemo.FOLDS[fold])
        assert len(split.train_speakers) + len(split.val_speakers) + len(split.test_speakers) == 87
    assert make_split(table, 10).test_speakers == ["F28", "F29", "F30", "F31", "M52", "M53", "M54", "M55", "M56"]


def test_reads_official_zips_without_unpacking(tmp_path, cfg):
    names = fakes.shemo_names(["F01", "F02", "M01", "M02"], letters="ANS")
    root = fakes.make_shemo(tmp_path / "shemo", names, zipped=True)
    assert sorted(p.name for p in root.iterdir()) == ["female.zip", "male.zip"]
    table = load_corpus(cfg(name="shemo", root=str(root)))
    assert len(table.utterances) == 12  # fear clips of F01 / M01 excluded by default
    assert table.excluded == {"class fear not selected": 2}
    u = next(u for u in table.utterances if u.key == "M02S01")
    archive, member = u.path.split(ZIP_SEPARATOR)
    assert archive.endswith("male.zip") and member == "male/M02S01.wav"
    wave, info = decode(u.path, 16000)
    assert info.orig_sample_rate == 44100 and abs(info.duration - 0.3) < 0.01
    assert sorted(p.name for p in root.iterdir()) == ["female.zip", "male.zip"]  # nothing unpacked


def test_zip_members_feed_the_table(tmp_path, cfg):
    names = fakes.shemo_names(["F01", "M01"], letters="AHNSW", fear_speakers=())
    root = fakes.make_shemo(tmp_path / "shemo", names, zipped=True)
    t = build_table(cfg(name="shemo", root=str(root)), report_dir=tmp_path / "report")
    assert len(t.dataset) == 10
    assert all(ZIP_SEPARATOR in p for p in t.dataset["path"])
    assert set(t.dataset["speaker"]) == {"F01", "M01"}


def test_partial_unpack_uses_loose_files_and_the_rest_of_the_zip(tmp_path, cfg):
    root = tmp_path / "shemo"
    fakes.make_shemo(root, fakes.shemo_names(["F01", "M01"], letters="AN", fear_speakers=()), zipped=True)
    fakes.make_shemo(root, ["F01A01.wav"])  # one clip also unpacked
    table = load_corpus(cfg(name="shemo", root=str(root)))
    assert len(table.utterances) == 4
    f01a01 = next(u for u in table.utterances if u.key == "F01A01")
    assert ZIP_SEPARATOR not in f01a01.path
    assert any("loose" in n for n in table.notes)


def test_zip_junk_members_are_ignored(tmp_path, cfg):
    root = tmp_path / "shemo"
    root.mkdir()
    with zipfile.ZipFile(root / "female.zip", "w") as z:
        z.writestr("female/F01A01.wav", fakes.audio_bytes())
        z.writestr("__MACOSX/female/._F01A01.wav", b"junk")
        z.writestr("female/readme.txt", b"text")
    table = load_corpus(cfg(name="shemo", root=str(root)))
    assert [u.key for u in table.utterances] == ["F01A01"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("F1A01.wav", r"F1A01\.wav: not a ShEMO file name \(expected gender F/M, 2-digit speaker"),
        ("X01A01.wav", r"X01A01\.wav: not a ShEMO file name"),
        ("F01A1.wav", r"F01A1\.wav: not a ShEMO file name"),
        ("F01Q01.wav", r"F01Q01\.wav: unknown ShEMO emotion letter 'Q' \(known: A anger, H happiness, N neutral"),
    ],
)
def test_bad_file_names_name_the_file(tmp_path, cfg, name, message):
    root = fakes.make_shemo(tmp_path / "shemo", ["F01A01.wav", name])
    with pytest.raises(ValueError, match=message):
        load_corpus(cfg(name="shemo", root=str(root)))


def test_duplicate_clip_names_are_refused(tmp_path, cfg):
    root = fakes.make_shemo(tmp_path / "shemo", ["F01A01.wav"])
    fakes.write_audio(root / "copy" / "F01A01.wav")
    with pytest.raises(ValueError, match="F01A01 appears twice"):
        load_corpus(cfg(name="shemo", root=str(root)))


def test_missing_root_and_empty_root(tmp_path, cfg):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_corpus(cfg(name="shemo", root=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no ShEMO wav files"):
        load_corpus(cfg(name="shemo", root=str(tmp_path / "empty")))
