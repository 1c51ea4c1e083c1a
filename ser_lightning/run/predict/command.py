"""The `ser predict` subcommand: its argparse options and the command that expands the inputs, predicts,
prints one TSV line per file, writes `--out` and returns the exit status."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional

from ser_lightning.run.predict.inputs import expand_inputs
from ser_lightning.run.predict.output import _utf8, to_csv, to_jsonl, tsv_line
from ser_lightning.run.predict.predictor import EncoderFingerprintError, Predictor
from ser_lightning.utils.io import atomic_write_bytes


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("predict", help="predict the emotion of audio files with a trained run's exported head")
    p.add_argument("--run", required=True, help="run folder (with export/), export folder (from `ser export`), a "
                   "downloaded model-artifact folder, or wandb:entity/project/name:alias (downloaded through the W&B API)")
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
            from ser_lightning.review import resolve_run

            predictor = Predictor(resolve_run(args.run), encoder=args.encoder, device=args.device, batch_size=args.batch_size)
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
