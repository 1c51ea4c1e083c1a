"""W&B logger setup (offline by default when no API key is configured) and result logging.

Components never import this module; only the jobs in `run/` do.

What lands in W&B (every run is written by global rank 0 only):
- one run per fold (`ser train`; inside `ser cv`: group = the CV name, job_type = fold): the full resolved
  config, train/val/test metrics by stage (Lightning), the test confusion matrix as a W&B plot AND as an image,
  a per-class recall table, `val/<monitor>_best` (the checkpoint-selection score) in the summary;
- one `cv-summary` run per CV (same group): `cv/<metric>_mean` / `cv/<metric>_std` for every fold metric
  (`cv/test/ua_mean` is what the sweep YAMLs optimise), a per-fold table, a per-class recall table and the
  pooled confusion matrix (plot + image).

Under `wandb agent` (a W&B sweep), the agent gives the trial process one run id (WANDB_RUN_ID). The fold runs of
a CV are detached from the sweep (their own ids, no sweep parameters), and the cv-summary run IS the agent's
run: the sweep sees exactly one run per trial, carrying the sweep parameters and `cv/test/ua_mean`. A plain
`ser train` trial is the agent's run itself.

Layout: mode.py (the W&B mode, which rank writes, the W&B folder, stable run ids), agent.py (the `wandb agent`
environment, detached and restored), fold.py (a fold run's logger and test-time logging), cv.py (the cv-summary
run), report.py (the `ser report --wandb` run). The module state (the offline notice shown once; the detached
agent variables) lives in mode.py and agent.py only.
"""

from ser_lightning.tracking.agent import AGENT_ENV, detach_from_agent, in_agent, restore_agent
from ser_lightning.tracking.cv import cv_metrics, log_cv_predictions, log_cv_summary_run
from ser_lightning.tracking.fold import (
    SCALAR_TEST_KEYS, define_summaries, finish_logger, log_fold_review, log_test_results, log_trainable_parameters,
    make_logger, offline_wandb, trial_metrics,
)  # fmt: skip
from ser_lightning.tracking.mode import _stable_run_id, is_global_zero, wandb_dir, wandb_mode
from ser_lightning.tracking.report import log_report_run

__all__ = [
    "AGENT_ENV", "SCALAR_TEST_KEYS", "_stable_run_id", "cv_metrics", "define_summaries", "detach_from_agent",
    "finish_logger", "in_agent", "is_global_zero", "log_cv_predictions", "log_cv_summary_run", "log_fold_review",
    "log_report_run", "log_test_results", "log_trainable_parameters", "make_logger", "offline_wandb", "restore_agent", "trial_metrics",
    "wandb_dir", "wandb_mode",
]  # fmt: skip
