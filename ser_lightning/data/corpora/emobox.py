"""EmoBox metadata (32 corpora share it): `data/<ds>/<ds>.jsonl`, `data/<ds>/fold_<k>/<ds>_{train,test}_fold_<k>.jsonl`
and `data/<ds>/label_map.json`.

Options: `manifest` (or `root`) points at the `data/<ds>` folder (or at `<ds>.jsonl` in it). Each jsonl line is
an object with key, dataset, wav, type, sample_rate, num_frame, task, length, emo, channel. Relative `wav`
paths are resolved against `audio_root`, by default the EmoBox checkout that holds `data/` (EmoBox expects
the audio under `<checkout>/downloads/...`). Only `type: raw`, whole-file entries are supported (entries with
start_time / end_time are refused, naming the key).

Labels: `emo` mapped through label_map.json (raw label -> name; a raw label missing from the map is an error
naming the key; without label_map.json the raw labels are the names). Class order: the order of the names in
label_map.json, keeping the classes that occur.

Folds and speakers: the folds are EmoBox's, read from the test files (fold k tests the keys of
`<ds>_test_fold_<k>.jsonl`; a key in two test files, or in the train and test file of one fold, is an error).
EmoBox jsonl has no speaker field in general, so the speaker id is:
- the object's `speaker_column` field (default "speaker") when every line has it; the official folds must
  then keep each speaker in one test fold;
- otherwise the fold membership itself: every key of fold k's test set gets the speaker-group id
  `fold<k>-group` (keys in no test fold get `no-test-fold-group`). EmoBox's folds are speaker-independent, so
  these groups are too; the price is that validation "speakers" drawn by folds.make_split are whole folds
  (with 6 folds and data.val_speakers=2, 2 of the 5 training folds validate; data.val_speakers=1 keeps more
  training data). A corpus with a single official split (one fold) cannot get a speaker-independent
  validation split this way: give it a speaker field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from ser_lightning.data.corpora.base import CorpusTable, Utterance, register

NO_FOLD_GROUP = "no-test-fold-group"


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
        if not isinstance(obj, dict) or "key" not in obj:
            raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'key' field")
        rows.append(obj)
    return rows


def find_dataset_dir(location: str) -> Path:
    """The `data/<ds>` folder from the folder itself or from its `<ds>.jsonl`."""
    p = Path(location).expanduser()
    if p.is_file() and p.suffix == ".jsonl":
        p = p.parent
    if not (p / f"{p.name}.jsonl").is_file():
        raise FileNotFoundError(f"EmoBox: {p} is not an EmoBox data/<ds> folder (expected {p.name}.jsonl inside it)")
    return p


def _fold_keys(ds_dir: Path, ds: str) -> Dict[int, Set[str]]:
    """fold -> test keys, checking that no key is tested twice and no fold trains on its own test keys."""
    folds: Dict[int, Set[str]] = {}
    owner: Dict[str, int] = {}
    for fold_dir in sorted(ds_dir.glob("fold_*")):
        suffix = fold_dir.name[len("fold_") :]
        if not (fold_dir.is_dir() and suffix.isdigit()):
            continue
        k = int(suffix)
        test_file = fold_dir / f"{ds}_test_fold_{k}.jsonl"
        if not test_file.is_file():
            raise FileNotFoundError(f"EmoBox: {fold_dir} has no {test_file.name}")
        keys = {str(r["key"]) for r in _read_jsonl(test_file)}
        for key in keys:
            if key in owner:
                raise ValueError(f"EmoBox {ds}: key {key} is in the test sets of folds {owner[key]} and {k}: folds must be disjoint")
            owner[key] = k
        train_file = fold_dir / f"{ds}_train_fold_{k}.jsonl"
        if train_file.is_file():
            both = sorted(keys & {str(r["key"]) for r in _read_jsonl(train_file)})
            if both:
                raise ValueError(f"EmoBox {ds} fold {k}: {len(both)} key(s) in both train and test, e.g. {both[:3]}")
        folds[k] = keys
    if not folds:
        raise FileNotFoundError(f"EmoBox: {ds_dir} has no fold_<k>/{ds}_test_fold_<k>.jsonl files")
    return folds


@register("emobox")
def load(
    root: Optional[str] = None,
    manifest: Optional[str] = None,
    audio_root: Optional[str] = None,
    speaker_column: str = "speaker",
    **_: object,
) -> CorpusTable:
    location = manifest or root
    if not location:
        raise ValueError("emobox: set data.manifest (or data.root) to an EmoBox data/<ds> folder")
    ds_dir = find_dataset_dir(str(location))
    ds = ds_dir.name
    rows = _read_jsonl(ds_dir / f"{ds}.jsonl")
    label_map_file = ds_dir / "label_map.json"
    label_map: Optional[Dict[str, str]] = None
    if label_map_file.is_file():
        label_map = {str(k): str(v) for k, v in json.loads(label_map_file.read_text(encoding="utf-8")).items()}
    base = Path(audio_root).expanduser() if audio_root else ds_dir.resolve().parent.parent
    fold_keys = _fold_keys(ds_dir, ds)
    fold_of = {key: k for k, keys in fold_keys.items() for key in keys}
    all_keys = {str(r["key"]) for r in rows}
    for k, keys in fold_keys.items():
        unknown = sorted(keys - all_keys)
        if unknown:
            raise ValueError(f"EmoBox {ds} fold {k}: {len(unknown)} test key(s) not in {ds}.jsonl, e.g. {unknown[:3]}")
    has_speaker = bool(rows) and all(speaker_column in r for r in rows)
    utterances: List[Utterance] = []
    seen: Set[str] = set()
    for r in rows:
        key = str(r["key"])
        where = f"{ds_dir / (ds + '.jsonl')}: key {key}"
        if key in seen:
            raise ValueError(f"{where}: listed twice")
        seen.add(key)
        if r.get("type", "raw") != "raw":
            raise ValueError(f"{where}: type {r.get('type')!r} is not supported (only raw audio)")
        if "start_time" in r or "end_time" in r:
            raise ValueError(f"{where}: segment entries (start_time / end_time) are not supported")
        if "wav" not in r or "emo" not in r:
            raise ValueError(f"{where}: needs 'wav' and 'emo' fields")
        raw = str(r["emo"])
        if label_map is not None and raw not in label_map:
            raise ValueError(f"{where}: label '{raw}' is not in {label_map_file} (known: {', '.join(label_map)})")
        label = label_map[raw] if label_map is not None else raw
        wav = Path(str(r["wav"])).expanduser()
        path = wav if wav.is_absolute() else base / wav
        if has_speaker:
            speaker = str(r[speaker_column])
        else:
            speaker = f"fold{fold_of[key]}-group" if key in fold_of else NO_FOLD_GROUP
        utterances.append(Utterance(str(path), label, speaker, key))
    if not utterances:
        raise ValueError(f"EmoBox: {ds_dir / (ds + '.jsonl')} lists no utterances")
    notes: List[str] = []
    if has_speaker:
        speaker_of = {u.key: u.speaker for u in utterances}
        folds = {k: sorted({speaker_of[key] for key in keys}) for k, keys in fold_keys.items()}
        tested: Dict[str, int] = {}
        for k, speakers in folds.items():
            for s in speakers:
                if s in tested:
                    raise ValueError(
                        f"EmoBox {ds}: speaker {s} is tested in folds {tested[s]} and {k}: the folds are not "
                        f"speaker-independent by field '{speaker_column}'"
                    )
                tested[s] = k
        notes.append(f"speakers from the '{speaker_column}' field")
    else:
        folds = {k: [f"fold{k}-group"] for k in fold_keys}
        notes.append("no speaker field: each fold's test set is one speaker group (fold<k>-group)")
        if len(fold_keys) == 1:
            notes.append("single official split: validation speakers cannot be drawn without a speaker field")
    present = {u.label for u in utterances}
    order = list(dict.fromkeys(label_map.values())) if label_map is not None else sorted(present)
    class_names = [c for c in order if c in present]
    return CorpusTable("emobox-" + ds, utterances, class_names, folds=folds, notes=notes)
