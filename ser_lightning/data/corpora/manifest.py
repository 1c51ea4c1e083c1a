"""Bring-your-own corpora: a manifest file (`manifest`) or a folder per class (`folder`).

`manifest`: a CSV (`.csv`, `.tsv`) or JSONL (`.jsonl`, `.json` with one object per line) file given by
`data.manifest` (or `data.root`), one clip per row with columns
- `path` (falling back to the `audio_column` option's column when there is no `path` column),
- the label (`label_column`, default "label") and the speaker (`speaker_column`, default "speaker"),
- optionally `fold` (1-based integer): the test fold of the row; a speaker in two folds is an error.
Relative paths are resolved against `data.audio_root`, or else the manifest's folder. A path that leaves
that root (`../x.wav`, or an absolute path elsewhere) is refused, naming the row, unless
`data.allow_outside_root=true`. The check is lexical (`..` and absolute paths), symlinks inside the root
are followed as they are.

`folder`: `root/<label>/<file>.{wav,flac,ogg,mp3}` (files may sit in subfolders of the label folder). The
speaker is the file stem's prefix before the first `_` or `-`: `spk03_happy_01.wav` and `spk03-001.wav`
both belong to speaker `spk03`. A stem without such a prefix is an error naming the file: use a manifest
(with a speaker column) for corpora that are named otherwise.

Both: class names sorted alphabetically (data.classes picks and orders a subset). Without a fold column
the folds are made automatically by folds.py (seeded, speaker-independent, k = data.num_folds, default 5).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ser_lightning.data.corpora.base import CorpusTable, Utterance, register

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def _read_rows(path: Path) -> List[Tuple[int, Dict[str, Any]]]:
    """(line number, row) pairs of a CSV/TSV or JSONL manifest."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None:
                raise ValueError(f"{path}: empty manifest (expected a header row)")
            return [(reader.line_num, dict(row)) for row in reader]
    if suffix in (".jsonl", ".json"):
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path} line {lineno}: not valid JSON ({e}); expected one object per line") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path} line {lineno}: expected a JSON object")
            rows.append((lineno, obj))
        return rows
    raise ValueError(f"{path}: unsupported manifest type '{suffix}' (use .csv, .tsv or .jsonl)")


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def resolve_path(value: str, base: Path, allow_outside_root: bool, where: str) -> str:
    """Absolute, normalised path of a manifest entry; ValueError (naming `where`) when it escapes `base`."""
    root = os.path.normpath(os.path.abspath(base))
    raw = os.path.expanduser(value)
    path = os.path.normpath(raw if os.path.isabs(raw) else os.path.join(root, raw))
    if not allow_outside_root and not _inside(path, root):
        raise ValueError(
            f"{where}: path '{value}' is outside the audio root {root}; "
            "fix the path, set data.audio_root, or pass data.allow_outside_root=true"
        )
    return path


def _folds_from_column(rows: List[Tuple[str, int, str]]) -> Dict[int, List[str]]:
    """fold -> speakers from (speaker, fold, where) rows; ValueError when a speaker is in two folds."""
    fold_of: Dict[str, Tuple[int, str]] = {}
    for speaker, fold, where in rows:
        first_fold, first_where = fold_of.setdefault(speaker, (fold, where))
        if first_fold != fold:
            raise ValueError(
                f"{where}: speaker {speaker} is in fold {fold} but also in fold {first_fold} ({first_where}); "
                "folds must be speaker-independent"
            )
    folds: Dict[int, List[str]] = {}
    for speaker, (fold, _) in sorted(fold_of.items()):
        folds.setdefault(fold, []).append(speaker)
    return dict(sorted(folds.items()))


