"""Tiny fake corpora with the real layouts and file names, and deliberately bad audio files.

Audio is synthetic (a class-dependent tone plus a little seeded noise, ~0.3 s), written with soundfile, so a
tiny model can tell the classes apart and every clip has distinct bytes. Nothing here touches the network.

Generators return the path a loader takes as `root` (or `manifest`), and a `data_cfg` helper gives a full
DataConfig dict (every field, as the loaders receive them) with the table cache inside a temp folder.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from ser_lightning.config import DataConfig

# ---------------------------------------------------------------------------------------------- audio


def tone(seconds: float = 0.3, sr: int = 16000, freq: float = 440.0, channels: int = 1, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    """(N,) or (N, channels) float32: a sine at `freq` plus seeded noise."""
    n = max(0, int(round(seconds * sr)))
    t = np.arange(n, dtype=np.float64) / sr
    rng = np.random.default_rng(seed)
    wave = amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(n)
    wave = wave.astype(np.float32)
    if channels > 1:
        wave = np.stack([wave * (1.0 - 0.1 * c) for c in range(channels)], axis=1)
    return wave


def audio_bytes(seconds: float = 0.3, sr: int = 16000, freq: float = 440.0, channels: int = 1, subtype: str = "PCM_16",
                fmt: str = "WAV", seed: int = 0) -> bytes:  # fmt: skip
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, sr, freq, channels, seed), sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def write_audio(path: Path, seconds: float = 0.3, sr: int = 16000, freq: float = 440.0, channels: int = 1,
                subtype: str = "PCM_16", seed: int = 0) -> Path:  # fmt: skip
    """Write a clip; the format follows the suffix (.wav, .flac, .ogg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}[path.suffix.lower()]
    if fmt == "OGG":
        subtype = "VORBIS"
    path.write_bytes(audio_bytes(seconds, sr, freq, channels, subtype, fmt, seed))
    return path


