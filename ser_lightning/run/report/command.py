"""The `ser report` subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ser_lightning.run.report.build import make_report
from ser_lightning.run.report.runs import ReportError


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("report", help="Markdown + HTML report of CV / sweep folders (tables, confusion matrices, layer curve)")
    p.add_argument("run_dirs", nargs="+", type=Path, help="CV folders, ser train folders, sweep folders, or their parent")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/report for one input, else ./report)")
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN", help="runs for the per-class comparison (default: best 3)")
    p.add_argument("--title", default=None)
    p.add_argument("--wandb", nargs="?", const="auto", default=None, metavar="MODE",
                   help="also log the images and tables to W&B (auto: online with an API key, else offline)")

    def run(args: argparse.Namespace) -> int:
        out = args.out or (args.run_dirs[0] / "report" if len(args.run_dirs) == 1 else Path("report"))
        try:
            res = make_report(args.run_dirs, out, args.compare, args.title, args.wandb)
        except ReportError as e:
            print(f"ser report: {e}", file=sys.stderr)
            return 1
        print(f"[ser report] {len(res['runs'])} run(s) -> {res['markdown']} and {res['html']} ({len(res['images'])} images)")
        if res.get("wandb"):
            print(f"[ser report] W&B: {res['wandb']}")
        return 0

    return run