@register("manifest")
def load_manifest(
    root: Optional[str] = None,
    manifest: Optional[str] = None,
    audio_root: Optional[str] = None,
    allow_outside_root: bool = False,
    label_column: str = "label",
    speaker_column: str = "speaker",
    audio_column: str = "audio",
    **_: object,
) -> CorpusTable:
    location = manifest or root
    if not location:
        raise ValueError("manifest: set data.manifest (or data.root) to a CSV or JSONL manifest file")
    path = Path(location).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} is not a file (expected a .csv, .tsv or .jsonl manifest)")
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path}: the manifest has no rows")
    columns = sorted({c for _, r in rows for c in r})
    path_column = "path" if any("path" in r for _, r in rows) else audio_column
    for needed in (path_column, label_column, speaker_column):
        if not any(needed in r for _, r in rows):
            raise ValueError(
                f"{path}: no '{needed}' column; columns are: {', '.join(columns)} "
                "(set data.label_column / data.speaker_column)"
            )
    base = Path(audio_root).expanduser() if audio_root else path.resolve().parent
    has_fold = any(r.get("fold") not in (None, "") for _, r in rows)
    utterances: List[Utterance] = []
    fold_rows: List[Tuple[str, int, str]] = []
    first_row: Dict[str, Tuple[str, str, str]] = {}  # resolved path -> (where, label, speaker) of its first row
    duplicates: List[str] = []
    for lineno, r in rows:
        where = f"{path} line {lineno}"
        values = {c: r.get(c) for c in (path_column, label_column, speaker_column)}
        empty = [c for c, v in values.items() if v is None or str(v).strip() == ""]
        if empty:
            raise ValueError(f"{where}: empty {', '.join(empty)}")
        audio = resolve_path(str(values[path_column]).strip(), base, allow_outside_root, where)
        label, speaker = str(values[label_column]).strip(), str(values[speaker_column]).strip()
        if audio in first_row:
            # the same clip twice: a repeated row is dropped (and reported: it would be scored twice); the same
            # clip with another label or speaker is a contradiction only the user can resolve
            first_where, first_label, first_speaker = first_row[audio]
            if (first_label, first_speaker) != (label, speaker):
                raise ValueError(f"{where}: {audio} is labelled {label!r} (speaker {speaker}) but {first_where} labels it "
                                 f"{first_label!r} (speaker {first_speaker}); keep one row per clip")  # fmt: skip
            duplicates.append(f"{where} repeats {first_where}")
            continue
        first_row[audio] = (where, label, speaker)
        utterances.append(Utterance(audio, label, speaker, Path(audio).stem))
        if has_fold:
            try:
                fold = int(str(r.get("fold")).strip())
            except ValueError:
                raise ValueError(f"{where}: fold {r.get('fold')!r} is not an integer (1-based)") from None
            if fold < 1:
                raise ValueError(f"{where}: fold {fold} must be >= 1")
            fold_rows.append((speaker, fold, where))
    folds = _folds_from_column(fold_rows) if has_fold else None
    class_names = sorted({u.label for u in utterances})
    excluded = {"duplicate manifest row": len(duplicates)} if duplicates else {}
    notes = [f"{len(duplicates)} duplicate row(s) dropped (each clip is used once): " + "; ".join(duplicates[:10])
             + (" ..." if len(duplicates) > 10 else "")] if duplicates else []  # fmt: skip
    if duplicates:
        print(f"[ser] {path}: {notes[0]}")
    return CorpusTable(f"manifest-{path.stem}", utterances, class_names, folds=folds, excluded=excluded, notes=notes)


def speaker_from_stem(path: Path) -> str:
    """The stem's prefix before the first '_' or '-'; ValueError naming the file when there is none."""
    stem = path.stem
    cuts = [i for i in (stem.find("_"), stem.find("-")) if i > 0]
    if not cuts:
        raise ValueError(
            f"{path}: cannot read a speaker from the file name (the folder corpus expects <speaker>_<anything> "
            "or <speaker>-<anything>, e.g. spk03_happy_01.wav); use a manifest with a speaker column instead"
        )
    return stem[: min(cuts)]


@register("folder")
def load_folder(root: str, **_: object) -> CorpusTable:
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"folder corpus root {base} is not a folder (expected <root>/<label>/<file>.wav)")
    utterances = []
    for label_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(label_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES and not f.name.startswith("."):
                utterances.append(Utterance(str(f.resolve()), label_dir.name, speaker_from_stem(f), f.stem))
    if not utterances:
        raise FileNotFoundError(f"{base}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in <root>/<label>/ folders")
    return CorpusTable(f"folder-{base.name}", utterances, sorted({u.label for u in utterances}))
