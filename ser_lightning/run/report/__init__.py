"""`ser report RUN_DIR... [--out DIR] [--compare NAME...] [--wandb]`: Markdown + HTML reports readable without W&B.

Inputs: CV folders (`ser cv`: summary.json + fold_K/), single-fold folders (`ser train`: results.json), sweep
folders (`ser sweep`: sweep_state.json + one folder per trial), or a folder whose sub-folders are any of these.

- one CV: summary table (mean ± std over folds), per-fold table, per-class recall (table + bars), row-normalised
  confusion matrices pooled over folds and per fold;
- several runs / a sweep: leaderboard sorted by mean UA (± std over folds) with the configuration keys that differ
  between runs; a layer curve (WA and UA against encoder layer, one line per pooling, as the paper's figure 5)
  when runs differ by layer; per-class recall of chosen runs as grouped bars (--compare, default: the best 3);
  the best run's pooled confusion matrix; failed sweep trials.
- when a run has compute figures (summary.json / results.json `compute`): UA against total GFLOPs and against
  inference GFLOPs per clip (log x) with the Pareto front, its table, the cheapest configuration within 1 UA
  point of the best, and the runs skipped for lack of figures (compute.py).
Writes DIR/report.md (images linked from DIR/images/) and DIR/report.html (images embedded: one file to send).
`--wandb` also logs the images and the tables (leaderboard, Pareto fronts) to a W&B run (job_type=report;
offline without an API key): `ser report SWEEP_DIR --wandb` is how a sweep's plots reach W&B.

Layout: runs.py (loading runs, the keys that differ), doc.py (the Markdown / HTML document), sections.py (what a
report shows), compute.py (accuracy against FLOPs, Pareto front), build.py (make_report), command.py (the
`ser report` CLI); the figures are run/plots.py.
"""

from ser_lightning.run.report.build import make_report
from ser_lightning.run.report.command import add_subcommand
from ser_lightning.run.report.doc import Doc, pct
from ser_lightning.run.report.runs import ReportError, Run, collect, differing_keys, load_run, never_differs
from ser_lightning.run.report.sections import METRICS, comparison_sections, single_run_sections

__all__ = [
    "METRICS", "Doc", "ReportError", "Run", "add_subcommand", "collect", "comparison_sections", "differing_keys",
    "load_run", "make_report", "never_differs", "pct", "single_run_sections",
]  # fmt: skip
