"""Output of `ser predict`: the stdout TSV line per file (backslash, tab, newline, CR escaped; non-UTF-8 file
names as \\xNN), the JSON-lines and CSV files of `--out`."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Dict, Sequence

_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_field(value: Any) -> str:
    """A field of the stdout TSV: backslash, tab, newline and carriage return written as \\\\, \\t, \\n, \\r;
    the bytes of a file name that is not valid UTF-8 as \\xNN."""
    return _utf8(str(value).translate(_TSV_ESCAPES)).decode("utf-8", "backslashreplace")


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of a text holding file names: a name that was not valid UTF-8 (os.fsdecode's surrogates) gets
    its original bytes back; any other lone surrogate (e.g. from a JSON manifest) is written as \\udNNN."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def tsv_line(record: Dict[str, Any]) -> str:
    """The stdout line of one record: `path<TAB>label<TAB>p[<TAB>(n windows)]` or `path<TAB>ERROR<TAB>reason`."""
    if record["error"]:
        return f"{tsv_field(record['path'])}\tERROR\t{tsv_field(record['error'])}"
    extra = f"\t({len(record['windows'])} windows)" if len(record["windows"]) > 1 else ""
    return f"{tsv_field(record['path'])}\t{tsv_field(record['label'])}\t{record['probs'][record['label']]:.3f}{extra}"


def to_jsonl(records: Sequence[Dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def to_csv(records: Sequence[Dict[str, Any]], class_names: Sequence[str]) -> str:
    """One row per file (window = "all": the clip's mean over windows) plus one per window of multi-window
    clips (window = 0, 1, ...). Records of a speaker-normalised head add a `speaker` column."""
    buf = io.StringIO()
    w = csv.writer(buf)
    with_speaker = any("speaker" in r for r in records)
    spk = (lambda r: [r.get("speaker") or ""]) if with_speaker else (lambda r: [])
    w.writerow(["path", *(["speaker"] if with_speaker else []), "window", "start", "end", "label", "error",
                *[f"prob_{c}" for c in class_names]])  # fmt: skip
    for r in records:
        probs = r.get("probs") or {}
        w.writerow([r["path"], *spk(r), "all", 0.0 if r.get("duration") is not None else "", r.get("duration") or "",
                    r.get("label") or "", r.get("error") or "", *[probs.get(c, "") for c in class_names]])  # fmt: skip
        if len(r.get("windows") or []) > 1:
            for k, win in enumerate(r["windows"]):
                w.writerow([r["path"], *spk(r), k, win["start"], win["end"], win["label"], "",
                            *[win["probs"][c] for c in class_names]])  # fmt: skip
    return buf.getvalue()

