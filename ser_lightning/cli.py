"""`ser` entry point: a subcommand, then `group=name` selections and `key=value` overrides.

    ser train data=ravdess data.root=... model.encoder=... model.layer=6 model.pooling=qkv output_dir=runs/x
    ser config data=ravdess --fields        # print the resolved config / every field with its help
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

from ser_lightning.config import GROUPS, ConfigError, available, compose, field_help, require, to_yaml

EXIT_CONFIG = 2
EXIT_FAILURE = 1


def _cmd_train(args: argparse.Namespace) -> int:
    from ser_lightning.run.train import train

    train(compose(args.overrides))
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from ser_lightning.run.cache import cache_command

    cache_command(compose(args.overrides))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.fields:
        print("\n".join(field_help()))
        print("\ngroups: " + "; ".join(f"{g}=({', '.join(available(g))})" for g in GROUPS))
        return 0
    print(to_yaml(compose(args.overrides)), end="")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    if args.action == "list":
        from ser_lightning.data.corpora import CORPORA

        for name, fn in sorted(CORPORA.items()):
            doc = (sys.modules[fn.__module__].__doc__ or "").strip().splitlines()
            print(f"{name:10s} {doc[0] if doc else ''}")
        return 0
    from omegaconf import OmegaConf

    from ser_lightning.run.stats import data_stats, format_stats
    from ser_lightning.utils.io import atomic_write_json

    cfg = compose(args.overrides)
    require(cfg, "data.root")
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    stats = data_stats(data_cfg, num_folds=cfg.data.num_folds, val_speakers=cfg.data.val_speakers, seed=cfg.seed,
                       val_fraction=cfg.data.val_fraction)  # fmt: skip
    print(format_stats(stats))
    out = args.json or f"{cfg.output_dir}/data_stats.json"
    atomic_write_json(out, stats)
    print(f"[ser] written {out}")
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _cmd_train,
    "cache": _cmd_cache,
    "config": _cmd_config,
    "data": _cmd_data,
}


# subcommands that live in their own job modules: each module's add_subcommand(sub) adds its parser and returns
# its handler. Listed explicitly: an import error in one of them is an error, never a silently missing command.
JOB_MODULES = ("cv", "sweep", "report", "predict", "bench", "export", "probe")


def _register_jobs(sub: argparse._SubParsersAction) -> None:
    import importlib

    for name in JOB_MODULES:
        module = importlib.import_module(f"ser_lightning.run.{name}")
        COMMANDS[name] = module.add_subcommand(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ser", description="Speech emotion recognition on frozen Whisper features (Lightning + W&B)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    overrides_help = "group selections (data=ravdess, experiment=...) and key=value overrides"
    p = sub.add_parser("train", help="train + validate + test one fold; writes results.json")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p = sub.add_parser("cache", help="encode a corpus once into the feature cache (model.layers=[...])")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p = sub.add_parser("config", help="print the resolved configuration")
    p.add_argument("--fields", action="store_true", help="list every field with its type, default and help")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p = sub.add_parser("data", help="`ser data stats data=...` per-fold tables; `ser data list` corpora")
    p.add_argument("action", choices=["stats", "list"])
    p.add_argument("--json", default=None, help="where to write the stats JSON (default output_dir/data_stats.json)")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    _register_jobs(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ser_lightning.audio import BadAudioError
    from ser_lightning.data.folds import FoldError

    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"ser: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (BadAudioError, FoldError, FileNotFoundError, ValueError, OSError) as e:
        print(f"ser: error: {e}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
