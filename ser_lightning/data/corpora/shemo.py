"""ShEMO (Sharif Emotional Speech Database, Persian): 3000 clips, 87 speakers (F01-F31, M01-M56), 44.1 kHz.

Layout: either the official `female.zip` and `male.zip` in `root` (members are read in place as
`root/female.zip::<member>`, nothing is unpacked) or wav files anywhere under `root` (e.g. `female/F01A01.wav`).
When both exist, loose files win and the zips only add the clips not found loose (a partial unpack works).

File name: gender letter F/M, 2-digit speaker, emotion letter, 2-digit index: `F01A01.wav`. Speaker id =
gender + number ("F01"). Emotion letters: A anger, H happiness, N neutral, S sadness, W surprise, F fear.

Classes: the loader returns all six (fear last) and the paper's 5-class default (fear dropped, counted in
`excluded`); `data.classes=[anger,happiness,neutral,sadness,surprise,fear]` keeps all six,
`[anger,happiness,neutral,sadness]` gives the common 4-class setting.

Folds: the paper's 10 speaker-group folds (`FOLDS`): fold k (1..6) tests F(3k-2..3k) and M(6k-5..6k); fold 7
F19-F21 + M37-M41; fold 8 F22-F24 + M42-M46; fold 9 F25-F27 + M47-M51; fold 10 F28-F31 + M52-M56.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, List, Tuple

from ser_lightning.audio import ZIP_SEPARATOR
from ser_lightning.data.corpora.base import CorpusTable, Utterance, register

EMOTIONS = {"A": "anger", "H": "happiness", "N": "neutral", "S": "sadness", "W": "surprise", "F": "fear"}
CLASS_NAMES = list(EMOTIONS.values())  # fear last: the 5 first are the default
DEFAULT_CLASSES = ["anger", "happiness", "neutral", "sadness", "surprise"]  # the paper: fear dropped
ZIP_NAMES = ("female.zip", "male.zip")
NAME_RE = re.compile(r"^([FM])(\d{2})([A-Za-z])(\d{2})$")


def _speaker_range(gender: str, first: int, last: int) -> List[str]:
    return [f"{gender}{i:02d}" for i in range(first, last + 1)]


def _folds() -> Dict[int, List[str]]:
    groups = {k: ((3 * k - 2, 3 * k), (6 * k - 5, 6 * k)) for k in range(1, 7)}
    groups.update({7: ((19, 21), (37, 41)), 8: ((22, 24), (42, 46)), 9: ((25, 27), (47, 51)), 10: ((28, 31), (52, 56))})
    return {k: _speaker_range("F", *f) + _speaker_range("M", *m) for k, (f, m) in groups.items()}


FOLDS = _folds()


def parse_name(name: str, where: str) -> Tuple[str, str]:
    """(label, speaker) from a ShEMO file name; ValueError naming `where` (the file) when it does not parse."""
    stem = PurePosixPath(name).stem
    m = NAME_RE.match(stem)
    if not m:
        raise ValueError(
            f"{where}: not a ShEMO file name (expected gender F/M, 2-digit speaker, emotion letter, "
            "2-digit index, e.g. F01A01.wav)"
        )
    gender, number, letter, _ = m.groups()
    if letter not in EMOTIONS:
        known = ", ".join(f"{k} {v}" for k, v in EMOTIONS.items())
        raise ValueError(f"{where}: unknown ShEMO emotion letter '{letter}' (known: {known})")
    return EMOTIONS[letter], f"{gender}{number}"


def _is_audio_name(name: str) -> bool:
    base = PurePosixPath(name).name
    return base.lower().endswith(".wav") and not base.startswith(".") and "__MACOSX" not in name


def _add(found: Dict[str, str], stem: str, path: str) -> None:
    if stem in found:
        raise ValueError(f"ShEMO clip {stem} appears twice: {found[stem]} and {path}")
    found[stem] = path


@register("shemo")
def load(root: str, **_: object) -> CorpusTable:
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"ShEMO root {base} is not a folder (expected female.zip / male.zip or wav files)")
    loose: Dict[str, str] = {}
    for p in sorted(base.rglob("*")):
        if p.is_file() and _is_audio_name(str(p.relative_to(base))):
            _add(loose, p.stem, str(p.resolve()))
    zipped: Dict[str, str] = {}
    for zip_name in ZIP_NAMES:
        archive = base / zip_name
        if not archive.is_file():
            continue
        try:
            with zipfile.ZipFile(archive) as z:
                members = sorted(i.filename for i in z.infolist() if not i.is_dir())
        except zipfile.BadZipFile as e:
            raise ValueError(f"{archive}: not a readable zip archive ({e})") from None
        for member in members:
            if _is_audio_name(member):
                _add(zipped, PurePosixPath(member).stem, f"{archive.resolve()}{ZIP_SEPARATOR}{member}")
    notes = []
    if loose and zipped:
        extra = sorted(set(zipped) - set(loose))
        notes.append(f"both loose wav files and zips found: {len(loose)} loose clips used, {len(extra)} more read from the zips")
    files = {**zipped, **loose}  # loose files win
    if not files:
        raise FileNotFoundError(f"{base}: no ShEMO wav files (expected female.zip / male.zip or *.wav below it)")
    utterances = []
    for stem in sorted(files):
        path = files[stem]
        label, speaker = parse_name(path.split(ZIP_SEPARATOR)[-1], path)
        utterances.append(Utterance(path, label, speaker, stem))
    in_folds = {s for speakers in FOLDS.values() for s in speakers}
    outside = sorted({u.speaker for u in utterances} - in_folds)
    if outside:
        notes.append(f"speakers {outside} are in no official fold: they only ever train")
    return CorpusTable(
        "shemo", utterances, list(CLASS_NAMES), folds=FOLDS, notes=notes, default_classes=list(DEFAULT_CLASSES)
    )
