"""The `ser sweep` subcommand: its options (which may also follow the overrides) and the run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ser_lightning.config import ConfigError
from ser_lightning.run.options import default, merge_late_options
from ser_lightning.run.sweep.config import load_sweep_config
from ser_lightning.run.sweep.controller import LocalSweep, SweepError


def sweep_dir_for(yaml_path: Path, overrides: Sequence[str]) -> tuple:
    """(sweep folder, overrides for the trials): `output_dir=` names the sweep folder (default
    runs/sweeps/<yaml stem>)."""
    rest, out = [], None
    for item in overrides:
        if item.lstrip("-").startswith("output_dir="):
            out = item.split("=", 1)[1]
        else:
            rest.append(item)
    return Path(out or Path("runs") / "sweeps" / Path(yaml_path).stem), rest


def add_options(parser: argparse.ArgumentParser, late: bool = False) -> None:
    """The options (`late`: for options written after the overrides, which set only what they name)."""
    parser.add_argument("--count", type=int, default=default(None, late), help="run at most N trials now (default: until the grid is done / run_cap)")
    parser.add_argument("--workers", type=int, default=default(None, late), help="parallel trials (default: one per GPU, 1 on CPU)")
    parser.add_argument("--gpus", default=default("auto", late), help="GPUs for the workers: auto (all visible), none, or 0,1")
    parser.add_argument("--gpus-per-trial", type=int, default=default(1, late), help="GPUs per trial, for trainer.devices=K trainer.strategy=ddp trials")
    parser.add_argument("--retry-failed", action="store_true", default=default(False, late), help="run failed trials again")


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser(
        "sweep", help="run a W&B sweep YAML locally (grid/random/bayes, no server): parallel trials, resumable",
        description="Run a W&B sweep YAML with a local controller. Extra key=value overrides go to every trial; "
        "output_dir=DIR names the sweep folder (default runs/sweeps/<yaml name>).",
    )  # fmt: skip
    p.add_argument("sweep_yaml", help="a W&B sweep YAML (see sweeps/)")
    add_options(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options and key=value overrides for every trial")

    def run(args: argparse.Namespace) -> int:
        args = merge_late_options(args, add_options, rest="rest")
        config = load_sweep_config(args.sweep_yaml)
        sweep_dir, overrides = sweep_dir_for(Path(args.sweep_yaml), args.overrides)
        if args.count is None and config["method"] != "grid" and config.get("run_cap") is None:
            raise ConfigError(f"{config['method']} search never ends by itself: pass --count N (or set run_cap in the YAML)")
        controller = LocalSweep(config, sweep_dir, overrides, workers=args.workers, gpus=args.gpus, count=args.count,
                                retry_failed=args.retry_failed, source=str(args.sweep_yaml),
                                gpus_per_trial=args.gpus_per_trial)  # fmt: skip
        try:
            rc = controller.run()
        except SweepError as e:
            print(f"ser sweep: {e}", file=sys.stderr)
            return 1
        log_best(controller, overrides)
        return rc

    return run


def log_best(controller: LocalSweep, overrides: Sequence[str]) -> None:
    """The best finished trial's model as the sweep's `best` model artifact (review.log_sweep_best); the W&B mode
    and project are the trials' (wandb.mode= / wandb.project= overrides, else auto / ser_lightning)."""
    ranked = [t for t in controller.ranked() if t.get("status") == "finished"]
    if not ranked:
        return
    settings = dict(item.split("=", 1) for item in overrides if item.startswith(("wandb.mode=", "wandb.project=", "wandb.entity=")))
    from ser_lightning.review import log_sweep_best
    from ser_lightning.tracking import wandb_mode

    logged = log_sweep_best(controller.dir, ranked[0], wandb_mode(settings.get("wandb.mode", "auto")),
                            settings.get("wandb.project", "ser_lightning"), settings.get("wandb.entity"))  # fmt: skip
    if logged:
        print(f"[ser sweep] best trial {logged['trial']}: model artifact {logged['model']}:best")
