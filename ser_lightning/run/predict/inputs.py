"""Inputs of `ser predict`: audio files, folders (searched recursively) and manifests (.csv/.tsv/.jsonl with a
path column) expanded into (path, error) rows, a manifest's relative paths resolved against `--audio-root` (or
its folder) and kept inside that root unless --allow-outside-root."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl")
PATH_COLUMNS = ("path", "audio", "wav")


def _manifest_rows(path: Path) -> List[Tuple[int, Dict[str, Any]]]:
    """(line number, row) pairs of a manifest; ValueError naming the file when it cannot be read."""
    try:
        if path.suffix.lower() == ".jsonl":
            rows = []
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except ValueError as e:
                        raise ValueError(f"{path} line {lineno}: not valid JSON ({e})") from None
                    rows.append((lineno, obj if isinstance(obj, dict) else {}))
            return rows
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            return [(reader.line_num, dict(row)) for row in reader]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: unreadable manifest (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except (OSError, csv.Error) as e:
        raise ValueError(f"{path}: unreadable manifest ({e})") from None


def expand_inputs(items: Sequence[str], allow_outside_root: bool = False,
                  speakers: Optional[Dict[str, str]] = None,
                  audio_root: Optional[str | Path] = None) -> List[Tuple[str, Optional[str]]]:  # fmt: skip
    """(path, error) for every clip named by files, folders and manifests, in the order given. `speakers`, when
    given, receives path -> speaker for manifest rows with a non-empty `speaker` column. A manifest's relative
    paths are resolved against `audio_root` (training's data.audio_root) when given, else the manifest's folder;
    a path leaving that root is an error row unless `allow_outside_root`. A manifest that cannot be read is
    one error row (the other inputs are still used)."""
    from ser_lightning.data.corpora.manifest import resolve_path

    root = Path(audio_root).expanduser().resolve() if audio_root else None

    out: List[Tuple[str, Optional[str]]] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                out.append((item, f"folder has no audio files ({', '.join(AUDIO_SUFFIXES)})"))
            out += [(f, None) for f in found]
        elif p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file():
            try:
                rows = _manifest_rows(p)
            except ValueError as e:
                out.append((item, str(e)))
                continue
            column = next((c for c in PATH_COLUMNS if any(c in r for _, r in rows)), None)
            if column is None:
                out.append((item, f"{p}: no path column (expected one of: {', '.join(PATH_COLUMNS)})"))
                continue
            base = root or p.resolve().parent
            outside = (f"is outside --audio-root {base}" if root else f"is outside the manifest's folder {base}")
            for lineno, row in rows:
                value = str(row.get(column) or "").strip()
                where = f"{p} line {lineno}"
                if not value:
                    out.append((where, f"empty {column}"))
                    continue
                try:
                    out.append((resolve_path(value, base, allow_outside_root, where), None))
                    if speakers is not None and str(row.get("speaker") or "").strip():
                        speakers[out[-1][0]] = str(row["speaker"]).strip()
                except ValueError:
                    out.append((value, f"{where}: '{value}' {outside} (pass --allow-outside-root to allow it)"))
        else:
            out.append((item, None))  # a missing / unreadable file becomes an error row when decoded
    return out

