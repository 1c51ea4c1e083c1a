"""hub loader, offline only: a save_to_disk dataset with embedded bytes and a local json data folder of paths."""

from __future__ import annotations

import json
from pathlib import Path

import fakes
import pytest

from ser_lightning.data.table import build_table, load_corpus

datasets = pytest.importorskip("datasets")


def _saved_dataset(tmp_path: Path, dict_of_splits: bool = False) -> Path:
    rows = {"audio": [], "emotion": [], "spk": []}
    for s in range(4):
        for label in (0, 1, 2):
            data = fakes.audio_bytes(0.3, 16000, 300 + 100 * label, seed=s * 10 + label)
            rows["audio"].append({"bytes": data, "path": f"clip_{s}_{label}.wav"})
            rows["emotion"].append(label)
            rows["spk"].append(f"speaker{s}")
    # the audio column is built as its Arrow storage (bytes, path) and cast to Audio: encoding through the
    # Audio feature would need torchcodec, which this stack does without
    audio_storage = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features(
        {"audio": audio_storage, "emotion": datasets.ClassLabel(names=["calm", "angry", "sad", "bored"]),
         "spk": datasets.Value("string")}  # fmt: skip
    )
    ds = datasets.Dataset.from_dict(rows, features=features).cast_column("audio", datasets.Audio())
    out = tmp_path / "saved"
    (datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}) if dict_of_splits else ds).save_to_disk(str(out))
    return out


def test_save_to_disk_dataset_with_classlabel(tmp_path, cfg):
    saved = _saved_dataset(tmp_path)
    c = cfg(name="hub", root=str(saved), label_column="emotion", speaker_column="spk")
    table = load_corpus(c)
    assert table.class_names == ["calm", "angry", "sad"]  # ClassLabel order; 'bored' has no clips
    assert table.counts() == {"calm": 4, "angry": 4, "sad": 4}
    assert table.speakers() == [f"speaker{s}" for s in range(4)]
    store = Path(c["table_cache_dir"]) / "hub-audio"
    for u in table.utterances:  # plain local files, content-addressed
        p = Path(u.path)
        assert p.is_file() and store in p.parents and p.suffix == ".wav"
    assert len({u.path for u in table.utterances}) == 12
    assert table.utterances[0].key == "clip_0_0"
    t = build_table(c)
    assert len(t.dataset) == 12 and min(t.dataset["duration"]) > 0.29


def test_dataset_dict_split_is_chosen(tmp_path, cfg):
    saved = _saved_dataset(tmp_path, dict_of_splits=True)
    table = load_corpus(cfg(name="hub", root=str(saved), label_column="emotion", speaker_column="spk", hub_split="test"))
    assert len(table.utterances) == 3
    with pytest.raises(ValueError, match="no split 'dev'; splits: train, test"):
        load_corpus(cfg(name="hub", root=str(saved), label_column="emotion", speaker_column="spk", hub_split="dev"))


def test_local_json_folder_with_paths(tmp_path, cfg):
    data_dir = tmp_path / "local"
    data_dir.mkdir()
    lines = []
    for s in range(3):
        for label in ("happy", "sad"):
            wav = fakes.write_audio(tmp_path / "wavs" / f"{s}_{label}.wav", seed=s, freq=300 if label == "sad" else 500)
            lines.append(json.dumps({"audio": str(wav), "label": label, "speaker": f"p{s}"}))
    (data_dir / "train.jsonl").write_text("\n".join(lines) + "\n")
    table = load_corpus(cfg(name="hub", root=str(data_dir)))
    assert table.class_names == ["happy", "sad"]
    assert table.counts() == {"happy": 3, "sad": 3}
    assert {u.key for u in table.utterances} == {f"{s}_{lab}" for s in range(3) for lab in ("happy", "sad")}


def test_missing_column_lists_the_columns(tmp_path, cfg):
    saved = _saved_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"has no column 'speaker' \(data.speaker_column\); columns: audio, emotion, spk"):
        load_corpus(cfg(name="hub", root=str(saved), label_column="emotion"))
