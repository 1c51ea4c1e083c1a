"""IEMOCAP loader: EmoEvaluation parsing, 4-class mapping, exc merge switch, subsets, speakers, session folds."""

from __future__ import annotations

import fakes
import pytest

from ser_lightning.data.corpora import iemocap
from ser_lightning.data.folds import make_split
from ser_lightning.data.table import build_table, load_corpus


def test_improvised_four_classes_with_excited_merged(iemocap_release, cfg):
    table = load_corpus(cfg(name="iemocap", root=str(iemocap_release)))
    assert table.class_names == ["neutral", "happy", "sad", "angry"]
    # per session: neu 2, hap 1 + exc 2, sad 2, ang 2 (fakes.IEMOCAP_IMPRO)
    assert table.counts() == {"neutral": 10, "happy": 15, "sad": 10, "angry": 10}
    assert table.excluded == {"label fru": 5, "label xxx": 5, "label sur": 5, "not in subset improvised": 30}
    assert all("_impro" in u.key for u in table.utterances)


def test_merge_excited_switch(iemocap_release, cfg):
    table = load_corpus(cfg(name="iemocap", root=str(iemocap_release), merge_excited=False))
    assert table.counts() == {"neutral": 10, "happy": 5, "sad": 10, "angry": 10}
    assert table.excluded["label exc"] == 10


def test_subsets(iemocap_release, cfg):
    scripted = load_corpus(cfg(name="iemocap", root=str(iemocap_release), subset="scripted"))
    assert all("_script" in u.key for u in scripted.utterances)
    assert scripted.counts() == {"neutral": 5, "happy": 5, "sad": 0, "angry": 5}
    assert scripted.excluded == {"label dis": 5, "label fea": 5, "label oth": 5, "not in subset scripted": 60}
    everything = load_corpus(cfg(name="iemocap", root=str(iemocap_release), subset="all"))
    assert everything.counts() == {"neutral": 15, "happy": 20, "sad": 10, "angry": 15}
    with pytest.raises(ValueError, match="subset='both' is not one of"):
        load_corpus(cfg(name="iemocap", root=str(iemocap_release), subset="both"))


def test_speakers_paths_and_parent_root(iemocap_release, cfg):
    # the parent of IEMOCAP_full_release works as root too
    table = load_corpus(cfg(name="iemocap", root=str(iemocap_release.parent)))
    by_key = {u.key: u for u in table.utterances}
    assert by_key["Ses01F_impro01_F000"].speaker == "Ses01F"
    assert by_key["Ses01F_impro01_M000"].speaker == "Ses01M"  # gender of the last field, not of the dialog
    assert by_key["Ses04M_impro02_F003"].speaker == "Ses04F"
    assert by_key["Ses02F_impro01_M001"].label == "happy"  # exc merged
    assert by_key["Ses01F_impro01_F000"].path.endswith("Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav")
    assert table.speakers() == [f"Ses0{n}{g}" for n in range(1, 6) for g in "FM"]


def test_leave_one_session_out_folds(iemocap_release, cfg):
    table = load_corpus(cfg(name="iemocap", root=str(iemocap_release)))
    assert table.folds == {n: [f"Ses0{n}F", f"Ses0{n}M"] for n in range(1, 6)}
    for fold in range(1, 6):
        split = make_split(table, fold, val_speakers=2, seed=0)
        assert split.test_speakers == [f"Ses0{fold}F", f"Ses0{fold}M"]
        assert not set(split.val_speakers) & set(split.test_speakers)
        assert all(not s.startswith(f"Ses0{fold}") for s in split.train_speakers + split.val_speakers)
    assert make_split(table, 3).test_speakers == ["Ses03F", "Ses03M"]


def test_table_builds_and_missing_wav_goes_to_the_audio_policy(tmp_path, cfg):
    release = fakes.make_iemocap(tmp_path / "corpus", sessions=(1, 2), missing=["Ses02F_impro01_F002"])
    table = load_corpus(cfg(name="iemocap", root=str(release)))
    assert any(u.key == "Ses02F_impro01_F002" for u in table.utterances)  # listed: kept in the table
    with pytest.raises(ValueError, match=r"Ses02F_impro01_F002\.wav: file not found"):
        build_table(cfg(name="iemocap", root=str(release)))
    t = build_table(cfg(name="iemocap", root=str(release), on_bad_audio="skip"), report_dir=tmp_path / "r")
    assert len(t.dataset) == 17 and len(t.bad_audio) == 1
    assert t.bad_audio[0]["reason"] == "file not found"


def test_unknown_label_names_file_and_line(tmp_path, cfg):
    release = fakes.make_iemocap(tmp_path / "corpus", sessions=(1,))
    txt = release / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    txt.write_text(txt.read_text().replace("\tsad\t", "\tsadd\t", 1))
    with pytest.raises(ValueError, match=r"Ses01F_impro01\.txt:\d+: unknown IEMOCAP label 'sadd'.*known: neu, hap, exc"):
        load_corpus(cfg(name="iemocap", root=str(release)))


def test_unparsable_speaker_names_file_and_utterance(tmp_path, cfg):
    release = fakes.make_iemocap(tmp_path / "corpus", sessions=(1,))
    txt = release / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    txt.write_text(txt.read_text().replace("Ses01F_impro01_F000", "Ses01F_impro01_X000"))
    with pytest.raises(ValueError, match=r"Ses01F_impro01\.txt:\d+: cannot read the speaker of utterance 'Ses01F_impro01_X000'"):
        load_corpus(cfg(name="iemocap", root=str(release)))


def test_not_a_release(tmp_path, cfg):
    with pytest.raises(FileNotFoundError, match="expected IEMOCAP_full_release"):
        load_corpus(cfg(name="iemocap", root=str(tmp_path)))


def test_summary_line_parser_ignores_evaluator_lines():
    assert iemocap.LINE_RE.match("[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]").groups() == (
        "Ses01F_impro01_F000",
        "neu",
    )
    for line in ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", "", "C-E1:\tNeutral;\t()",
                 "A-E1:\tval 3; act 2; dom  2;\t()"]:  # fmt: skip
        assert iemocap.LINE_RE.match(line) is None
