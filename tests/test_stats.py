"""`ser data stats`: per-fold, per-split counts on a fake IEMOCAP and a fake folder corpus."""

from __future__ import annotations

import json

import fakes

from ser_lightning.run.stats import data_stats, format_stats


def test_iemocap_stats_per_fold_and_split(iemocap_release, cfg, tmp_path):
    stats = data_stats(cfg(name="iemocap", root=str(iemocap_release)), val_speakers=2, seed=0, report_dir=tmp_path / "r")
    json.dumps(stats)  # JSON-ready
    assert stats["class_names"] == ["neutral", "happy", "sad", "angry"]
    assert stats["overall"]["counts"] == {"neutral": 10, "happy": 15, "sad": 10, "angry": 10}
    assert stats["overall"]["speakers"] == 10 and stats["skipped"] == 0 and stats["cropped"] == 0
    assert stats["excluded"]["label fru"] == 5
    assert [f["fold"] for f in stats["folds"]] == [1, 2, 3, 4, 5]
    for f in stats["folds"]:
        n = f["fold"]
        test = f["test"]
        assert test["speaker_ids"] == [f"Ses0{n}F", f"Ses0{n}M"]
        # per session: neu 2, hap 3 (1 + 2 exc), sad 2, ang 2; F speaks 5 of the 9, M 4
        assert test["counts"] == {"neutral": 2, "happy": 3, "sad": 2, "angry": 2}
        assert test["clips_per_speaker"] == {f"Ses0{n}F": 5, f"Ses0{n}M": 4}
        assert f["val"]["speakers"] == 2 and f["train"]["speakers"] == 6
        assert f["train"]["clips"] + f["val"]["clips"] + test["clips"] == 45
        assert abs(test["duration_total_s"] - 9 * 0.3) < 0.01 and abs(test["duration_mean_s"] - 0.3) < 0.001
    text = format_stats(stats)
    lines = text.splitlines()
    assert lines[0].startswith("corpus iemocap: 45 clips, 10 speakers, 5 folds; skipped 0, cropped 0")
    header = lines[1].split()
    assert header[:8] == ["fold", "split", "clips", "spk", "clips/spk", "hours", "mean", "s"]
    assert header[-4:] == ["neutral", "happy", "sad", "angry"]
    assert len(lines[1]) == len(lines[3])  # fixed width
    row = next(li for li in lines if li.split()[:2] == ["3", "test"])
    assert row.split()[2:5] == ["9", "2", "4-5"] and row.split()[-4:] == ["2", "3", "2", "2"]
    assert any(li.startswith("all") for li in lines)
    assert "excluded: label fru: 5" in text


def test_stats_with_auto_folds_and_missing_class_warning(tmp_path, cfg):
    root = fakes.make_folder(tmp_path / "set", speakers=("a1", "a2", "a3", "a4"), labels=("calm", "loud"))
    fakes.make_folder(tmp_path / "set", speakers=("a5",), labels=("rare",))
    stats = data_stats(cfg(name="folder", root=str(root)), num_folds=5, val_speakers=1, seed=0)
    assert len(stats["folds"]) == 5
    assert all(len(f["test"]["speaker_ids"]) == 1 for f in stats["folds"])
    rare_fold = next(f for f in stats["folds"] if f["test"]["speaker_ids"] == ["a5"])
    assert rare_fold["train"]["missing_classes"] == ["rare"]
    text = format_stats(stats)
    assert f"WARNING fold {rare_fold['fold']} train split has no rare" in text
    # said up front, with the fold count that would work: 'rare' has one speaker, so none does
    assert "5 folds cannot each hold every class: calm (4 speakers), loud (4 speakers), rare (1 speaker)" in text
    assert "no speaker-independent fold count can give every test fold every class" in text
