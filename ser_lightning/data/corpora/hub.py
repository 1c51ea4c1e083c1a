"""Hugging Face datasets: a hub id, a local dataset folder (parquet / json / audiofolder), or a `save_to_disk` folder.

`root` is what `datasets.load_dataset(root, split=hub_split)` takes (a `save_to_disk` folder is opened with
`datasets.load_from_disk`, a DatasetDict's `hub_split` is used). Columns: `audio_column` (an Audio feature,
or file paths), `label_column` (a ClassLabel's names are used, in their order; other values as strings) and
`speaker_column` (required: folds are speaker-independent); a missing column is an error listing the columns.

The audio column is cast to `datasets.Audio(decode=False)`, so nothing is decoded by datasets (no torchcodec
or FFmpeg): each clip's bytes (or the file its path names) are written once, content-addressed by SHA-256,
under `<table_cache_dir>/hub-audio/`, and the rest of the pipeline reads those plain files. Folds: made
automatically by folds.py (seeded speaker folds, k = data.num_folds, default 5).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, List, Optional

from ser_lightning.data.corpora.base import CorpusTable, Utterance, register
from ser_lightning.utils.io import atomic_write_bytes

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def _open(root: str, split: str) -> Any:
    import datasets

    local = Path(root).expanduser()
    if (local / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(local))
        if split not in dd:
            raise ValueError(f"hub: {root} has no split '{split}'; splits: {', '.join(dd)} (set data.hub_split)")
        return dd[split]
    if (local / "state.json").is_file() and (local / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(local))
    return datasets.load_dataset(str(local) if local.exists() else root, split=split)


def _store(data: bytes, suffix: str, store: Path) -> str:
    digest = hashlib.sha256(data).hexdigest()
    target = store / digest[:2] / f"{digest}{suffix}"
    if not target.is_file() or target.stat().st_size != len(data):
        atomic_write_bytes(target, data)
    return str(target.resolve())


@register("hub")
def load(
    root: str,
    hub_split: str = "train",
    audio_column: str = "audio",
    label_column: str = "label",
    speaker_column: str = "speaker",
    table_cache_dir: Optional[str] = None,
    **_: object,
) -> CorpusTable:
    import datasets

    ds = _open(root, hub_split)
    columns = list(ds.column_names)
    for option, name in (("audio_column", audio_column), ("label_column", label_column), ("speaker_column", speaker_column)):
        if name not in columns:
            raise ValueError(f"hub: {root} [{hub_split}] has no column '{name}' (data.{option}); columns: {', '.join(columns)}")
    label_feature = ds.features[label_column]
    names: Optional[List[str]] = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
    ds = ds.cast_column(audio_column, datasets.Audio(decode=False)).select_columns([audio_column, label_column, speaker_column])
    store = Path(table_cache_dir or ".ser_cache/tables") / "hub-audio"
    utterances = []
    for i, row in enumerate(ds):
        where = f"hub: {root} [{hub_split}] row {i}"
        audio = row[audio_column] or {}
        data, src = audio.get("bytes"), audio.get("path")
        if data is None:
            if not src or not Path(src).is_file():
                raise ValueError(f"{where}: the audio has no bytes and its path {src!r} is not a local file")
            data = Path(src).read_bytes()
        label, speaker = row[label_column], row[speaker_column]
        if label is None or speaker is None or str(speaker).strip() == "":
            raise ValueError(f"{where}: empty {label_column if label is None else speaker_column}")
        if names is not None:
            if not 0 <= int(label) < len(names):
                raise ValueError(f"{where}: label index {label} is not a class of {label_column} ({len(names)} names)")
            label = names[int(label)]
        suffix = Path(src).suffix.lower() if src and Path(src).suffix.lower() in AUDIO_SUFFIXES else ".wav"
        key = Path(src).stem if src else f"{hub_split}-{i:06d}"
        utterances.append(Utterance(_store(bytes(data), suffix, store), str(label), str(speaker), key))
    if not utterances:
        raise ValueError(f"hub: {root} [{hub_split}] has no rows")
    present = {u.label for u in utterances}
    class_names = [c for c in names if c in present] if names is not None else sorted(present)
    notes = [f"hub split {hub_split}; audio stored under {store}"]
    if names is not None and len(class_names) < len(names):
        notes.append(f"classes without clips in this split left out: {[c for c in names if c not in present]}")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(root).name if Path(root).exists() else root).strip("_") or "dataset"
    return CorpusTable(f"hub-{safe}", utterances, class_names, notes=notes)
