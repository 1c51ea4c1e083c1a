"""A sweep trial started by `wandb agent`: the agent's environment (one run id per trial), moved aside while a
CV's fold runs are created (ordinary runs, outside the sweep) and put back for the trial's own cv-summary run."""

from __future__ import annotations

import os
from typing import Dict

# set by `wandb agent` for the process it starts (one run id per trial)
AGENT_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
_detached_agent_env: Dict[str, str] = {}


def in_agent() -> bool:
    """This process was started by `wandb agent` for a sweep trial (and has not been detached from it)."""
    return bool(os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"))


def _teardown_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()  # the settings singleton caches the environment: drop it so the next init re-reads it


def detach_from_agent() -> None:
    """Move the agent's variables aside so that the runs created next are ordinary runs (the fold runs of a
    CV); `restore_agent()` brings them back for the trial's own (cv-summary) run."""
    if not in_agent():
        return
    for var in AGENT_ENV:
        if var in os.environ:
            _detached_agent_env[var] = os.environ.pop(var)
    _teardown_wandb()


def restore_agent() -> bool:
    """Put the agent's variables back (see detach_from_agent); True when there were any."""
    if not _detached_agent_env:
        return in_agent()
    os.environ.update(_detached_agent_env)
    _detached_agent_env.clear()
    _teardown_wandb()
    return True
