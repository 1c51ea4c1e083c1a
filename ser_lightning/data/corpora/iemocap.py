"""IEMOCAP (licensed; bring your own copy): 5 sessions x 2 speakers, 16 kHz.

Layout: `root` is `IEMOCAP_full_release` (or the folder that contains it):
`Session{n}/dialog/EmoEvaluation/<dialog>.txt` holds one summary line per utterance,
`[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`; every other line (the
`% [START_TIME - END_TIME] ...` header, blank lines, per-evaluator `C-E1:` / `A-E1:` lines) is ignored, and so
are the Attribute / Categorical / Self-evaluation subfolders. Audio: `Session{n}/sentences/wav/<dialog>/<utt>.wav`;
a listed utterance whose wav is missing stays in the table and is handled by the bad-audio policy.

Labels (4-class protocol): neu -> neutral, hap -> happy (+ exc when `merge_excited`, the default), sad -> sad,
ang -> angry. Everything else (fru sur fea dis oth xxx, and exc when not merged) is counted in `excluded` per
label. `subset`: improvised (dialogs `*_impro*`, the paper's default), scripted (`*_script*`) or all.

Speaker: session + the gender letter that starts the utterance id's last field ("Ses01F_impro01_M000" ->
"Ses01M"). Folds: leave one session out; fold n tests Ses0nF and Ses0nM.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

from ser_lightning.data.corpora.base import CorpusTable, Utterance, register

CLASS_NAMES = ["neutral", "happy", "sad", "angry"]
LABELS = {"neu": "neutral", "hap": "happy", "sad": "sad", "ang": "angry"}
KNOWN_LABELS = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")
SUBSETS = {"improvised": "_impro", "scripted": "_script", "all": ""}
FOLDS = {n: [f"Ses{n:02d}F", f"Ses{n:02d}M"] for n in range(1, 6)}
# a summary line: [start - end] <tab> utterance id <tab> label <tab> [v, a, d]
LINE_RE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)\s+\[")
UTT_RE = re.compile(r"^Ses(\d{2})[FM]_\S*_([FM])\d+$")


def find_release(root: str) -> Path:
    """`IEMOCAP_full_release` itself, or the folder that contains it."""
    base = Path(root).expanduser()
    for candidate in (base, base / "IEMOCAP_full_release"):
        if any((candidate / f"Session{n}").is_dir() for n in range(1, 6)):
            return candidate
    raise FileNotFoundError(
        f"IEMOCAP root {base}: expected IEMOCAP_full_release (with Session1 .. Session5 inside) or its parent folder"
    )


def speaker_of(utt: str, where: str) -> str:
    """'Ses01F_impro01_M000' -> 'Ses01M' (session + gender of the last field); ValueError naming `where`."""
    m = UTT_RE.match(utt)
    if not m:
        raise ValueError(
            f"{where}: cannot read the speaker of utterance '{utt}' (expected e.g. Ses01F_impro01_F000: "
            "session, then a last field that starts with the speaker's gender F/M)"
        )
    return f"Ses{m.group(1)}{m.group(2)}"


@register("iemocap")
def load(root: str, subset: str = "improvised", merge_excited: bool = True, **_: object) -> CorpusTable:
    if subset not in SUBSETS:
        raise ValueError(f"iemocap: subset={subset!r} is not one of: {', '.join(SUBSETS)}")
    release = find_release(root)
    labels = dict(LABELS, **({"exc": "happy"} if merge_excited else {}))
    utterances: List[Utterance] = []
    excluded: Dict[str, int] = {}
    seen: Dict[str, str] = {}
    sessions = sorted(p for p in release.glob("Session[1-5]") if p.is_dir())
    for session in sessions:
        session_no = int(session.name[len("Session") :])
        eval_dir = session / "dialog" / "EmoEvaluation"
        for txt in sorted(eval_dir.glob("*.txt")):
            if txt.name.startswith("."):  # AppleDouble `._*.txt` files in some copies
                continue
            dialog = txt.stem
            wanted = SUBSETS[subset] in dialog
            for lineno, line in enumerate(txt.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                m = LINE_RE.match(line)
                if not m:
                    continue
                utt, raw = m.group(1), m.group(2)
                where = f"{txt}:{lineno}"
                if raw not in KNOWN_LABELS:
                    raise ValueError(f"{where}: unknown IEMOCAP label '{raw}' for {utt} (known: {', '.join(KNOWN_LABELS)})")
                speaker = speaker_of(utt, where)
                if int(speaker[3:5]) != session_no:
                    raise ValueError(f"{where}: utterance {utt} belongs to session {speaker[3:5]}, not {session.name}")
                if utt in seen:
                    raise ValueError(f"{where}: utterance {utt} is listed twice (also in {seen[utt]})")
                seen[utt] = where
                if not wanted:
                    key = f"not in subset {subset}"
                    excluded[key] = excluded.get(key, 0) + 1
                    continue
                if raw not in labels:
                    key = f"label {raw}"
                    excluded[key] = excluded.get(key, 0) + 1
                    continue
                wav = session / "sentences" / "wav" / dialog / f"{utt}.wav"
                utterances.append(Utterance(str(wav.resolve()), labels[raw], speaker, utt))
    if not seen:
        raise FileNotFoundError(f"{release}: no utterance lines in Session*/dialog/EmoEvaluation/*.txt")
    notes = [f"subset={subset}, merge_excited={merge_excited}"]
    return CorpusTable("iemocap", utterances, list(CLASS_NAMES), folds=dict(FOLDS), excluded=excluded, notes=notes)