def noise_clips(folder: Path, n: int = 6, step_s: float = 0.3) -> Tuple[Dict[str, str], Dict[str, float]]:
    """n noise clips of 0.5, 0.5 + step_s, ... seconds as folder/clip<i>.wav: ({hash: path}, {hash: seconds}) with
    made-up hashes h0..h{n-1}, what fill_cache takes."""
    rng = np.random.default_rng(0)
    paths, durations = {}, {}
    for i in range(n):
        seconds = 0.5 + step_s * i
        p = Path(folder) / f"clip{i}.wav"
        sf.write(p, (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000)
        paths[f"h{i}"], durations[f"h{i}"] = str(p), seconds
    return paths, durations


def _freq(label: str) -> float:
    return 220.0 + 110.0 * (sum(map(ord, label)) % 11)


# --------------------------------------------------------------------------------------- bad audio
# Each writer makes one kind of bad (or merely unusual) input; BAD_CASES maps the case to (writer, expected
# reason fragment) for unusable files, UNUSUAL_CASES to (writer, expected orig sample rate) for fine ones.


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not audio at all \x00\x01\x02" * 40)
    return path


def write_truncated(path: Path) -> Path:
    """A wav cut in the middle of its data chunk (the header still declares the full length)."""
    data = audio_bytes(0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def write_header_only(path: Path) -> Path:
    """A wav whose header is complete but whose data chunk is empty."""
    data = audio_bytes(0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_cut_header(path: Path) -> Path:
    """A wav cut inside its header (no data chunk at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(audio_bytes(0.3)[:30])
    return path


def write_zero_byte(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_silent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(8000, dtype=np.float32), 16000, subtype="PCM_16")
    return path


def write_short(path: Path) -> Path:
    """50 ms: under the 100 ms minimum."""
    return write_audio(path, seconds=0.05)


def write_text_as_wav(path: Path) -> Path:
    """A text file renamed .wav (the error must name the file, not an in-memory buffer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("speaker,label\nthis is a CSV someone saved as .wav\n")
    return path


def write_nonfinite(path: Path, value: float = float("nan")) -> Path:
    """A float wav with one NaN (or inf) sample among real ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = tone(0.3, 16000, 440.0, 1, 0).astype(np.float32)
    wave[1000] = value
    sf.write(path, wave, 16000, subtype="FLOAT")
    return path


BAD_CASES = {
    "text_as_wav": (write_text_as_wav, "unreadable"),
    "nan": (write_nonfinite, "NaN or infinite"),
    "inf": (lambda p: write_nonfinite(p, float("inf")), "NaN or infinite"),
    "garbage": (write_garbage, "unreadable"),
    "truncated": (write_truncated, "truncated"),
    "header_only": (write_header_only, "no samples"),
    "cut_header": (write_cut_header, "unreadable"),
    "zero_byte": (write_zero_byte, "zero-byte"),
    "silent": (write_silent, "silent"),
    "short": (write_short, "too short"),
}
UNUSUAL_CASES = {
    "stereo": (lambda p: write_audio(p, channels=2), 16000),
    "8khz": (lambda p: write_audio(p, sr=8000), 8000),
    "24bit": (lambda p: write_audio(p, subtype="PCM_24"), 16000),
    "48khz": (lambda p: write_audio(p, sr=48000), 48000),
    "stereo_48khz_24bit": (lambda p: write_audio(p, sr=48000, channels=2, subtype="PCM_24"), 48000),
    "flac": (lambda p: write_audio(p.with_suffix(".flac")), 16000),
}


def write_long(path: Path, seconds: float = 60.0) -> Path:
    return write_audio(path, seconds=seconds)


# ------------------------------------------------------------------------------------------- ShEMO

SHEMO_FEMALE = [f"F{i:02d}" for i in range(1, 32)]
SHEMO_MALE = [f"M{i:02d}" for i in range(1, 57)]
SHEMO_SPEAKERS = SHEMO_FEMALE + SHEMO_MALE


def shemo_names(speakers: Iterable[str] = SHEMO_SPEAKERS, letters: str = "AHNSW", per_letter: int = 1,
                fear_speakers: Sequence[str] = ("F01", "M01")) -> List[str]:  # fmt: skip
    """Real ShEMO file names (F01A01.wav): every speaker gets `letters` x per_letter, fear_speakers one F clip."""
    names = []
    for s in speakers:
        for letter in letters:
            names += [f"{s}{letter}{i:02d}.wav" for i in range(1, per_letter + 1)]
        if s in fear_speakers:
            names.append(f"{s}F01.wav")
    return names


def make_shemo(root: Path, names: Optional[Sequence[str]] = None, zipped: bool = False, sr: int = 44100,
               seconds: float = 0.3) -> Path:  # fmt: skip
    """ShEMO as unpacked `female/*.wav` + `male/*.wav`, or as the official `female.zip` + `male.zip`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = list(names if names is not None else shemo_names())
    archives: Dict[str, zipfile.ZipFile] = {}
    try:
        for i, name in enumerate(names):
            folder = "female" if name.startswith("F") else "male"
            data = audio_bytes(seconds, sr, _freq(name[3]), seed=i)
            if zipped:
                if folder not in archives:
                    archives[folder] = zipfile.ZipFile(root / f"{folder}.zip", "w", zipfile.ZIP_DEFLATED)
                archives[folder].writestr(f"{folder}/{name}", data)
            else:
                (root / folder).mkdir(exist_ok=True)
                (root / folder / name).write_bytes(data)
    finally:
        for z in archives.values():
            z.close()
    return root


# ----------------------------------------------------------------------------------------- IEMOCAP
# (last field of the utterance id, label) per dialog kind; both speakers speak in every dialog, as in the
# real release. Per session: improvised -> neu 2, hap 1 + exc 2, sad 2, ang 2 (+ fru, xxx, sur excluded);
# scripted -> neu 1, ang 1, hap 1 (+ dis, fea, oth excluded).
IEMOCAP_IMPRO = [("F000", "neu"), ("M000", "neu"), ("F001", "hap"), ("M001", "exc"), ("F002", "sad"),
                 ("M002", "sad"), ("F003", "ang"), ("M003", "ang"), ("F004", "fru"), ("M004", "xxx"),
                 ("F005", "exc"), ("M005", "sur")]  # fmt: skip
IEMOCAP_SCRIPT = [("F000", "neu"), ("M000", "ang"), ("F001", "hap"), ("M001", "dis"), ("F002", "fea"), ("M002", "oth")]
EVALUATORS = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "sad": "Sadness", "ang": "Anger",
              "fru": "Frustration", "xxx": "Other", "sur": "Surprise", "dis": "Disgust", "fea": "Fear",
              "oth": "Other"}  # fmt: skip


def emo_evaluation_text(dialog: str, utterances: Sequence[Tuple[str, str]]) -> str:
    """An EmoEvaluation file as the release writes it: header, blank line, then per utterance a summary line,
    per-evaluator categorical (C-E1:) and attribute (A-E1:) lines, and a blank line."""
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    t = 6.2901
    for last, label in utterances:
        utt = f"{dialog}_{last}"
        lines.append(f"[{t:.4f} - {t + 1.9456:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]")
        name = EVALUATORS[label]
        lines += [f"C-E1:\t{name};\t()", f"C-E3:\t{name}; Neutral;\t(a bit {name.lower()})", f"C-F1:\t{name};\t()"]
        lines += ["A-E1:\tval 3; act 2; dom  2;\t()", "A-F1:\tval 3; act 3; dom  3;\t(mildly aggravated)", ""]
        t += 3.5
    return "\n".join(lines) + "\n"


def make_iemocap(root: Path, sessions: Sequence[int] = (1, 2, 3, 4, 5), missing: Sequence[str] = (),
                 seconds: float = 0.3) -> Path:  # fmt: skip
    """`root/IEMOCAP_full_release` with, per session, dialogs Ses0nF_impro01, Ses0nM_impro02 (improvised) and
    Ses0nF_script01_1 (scripted); utterances listed in `missing` get no wav. Returns the release folder."""
    release = Path(root) / "IEMOCAP_full_release"
    for n in sessions:
        session = release / f"Session{n}"
        eval_dir = session / "dialog" / "EmoEvaluation"
        (eval_dir / "Categorical").mkdir(parents=True, exist_ok=True)
        (eval_dir / "Attribute").mkdir(parents=True, exist_ok=True)
        dialogs = {f"Ses{n:02d}F_impro01": IEMOCAP_IMPRO[:6], f"Ses{n:02d}M_impro02": IEMOCAP_IMPRO[6:],
                   f"Ses{n:02d}F_script01_1": IEMOCAP_SCRIPT}  # fmt: skip
        for i, (dialog, utts) in enumerate(dialogs.items()):
            (eval_dir / f"{dialog}.txt").write_text(emo_evaluation_text(dialog, utts))
            # decoys the loader must ignore: per-evaluator files in subfolders, AppleDouble files
            (eval_dir / "Categorical" / f"{dialog}_e1_cat.txt").write_text(f"{dialog}_F000 :Neutral state; ()\n")
            (eval_dir / "Attribute" / f"{dialog}_e1_atr.txt").write_text(f"{dialog}_F000 :act 2; val 3; dom 2; ()\n")
            (eval_dir / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07Mac OS X        ")
            wav_dir = session / "sentences" / "wav" / dialog
            wav_dir.mkdir(parents=True, exist_ok=True)
            for j, (last, label) in enumerate(utts):
                utt = f"{dialog}_{last}"
                if utt not in missing:
                    (wav_dir / f"{utt}.wav").write_bytes(audio_bytes(seconds, 16000, _freq(label), seed=100 * n + 10 * i + j))
    return release


# ------------------------------------------------------------------------------------------ EmoBox

RAVDESS_CODES = {"01": "Neutral", "02": "Calm", "03": "Happy", "04": "Sad", "05": "Angry", "06": "Fearful",
                 "07": "Disgust", "08": "Surprised"}  # fmt: skip
RAVDESS_LABEL_MAP = {"Angry": "Angry", "Surprised": "Surprise", "Sad": "Sad", "Disgust": "Disgust", "Happy": "Happy",
                     "Calm": "Calm", "Neutral": "Neutral", "Fearful": "Fear"}  # fmt: skip
EMOBOX_RAVDESS_FOLDS = {1: [1, 11, 20, 21], 2: [4, 10, 12, 14], 3: [8, 9, 19, 23], 4: [3, 5, 7, 24],
                        5: [2, 15, 16, 18], 6: [6, 13, 17, 22]}  # fmt: skip


def make_emobox(root: Path, codes: Sequence[str] = ("01", "03", "04", "05"), actors: Sequence[int] = range(1, 25),
                folds: Dict[int, List[int]] = EMOBOX_RAVDESS_FOLDS, speaker_field: bool = False) -> Path:  # fmt: skip
    """An EmoBox checkout `root/EmoBox` with data/ravdess (jsonl, fold_<k> train/test, label_map.json) and the
    audio under downloads/ravdess/... as EmoBox lists it. Returns the data/ravdess folder."""
    checkout = Path(root) / "EmoBox"
    ds_dir = checkout / "data" / "ravdess"
    ds_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for a in actors:
        for i, code in enumerate(codes):
            name = f"03-01-{code}-01-01-01-{a:02d}"
            rel = f"downloads/ravdess/audio/Audio_Speech_Actors_01-24/Actor_{a:02d}/{name}.wav"
            data = audio_bytes(0.3, 16000, _freq(code), seed=a * 10 + i)
            (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
            (checkout / rel).write_bytes(data)
            row = {"key": f"ravdess-{name}", "dataset": "ravdess", "wav": rel, "type": "raw", "sample_rate": 16000,
                   "num_frame": 4800.0, "task": "category", "length": 0.3, "emo": RAVDESS_CODES[code], "channel": 1}  # fmt: skip
            if speaker_field:
                row["speaker"] = f"Actor_{a:02d}"
            rows.append((a, row))

    def dump(path: Path, items: Iterable[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in items))

    dump(ds_dir / "ravdess.jsonl", [r for _, r in rows])
    for k, test_actors in folds.items():
        dump(ds_dir / f"fold_{k}" / f"ravdess_test_fold_{k}.jsonl", [r for a, r in rows if a in test_actors])
        dump(ds_dir / f"fold_{k}" / f"ravdess_train_fold_{k}.jsonl", [r for a, r in rows if a not in test_actors])
    (ds_dir / "label_map.json").write_text(json.dumps(RAVDESS_LABEL_MAP, indent=4))
    return ds_dir


# ------------------------------------------------------------------------------- manifest / folder


def make_folder(root: Path, speakers: Sequence[str] = ("spk01", "spk02", "spk03", "spk04", "spk05", "spk06"),
                labels: Sequence[str] = ("angry", "happy", "neutral", "sad"), per_label: int = 1, sep: str = "_") -> Path:  # fmt: skip
    """root/<label>/<speaker><sep><label><sep><i>.wav"""
    root = Path(root)
    for si, s in enumerate(speakers):
        for li, label in enumerate(labels):
            for i in range(per_label):
                write_audio(root / label / f"{s}{sep}{label}{sep}{i:02d}.wav", freq=_freq(label), seed=si * 100 + li * 10 + i)
    return root


def write_manifest(path: Path, rows: Sequence[Dict[str, object]]) -> Path:
    """rows -> CSV (.csv) or JSONL (.jsonl); columns = the union of the rows' keys, in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    return path


def make_manifest_corpus(root: Path, speakers: Sequence[str] = ("s1", "s2", "s3", "s4", "s5", "s6"),
                         labels: Sequence[str] = ("sad", "angry", "happy"), fold_of: Optional[Dict[str, int]] = None,
                         fmt: str = "csv") -> Path:  # fmt: skip
    """root/audio/<speaker>/<label>_<i>.wav and root/manifest.<fmt> with relative paths (audio/...)."""
    root = Path(root)
    rows = []
    for si, s in enumerate(speakers):
        for li, label in enumerate(labels):
            rel = f"audio/{s}/{label}_0.wav"
            write_audio(root / rel, freq=_freq(label), seed=si * 10 + li)
            row: Dict[str, object] = {"path": rel, "label": label, "speaker": s}
            if fold_of is not None:
                row["fold"] = fold_of[s]
            rows.append(row)
    return write_manifest(root / f"manifest.{fmt}", rows)


# --------------------------------------------------------------------------------------------- config


def data_cfg(tmp: Path, **overrides: object) -> Dict[str, object]:
    """Every DataConfig field (as the loaders get them) with the table cache under `tmp`."""
    cfg = asdict(DataConfig())
    cfg["table_cache_dir"] = str(Path(tmp) / "tables")
    cfg.update(overrides)
    return cfg
