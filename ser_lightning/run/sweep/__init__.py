"""`ser sweep SWEEP.yaml`: run a standard W&B sweep YAML locally, with no W&B server.

    ser sweep sweeps/ravdess_pooling_layer.yaml --gpus 0,1 output_dir=runs/sweeps/pl
    ser sweep sweeps/ravdess_bayes.yaml --count 20 --workers 2 data.root=/data/ravdess

- Trials are proposed by wandb's open-source sweep logic (`sweeps.next_run`: grid, random, bayes) from the
  same YAML that `wandb sweep` takes. Each trial is the YAML's `command` expanded exactly as `wandb agent`
  expands it (`${env}`, `${program}`, `${args_no_hyphens}`, ...), run as a subprocess (never through a shell),
  with the extra `key=value` overrides given here and `output_dir=<sweep dir>/<trial name>` appended.
  `ser` is run with this Python (`python -m ser_lightning.cli`), so the same environment is used.
- Workers: one per GPU (`CUDA_VISIBLE_DEVICES` set per worker) or `--workers W` (several per GPU, or on CPU).
  Trials share the feature cache (`cache.dir`, lock-safe).
- State: `<sweep dir>/sweep_state.json` (written atomically after every change) records every trial's
  parameters, command, status (running / finished / failed / interrupted / early_stopped), metric and, for a failed trial, the
  tail of its log (the traceback). Each trial's log is `<sweep dir>/<trial>/trial.log`.
- Resume: run the same command again. Finished (and failed, unless --retry-failed) trials are kept; trials
  that were running when the controller stopped run again and resume themselves (train / cv are resumable).
- `early_terminate: {type: hyperband, min_iter, eta}` (or max_iter and s): the running trials' per-epoch
  validation metrics (their folds' history.jsonl) are compared at each bracket epoch with the other trials'; a
  trial below the bracket's cut is stopped (SIGTERM), recorded `early_stopped` (not failed, never resumed) and
  its folder gets EARLY_STOPPED.json saying why (hyperband.py has the exact rules).
- The objective is the YAML's `metric`, read from the trial's outputs under the name its W&B run logs:
  `cv/<key>_mean` from summary.json for `ser cv` trials, `test/...` / `val/ua_best` from results.json for
  `ser train` trials (tracking.cv_metrics / tracking.trial_metrics define both).

Layout: config.py (the YAML), agent.py (the commands `wandb agent` would run), trials.py (trial names, files and
outputs), controller.py (LocalSweep), hyperband.py (early_terminate), leaderboard.py (the ranking), command.py
(the `ser sweep` CLI).
"""

from ser_lightning.run.sweep.agent import DEFAULT_COMMAND, agent_args, agent_command, local_argv, ser_overrides
from ser_lightning.run.sweep.command import add_options, add_subcommand, sweep_dir_for
from ser_lightning.run.sweep.config import SERVER_KEYS, _py, load_sweep_config, validate_sweep_config, varying_keys
from ser_lightning.run.sweep.controller import MAX_INITIAL_FAILURES, LocalSweep, SweepError, parse_gpus
from ser_lightning.run.sweep.hyperband import EARLY_STOPPED, MARKER, Hyperband, validate_early_terminate
from ser_lightning.run.sweep.trials import ERROR_TAIL_LINES, LEADERBOARD, STATE, outputs_metrics, std_key, trial_name

__all__ = [
    "DEFAULT_COMMAND", "EARLY_STOPPED", "ERROR_TAIL_LINES", "Hyperband", "LEADERBOARD", "MARKER", "MAX_INITIAL_FAILURES",
    "SERVER_KEYS", "STATE", "LocalSweep", "SweepError", "_py", "add_options", "add_subcommand", "agent_args",
    "agent_command", "load_sweep_config", "local_argv", "outputs_metrics", "parse_gpus", "ser_overrides", "std_key",
    "sweep_dir_for", "trial_name", "validate_early_terminate", "validate_sweep_config", "varying_keys",
]  # fmt: skip
