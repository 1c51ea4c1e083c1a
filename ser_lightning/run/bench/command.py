"""`ser bench` command line: options (also after the overrides) and the subcommand."""

from __future__ import annotations

import argparse
import sys

from ser_lightning.run.bench.context import CONTEXT_KINDS, bench_contexts, context_markdown
from ser_lightning.run.bench.driver import DEFAULT_WRITE, PARTS, run_bench
from ser_lightning.run.options import default, merge_late_options
from ser_lightning.run.bench.report import emit_report


def add_options(p: argparse.ArgumentParser, late: bool = False) -> None:
    """The options (`late`: for options written after the overrides, which set only what they name)."""
    d = lambda v: default(v, late)  # noqa: E731
    p.add_argument("--parts", default=d("encode,cache"), help=f"comma-separated subset of {','.join(PARTS)} (default encode,cache)")
    p.add_argument("--clips", type=int, default=d(None), help="clips: synthetic set size (default 200) or a seeded sample of the corpus (default all)")
    p.add_argument("--paper-clips", type=int, default=d(8), help="clips the paper's recipe is timed on (then extrapolated)")
    p.add_argument("--batch-size", type=int, default=d(None), help="our encoder batch (default 16 on CPU, 256 on CUDA)")
    p.add_argument("--policies", default=d("clip,5,10,15,30"), help="input policies for --parts policies")
    p.add_argument("--cv-folds", type=int, default=d(None), help="run only the first K folds of the CV (training time extrapolated)")
    p.add_argument("--cv-epochs", type=int, default=d(None), help="epochs per fold (default trainer.max_epochs)")
    p.add_argument("--warm", action="store_true", default=d(False), help="cv: use cache.dir as it is (default: a fresh, cold cache)")
    p.add_argument("--speakers", type=int, default=d(87), help="synthetic cv: speakers (ShEMO: 87)")
    p.add_argument("--folds", type=int, default=d(10), help="synthetic cv: speaker folds (ShEMO: 10)")
    p.add_argument("--corpus-dir", default=d(None), help="synthetic cv: write (and keep) the corpus here: wavs + "
                   "manifest.csv, usable as data=manifest data.root=DIR/manifest.csv (e.g. for ser sweep)")  # fmt: skip
    p.add_argument("--write", default=d(DEFAULT_WRITE), help=f"markdown file the report is appended to (default {DEFAULT_WRITE})")
    p.add_argument("--no-write", action="store_true", default=d(False), help="print only")
    p.add_argument("--json", default=d(None), help="also write every number to this JSON file")
    p.add_argument("--context-lengths", default=d("4,30,120,600"), help="context: seconds of audio (50 frames each)")
    p.add_argument("--context-batches", default=d("1,16"), help="context: batch sizes")
    p.add_argument("--context-kinds", default=d(",".join(CONTEXT_KINDS)), help="context: the contexts timed (transformer = softmax)")
    p.add_argument("--context-memory-gb", type=float, default=d(12.0), help="context: address-space limit per measurement (CPU); beyond it = OOM")
    p.add_argument("--adapt-clips", type=int, default=d(1440), help="adapt: clips per epoch (RAVDESS: 1440)")
    p.add_argument("--adapt-steps", type=int, default=d(4), help="adapt: training steps measured per variant and path")
    p.add_argument("--overhead-epochs", type=int, default=d(None), help="overhead: epochs of each side (default trainer.max_epochs)")
    p.add_argument("--overhead-repeats", type=int, default=d(2), help="overhead: runs of each side, alternating the order (the fastest counts)")
    p.add_argument("--overhead-threads", type=int, default=d(1), help="overhead: torch intra-op threads for both sides (0 = leave torch's)")
    p.add_argument("--context-budget-s", type=float, default=d(60.0), help="context: longer inputs of a context are skipped once one run took longer")


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("bench", help="speed and size against the paper's recipe (encode, policies, cv, cache) and of "
                                     "the temporal contexts over long inputs (context); adaptation depth from the cache vs from audio (adapt); "
                                     "one fold of `ser train` against a plain PyTorch loop (overhead); "
                                     "prints a table and appends it to docs/benchmarks.md")  # fmt: skip
    add_options(p)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="group selections and key=value overrides (options may follow them)")

    def run(args: argparse.Namespace) -> int:
        args = merge_late_options(args, add_options)
        from ser_lightning.config import compose, require

        overrides = list(args.overrides)
        if not any(o.lstrip("-").startswith("model.input_seconds=") for o in overrides):
            overrides.append("model.input_seconds=clip")  # ours: the clip policy unless another one is asked for
        cfg = compose(overrides)
        parts = [x.strip() for x in args.parts.split(",") if x.strip()]
        unknown = [x for x in parts if x not in PARTS]
        if unknown:
            raise ValueError(f"unknown bench part(s) {unknown}; choose from {', '.join(PARTS)}")
        command = "ser bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "ser bench"
        if "context" in parts:  # needs no encoder and no clips: the context layers alone, at the head's width
            context_report(cfg, args, command)
            parts = [x for x in parts if x != "context"]
            if not parts:
                return 0
        if "adapt" in parts:  # adaptation depth: synthetic RAVDESS-length clips through the configured encoder
            require(cfg, "model.encoder")
            from ser_lightning.run.bench.adapt import adapt_report

            adapt_report(cfg, args, command)
            parts = [x for x in parts if x != "adapt"]
            if not parts:
                return 0
        if "overhead" in parts:  # one fold of `ser train` against a plain PyTorch loop doing the same work
            require(cfg, "data.root", "model.encoder")
            from ser_lightning.run.bench.overhead import overhead_report

            overhead_report(cfg, args, command)
            parts = [x for x in parts if x != "overhead"]
            if not parts:
                return 0
        require(cfg, "model.encoder")
        report = run_bench(cfg, parts, clips=args.clips, paper_clips=args.paper_clips, batch_size=args.batch_size,
                           policies=[x.strip() for x in args.policies.split(",") if x.strip()], cv_folds=args.cv_folds,
                           cv_epochs=args.cv_epochs, cold=not args.warm, command=command, speakers=args.speakers,
                           num_folds=args.folds, corpus_dir=args.corpus_dir)  # fmt: skip
        emit_report(args, report["markdown"], {k: v for k, v in report.items() if k != "markdown"})
        return 0

    return run


def context_report(cfg, args: argparse.Namespace, command: str) -> None:
    from ser_lightning.features.pipeline import encoder_device
    from ser_lightning.utils.machine import machine_info, machine_line

    device = encoder_device(cfg.trainer.accelerator)
    floats = lambda text: [float(x) for x in text.split(",") if x.strip()]  # noqa: E731
    rows = bench_contexts(int(cfg.model.proj_dim), device, floats(args.context_lengths),
                          [int(x) for x in floats(args.context_batches)],
                          [x.strip() for x in args.context_kinds.split(",") if x.strip()],
                          args.context_memory_gb, args.context_budget_s)  # fmt: skip
    machine = machine_info()
    text = (f"### `{command}`: temporal contexts over long inputs ({device})\n\nMachine: {machine_line(machine)}.\n\n"
            + context_markdown(rows, int(cfg.model.proj_dim), args.context_memory_gb, args.context_budget_s))  # fmt: skip
    emit_report(args, text, {"machine": machine, "device": device, "context": rows})

