"""The `ser` convention "options may come after the overrides": `ser bench model.encoder=x --clips 5`.

A subcommand declares its options once, in a function `add_options(parser, late)`; its parser takes them
before the overrides and collects everything after the first override with `argparse.REMAINDER`.
`merge_late_options` parses that remainder again (options interleaved with `key=value` overrides) and lets
what it finds win over the early values. `late=True` gives every option the default `argparse.SUPPRESS`, so a
late parse sets only what was written.
"""

from __future__ import annotations

import argparse
from typing import Callable

AddOptions = Callable[[argparse.ArgumentParser, bool], None]


def default(value, late: bool):
    """An option's default: its value, or SUPPRESS in the late parser (only what is written is set)."""
    return argparse.SUPPRESS if late else value


def merge_late_options(args: argparse.Namespace, add_options: AddOptions, rest: str = "overrides") -> argparse.Namespace:
    """A copy of `args` in which options found among `args.<rest>` are applied and `overrides` holds only the
    overrides (a list of `key=value` and group selections, in their order)."""
    late = argparse.ArgumentParser(add_help=False, prog="ser")
    add_options(late, True)
    late.add_argument("overrides", nargs="*")
    found = late.parse_intermixed_args(list(getattr(args, rest) or []))
    merged = argparse.Namespace(**vars(args))
    for key, value in vars(found).items():
        setattr(merged, key, value)
    return merged
