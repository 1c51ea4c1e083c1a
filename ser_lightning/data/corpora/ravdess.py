"""RAVDESS speech: `Actor_XX/03-01-EE-II-SS-RR-AA.{wav,flac}` (modality-channel-emotion-intensity-statement-
repetition-actor). 8 classes, 24 actors; EmoBox's 6 speaker-independent folds."""

from __future__ import annotations

from pathlib import Path

from ser_lightning.data.corpora.base import CorpusTable, Utterance, register

EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}  # fmt: skip
# EmoBox speaker-independent split: test actors per fold (protocols.md)
FOLDS = {
    1: [1, 11, 20, 21], 2: [4, 10, 12, 14], 3: [8, 9, 19, 23],
    4: [3, 5, 7, 24], 5: [2, 15, 16, 18], 6: [6, 13, 17, 22],
}  # fmt: skip
AUDIO_SUFFIXES = (".wav", ".flac")


def parse_name(path: Path) -> tuple[str, str]:
    """(label, speaker) from a RAVDESS file name; ValueError naming the file when it does not parse."""
    parts = path.stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() and len(p) == 2 for p in parts):
        raise ValueError(f"{path}: not a RAVDESS name (expected 7 two-digit fields, e.g. 03-01-05-01-02-01-18)")
    if parts[2] not in EMOTIONS:
        raise ValueError(f"{path}: unknown emotion code '{parts[2]}' (known: {', '.join(EMOTIONS)})")
    return EMOTIONS[parts[2]], f"Actor_{parts[6]}"


@register("ravdess")
def load(root: str, **_: object) -> CorpusTable:
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"RAVDESS root {base} is not a folder (expected Actor_01 .. Actor_24 inside)")
    files = sorted(p for p in base.glob("Actor_*/*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{base}: no Actor_*/*.wav or *.flac files")
    utterances = []
    for path in files:
        label, speaker = parse_name(path)
        if path.parent.name != speaker:
            raise ValueError(f"{path}: actor field says {speaker} but the file is in {path.parent.name}")
        utterances.append(Utterance(str(path.resolve()), label, speaker, path.stem))
    folds = {k: [f"Actor_{a:02d}" for a in actors] for k, actors in FOLDS.items()}
    return CorpusTable("ravdess", utterances, list(EMOTIONS.values()), folds=folds)
