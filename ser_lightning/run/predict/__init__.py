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

from ser_lightning.run.predict.command import add_subcommand
from ser_lightning.run.predict.inputs import (AUDIO_SUFFIXES, MANIFEST_SUFFIXES, PATH_COLUMNS, _manifest_rows,
                                              expand_inputs)  # fmt: skip
from ser_lightning.run.predict.output import _utf8, to_csv, to_jsonl, tsv_field, tsv_line
from ser_lightning.run.predict.predictor import (EncoderFingerprintError, Predictor, check_prediction_meta,
                                                 predict_files, windows)  # fmt: skip

__all__ = ["AUDIO_SUFFIXES", "EncoderFingerprintError", "MANIFEST_SUFFIXES", "PATH_COLUMNS", "Predictor",
           "_manifest_rows", "_utf8", "add_subcommand", "check_prediction_meta", "expand_inputs", "predict_files",
           "to_csv", "to_jsonl", "tsv_field", "tsv_line", "windows"]
