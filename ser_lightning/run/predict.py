"""`ser predict`: emotion of audio files with a trained head (the exported safetensors + JSON of a run).

    ser predict --run runs/x clip.wav more/ list.csv --out predictions.jsonl

Inputs: audio files, folders (searched recursively for .wav/.flac/.ogg/.mp3) and manifests (.csv/.tsv/.jsonl
with a `path` column, or `audio` / `wav`; relative paths are resolved against `--audio-root DIR` when given
(training's data.audio_root), else the manifest's folder, and may not leave that root unless
--allow-outside-root). `--run` is a run folder (its `export/`), an export folder (what `ser export` writes),
not a CV folder (pass one fold: `--run cv/fold_3`).

Output: one tab-separated line per file on stdout (`path<TAB>label<TAB>p`, or `path<TAB>ERROR<TAB>reason`) in
which a backslash, tab, newline or carriage return inside a field is written as `\\\\`, `\\t`, `\\n`, `\\r`
(so every file is exactly one line, whatever its name); `--out x.csv` is proper CSV (quoted fields),
`--out x.jsonl` JSON lines.

The path is the one training took: decode + resample (ser_lightning/audio.py, same bad-input checks), the Whisper
log-mel front end and length policy, the frozen encoder named in head.json (`--encoder PATH` for a local
copy of the same weights; other weights are refused by fingerprint), the encoder layer(s), features rounded
to the feature-cache dtype, the head. Clips longer than the run's data.max_seconds (30 s at most) are cut
into consecutive windows of that length: every window is predicted, and the clip's probabilities are the
mean of its windows' (a tail shorter than data.min_seconds is dropped). A file that cannot be used (missing,
empty, truncated, not audio, NaN samples, too short, silent; an unreadable manifest) is reported with its
error and the others are still predicted; the exit status is then 1.
A head trained with model.feature_norm=speaker normalises every clip with its speaker's statistics: clips are
grouped by a manifest's `speaker` column; the clips it does not name are taken as one speaker.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ser_lightning.utils.io import atomic_write_bytes

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl")
PATH_COLUMNS = ("path", "audio", "wav")


class EncoderFingerprintError(ValueError):
    """The encoder weights are not the ones the head was trained on."""


# ---------------------------------------------------------------------------------------------- inputs
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


def windows(num_samples: int, window: int, min_samples: int) -> List[Tuple[int, int]]:
    """Consecutive [start, end) spans of at most `window` samples; a short tail (< min_samples) is dropped."""
    if num_samples <= window:
        return [(0, num_samples)]
    spans = [(s, min(s + window, num_samples)) for s in range(0, num_samples, window)]
    if spans[-1][1] - spans[-1][0] < min_samples:
        spans.pop()
    return spans


# ---------------------------------------------------------------------------------------------- model
def check_prediction_meta(meta: Dict[str, Any], path: Path | str) -> None:
    """ValueError naming head.json when it lacks (or holds malformed) a field prediction reads."""
    from ser_lightning.features.cache import DTYPES

    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: {what}; the file is damaged (re-export the run or copy it again)")

    enc, data = meta["encoder"], meta["data"]  # objects: checked by artifact.read_meta
    for key in ("source", "fingerprint"):
        if not isinstance(enc.get(key), str) or not enc[key]:
            raise bad(f"encoder.{key} must be a non-empty string (got {enc.get(key)!r})")
    layers = enc.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(k, int) and not isinstance(k, bool) for k in layers):
        raise bad(f"encoder.layers must be a non-empty list of integers (got {layers!r})")
    for key, required in (("sample_rate", True), ("max_seconds", True), ("min_seconds", False)):
        value = data.get(key)
        if value is None and not required:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or value != value:
            raise bad(f"data.{key} must be a positive number (got {value!r})")
    if meta.get("feature_dtype") is not None and meta["feature_dtype"] not in DTYPES:
        raise bad(f"feature_dtype must be one of {sorted(DTYPES)} or null (got {meta['feature_dtype']!r})")
    if not isinstance(meta.get("seed", 0), int):
        raise bad(f"seed must be an integer (got {meta.get('seed')!r})")


class Predictor:
    """Exported head + the encoder it was trained on; `predict(paths)` -> one record per path."""

    def __init__(self, run: Path | str, encoder: Optional[str] = None, device: Optional[str] = None,
                 batch_size: int = 16, encoder_module: Any = None) -> None:  # fmt: skip
        import torch

        from ser_lightning.features.encoder import load_encoder
        from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend
        from ser_lightning.features.pipeline import encoder_device
        from ser_lightning.run.artifact import CONFIG, export_members, find_export, load_heads

        self.folder = find_export(run)
        # one head, or an ensemble's members (ensemble.json): their softmax probabilities are averaged
        loaded = load_heads(self.folder)
        self.heads = [head for head, _ in loaded]
        self.head, self.meta = loaded[0]
        # every member shares encoder, data and feature dtype (load_heads checks): the first one's head.json speaks
        self.meta_path = export_members(self.folder)[0] / CONFIG
        check_prediction_meta(loaded[0][1], self.meta_path)
        self.class_names: List[str] = list(self.meta["class_names"])
        enc_info = self.meta["encoder"]
        self.device = torch.device(device or encoder_device())
        if encoder_module is None:
            source = encoder or enc_info["source"]
            try:
                encoder_module = load_encoder(source, device=self.device, dtype=self.meta["model"].get("encoder_dtype", "auto"),
                                              seed=int(self.meta.get("seed", 0)))  # fmt: skip
            except OSError as e:
                raise OSError(f"cannot load the encoder '{source}' named in {self.meta_path} ({e}); "
                              "pass --encoder PATH to a local copy of the same weights") from None  # fmt: skip
        if encoder_module.fingerprint != enc_info["fingerprint"]:
            raise EncoderFingerprintError(
                f"encoder {encoder_module.source} has weight fingerprint {encoder_module.fingerprint[:12]}, but the "
                f"head in {self.folder} was trained on {enc_info['source']} (fingerprint {enc_info['fingerprint'][:12]}); "
                "pass --encoder PATH to a copy of those weights"
            )
        self.encoder = encoder_module
        self.layers: List[int] = list(enc_info["layers"])
        try:
            self.policy = LengthPolicy.parse(self.meta["model"].get("input_seconds", "clip"))
        except ValueError as e:
            raise ValueError(f"{self.meta_path}: model.{e}; the file is damaged") from None
        self.frontend = LogMelFrontend(encoder_module.num_mel_bins)
        data = self.meta["data"]
        self.sample_rate = int(data["sample_rate"])
        self.window_seconds = min(float(data["max_seconds"]), 30.0)
        self.min_seconds = float(data.get("min_seconds", 0.1))
        self.feature_dtype = self.meta.get("feature_dtype")
        self.batch_size = int(batch_size)
        # model.feature_norm=speaker: predict() normalises each speaker's clips together (see there)
        self.speaker_norm = bool(getattr(self.head, "speaker_norm", False))
        for head in self.heads:
            head.to(self.device)

    def _features(self, waves: List[np.ndarray]) -> List[Any]:
        """Per window: the encoder features exactly as the feature cache held them in training."""
        import torch

        from ser_lightning.features.cache import DTYPES
        from ser_lightning.features.extract import encode_waves

        per_layer = encode_waves(self.encoder, self.frontend, waves, self.policy, self.layers)
        out = []
        for i in range(len(waves)):
            arrays = [per_layer[k][i] for k in self.layers]
            if self.feature_dtype:
                arrays = [a.astype(DTYPES[self.feature_dtype]).astype(np.float32) for a in arrays]
            feats = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]
            out.append(feats[0] if len(feats) == 1 else torch.stack(feats))
        return out

    def _probabilities(self, waves: List[np.ndarray]) -> np.ndarray:
        """(N, C) class probabilities of N windows, batched by length like evaluation in training. A head trained
        with model.feature_norm=speaker is given the statistics of ALL N windows (one speaker)."""
        import torch

        from ser_lightning.data.datamodule import collate_features
        from ser_lightning.models.module import masked_stats

        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        batches = []
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            feats = self._features([waves[i] for i in idx])
            batches.append((idx, collate_features([{"features": f, "label": 0, "index": j} for j, f in zip(idx, feats)])))
        stats = None
        if self.speaker_norm:
            mean, std = masked_stats(((b["features"], b["mask"], None) for _, b in batches))  # (L, D) each
            stats = (mean.to(self.device), std.clamp_min(1e-5).to(self.device))
        probs = np.zeros((len(waves), len(self.class_names)), dtype=np.float64)
        for idx, batch in batches:
            norm = None if stats is None else tuple(t.expand(len(idx), *t.shape) for t in stats)  # (B, L, D) each
            features, mask = batch["features"].to(self.device), batch["mask"].to(self.device)
            with torch.no_grad():
                p = torch.stack([torch.softmax(head(features, mask, norm).float(), dim=-1) for head in self.heads]).mean(0)
            probs[idx] = p.cpu().numpy()
        return probs

    def predict(self, inputs: Iterable[Tuple[str, Optional[str]] | str], chunk: int = 64,
                speakers: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:  # fmt: skip
        """One record per input: path, label, probs (class -> p), duration, windows, error. A speaker-normalised
        head (model.feature_norm=speaker) normalises each speaker's inputs together: `speakers` maps path ->
        speaker (e.g. a manifest's speaker column); inputs it does not name form one more speaker. Their records
        carry `speaker` (None for that remainder)."""
        items = [(str(x), None) if isinstance(x, (str, Path)) else x for x in inputs]
        if not self.speaker_norm:
            return self._predict_items(items, chunk)
        groups: Dict[Optional[str], List[int]] = {}
        for i, (path, _) in enumerate(items):
            groups.setdefault((speakers or {}).get(path), []).append(i)
        records: List[Dict[str, Any]] = [{} for _ in items]
        for speaker, idx in groups.items():  # one pass per speaker: its statistics need all of its clips
            for i, rec in zip(idx, self._predict_items([items[i] for i in idx], sys.maxsize)):
                records[i] = {**rec, "speaker": speaker}
        return records

    def _predict_items(self, items: List[Tuple[str, Optional[str]]], chunk: int) -> List[Dict[str, Any]]:
        from ser_lightning.audio import BadAudioError, decode

        records: List[Dict[str, Any]] = []
        pending: List[Tuple[Dict[str, Any], List[np.ndarray], List[Tuple[int, int]]]] = []

        def flush() -> None:
            waves = [w for _, ws, _ in pending for w in ws]
            if waves:
                probs = self._probabilities(waves)
                k = 0
                for rec, ws, spans in pending:
                    p = probs[k : k + len(ws)]
                    k += len(ws)
                    rec["windows"] = [
                        {"start": a / self.sample_rate, "end": b / self.sample_rate, **self._label(pw)}
                        for (a, b), pw in zip(spans, p)
                    ]
                    rec.update(self._label(p.mean(axis=0)))
            pending.clear()

        window = int(round(self.window_seconds * self.sample_rate))
        min_samples = int(round(self.min_seconds * self.sample_rate))
        for path, error in items:
            rec: Dict[str, Any] = {"path": path, "label": None, "probs": None, "duration": None, "windows": [], "error": error}
            records.append(rec)
            if error:
                continue
            try:
                wave, info = decode(path, self.sample_rate, self.min_seconds)
            except BadAudioError as e:
                rec["error"] = e.reason
                continue
            rec["duration"] = round(info.duration, 4)
            spans = windows(len(wave), window, min_samples)
            pending.append((rec, [wave[a:b] for a, b in spans], spans))
            if sum(len(ws) for _, ws, _ in pending) >= chunk:
                flush()
        flush()
        return records

    def _label(self, p: np.ndarray) -> Dict[str, Any]:
        return {"label": self.class_names[int(np.argmax(p))], "probs": {c: float(v) for c, v in zip(self.class_names, p)}}


def predict_files(run: Path | str, inputs: Sequence[str], encoder: Optional[str] = None,
                  allow_outside_root: bool = False, audio_root: Optional[str | Path] = None,
                  **kwargs: Any) -> List[Dict[str, Any]]:  # fmt: skip
    speakers: Dict[str, str] = {}
    paths = expand_inputs(inputs, allow_outside_root, speakers, audio_root)
    return Predictor(run, encoder=encoder, **kwargs).predict(paths, speakers=speakers)


# ---------------------------------------------------------------------------------------------- output
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


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("predict", help="predict the emotion of audio files with a trained run's exported head")
    p.add_argument("--run", required=True, help="run folder (with export/) or export folder (from `ser export`)")
    p.add_argument("audio", nargs="+", help="audio files, folders, or manifests (.csv/.tsv/.jsonl with a path column)")
    p.add_argument("--encoder", default=None, help="local copy of the encoder weights named in head.json")
    p.add_argument("--out", default=None, help="write predictions to FILE.jsonl or FILE.csv")
    p.add_argument("--batch-size", type=int, default=16, help="windows per encoder batch")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--audio-root", default=None, metavar="DIR",
                   help="resolve a manifest's relative paths against DIR (like data.audio_root) instead of its folder")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="manifest paths may leave the manifest's folder (or --audio-root)")

    def run(args: argparse.Namespace) -> int:
        if args.out and Path(args.out).suffix.lower() not in (".jsonl", ".csv"):
            print(f"ser predict: --out {args.out}: use a .jsonl or .csv file name", file=sys.stderr)
            return 2
        if args.audio_root and not Path(args.audio_root).expanduser().is_dir():
            print(f"ser predict: --audio-root {args.audio_root}: not a folder", file=sys.stderr)
            return 2
        try:
            predictor = Predictor(args.run, encoder=args.encoder, device=args.device, batch_size=args.batch_size)
        except EncoderFingerprintError as e:
            print(f"ser predict: error: {e}", file=sys.stderr)
            return 1
        speakers: Dict[str, str] = {}
        inputs = expand_inputs(args.audio, args.allow_outside_root, speakers, args.audio_root)
        records = predictor.predict(inputs, speakers=speakers)
        for r in records:
            print(tsv_line(r))
        if args.out:
            text = to_csv(records, predictor.class_names) if args.out.lower().endswith(".csv") else to_jsonl(records)
            atomic_write_bytes(args.out, _utf8(text))
        failed = sum(1 for r in records if r["error"])
        if predictor.speaker_norm:
            counts: Dict[Optional[str], int] = {}
            for r in records:
                if not r["error"]:
                    counts[r["speaker"]] = counts.get(r["speaker"], 0) + 1
            for speaker, n in counts.items():
                who = f"speaker {speaker}" if speaker is not None else "the clips without a manifest speaker (ONE speaker)"
                print(f"[ser predict] model.feature_norm=speaker: {who}: {n} clip(s) normalised together"
                      + (" -- fewer than 10 clips give noisy statistics" if n < 10 else ""), file=sys.stderr)  # fmt: skip
        print(f"[ser predict] {len(records) - failed} predicted, {failed} failed"
              + (f" -> {args.out}" if args.out else ""), file=sys.stderr)  # fmt: skip
        return 1 if failed else 0

    return run
