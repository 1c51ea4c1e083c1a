"""`ser train`: one fold end to end: one head (run/fold.py) or, with ensemble.members > 1, an ensemble of heads
(run/ensemble.py). Interrupted, the same command resumes."""

from __future__ import annotations

import sys
from typing import Any, Dict

from omegaconf import DictConfig

from ser_lightning.run.ensemble import train_ensemble
from ser_lightning.run.fold import train_one


def train(cfg: DictConfig, encoder=None) -> Dict[str, Any]:
    """Run one fold end to end; returns the results dict (also written to output_dir/results.json).

    Interrupted (SIGTERM: exit 143; SIGKILL; a crash), the same call resumes from the last epoch-end
    checkpoint and ends with the same results as an uninterrupted run (README "Resuming and faults")."""
    from ser_lightning.run.callbacks import Terminated, sigterm_exits

    with sigterm_exits():
        try:
            if int(cfg.ensemble.members) > 1:
                return train_ensemble(cfg, encoder)
            return train_one(cfg, encoder)
        except Terminated:
            print(f"[ser] {cfg.output_dir}: stopped by SIGTERM (exit {Terminated().code}); run the same command "
                  "again to resume from the last epoch-end checkpoint", file=sys.stderr, flush=True)  # fmt: skip
            raise
