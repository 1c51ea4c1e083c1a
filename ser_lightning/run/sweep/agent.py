"""What `wandb agent` would run for a trial (the YAML's `command` expanded the same way), and the local form of it.

`ser sweep` starts exactly the command the agent would start, so a sweep YAML behaves the same under
`wandb agent` and here; only `ser` is run with this Python and the trial folder is appended as output_dir.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # wandb agent's default
_ENVVAR = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")


def agent_args(params: Mapping[str, Any]) -> Dict[str, List[str]]:
    """The argument formats `wandb agent` builds from a trial's parameters (same formatting: `f"{k}={v}"`)."""
    flags, no_hyphens, no_booleans, no_equals = [], [], [], []
    for key, value in params.items():
        flag = f"{key}={value}"
        flags.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{key}", str(value)]
        if isinstance(value, bool):
            if value:
                no_booleans.append("--" + key)
        else:
            no_booleans.append("--" + flag)
    return {
        "args": flags,
        "args_no_equals": no_equals,
        "args_no_hyphens": no_hyphens,
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(dict(params))],
        "args_append_hydra": ["+" + f for f in no_hyphens],
        "args_override_hydra": ["++" + f for f in no_hyphens],
    }


def agent_command(config: Mapping[str, Any], params: Mapping[str, Any], env: Optional[Mapping[str, str]] = None) -> List[str]:
    """The command line `wandb agent` would start for these parameters (POSIX)."""
    env = os.environ if env is None else env
    command = []
    for chunk in config.get("command") or DEFAULT_COMMAND:
        chunk = str(chunk)
        for m in list(_ENVVAR.finditer(chunk))[::-1]:
            chunk = chunk[: m.start()] + env.get(m.group(1), m.group(1)) + chunk[m.end() :]
        command.append(chunk)
    sweep_vars: Dict[str, List[str]] = dict(agent_args(params))
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [str(config["program"])] if config.get("program") is not None else []
    sweep_vars["env"] = ["/usr/bin/env"]
    out: List[str] = []
    for c in command:
        if c.startswith("${") and c.endswith("}"):
            out += sweep_vars.get(c[2:-1]) or []
        else:
            out.append(c)
    return out


def ser_overrides(argv: Sequence[str]) -> Optional[List[str]]:
    """For an agent command that runs `ser <subcommand> ...`: the overrides that reach `compose()`
    (drops `${env}`, the program and the subcommand). None when the command does not run ser."""
    argv = list(argv)
    if argv and argv[0] == "/usr/bin/env":
        argv = argv[1:]
    if len(argv) >= 2 and Path(argv[0]).name == "ser":
        return argv[2:]
    if len(argv) >= 4 and argv[1] == "-m" and argv[2] == "ser_lightning.cli":
        return argv[4:]
    return None


def local_argv(config: Mapping[str, Any], params: Mapping[str, Any], trial_dir: Path, overrides: Sequence[str]) -> List[str]:
    """The trial's command for the local controller: the agent's command, with `ser` run by this Python,
    the YAML's own output_dir replaced by the trial folder, and the sweep's extra overrides appended."""
    argv = agent_command(config, params)
    if argv and argv[0] == "/usr/bin/env":
        argv = argv[1:]
    is_ser = bool(argv) and Path(argv[0]).name == "ser"
    if is_ser:
        argv = [sys.executable, "-m", "ser_lightning.cli"] + argv[1:]
    elif argv and argv[0] in ("python", "python3"):
        argv = [sys.executable] + argv[1:]
    argv = [a for a in argv if not a.startswith("output_dir=")]
    extra = ["trainer.enable_progress_bar=false"] if is_ser else []  # progress bars only clutter trial logs
    return argv + extra + list(overrides) + [f"output_dir={trial_dir}"]
