"""`errors.html`: every misclassified test clip of a run with an audio player, filterable by true and predicted
class, for listening locally (the W&B prediction table's counterpart without a server)."""

from __future__ import annotations

import html
import os
from collections import Counter
from pathlib import Path
from typing import Any, List, Optional

from ser_lightning.run.report.runs import Run
from ser_lightning.utils.io import atomic_write_text, read_json

PAGE = "errors.html"
_SCRIPT = """
function filt(){const t=document.getElementById('t').value,p=document.getElementById('p').value;
for(const r of document.querySelectorAll('tr.e')){r.style.display=((!t||r.dataset.t===t)&&(!p||r.dataset.p===p))?'':'none';}}
"""


def misclassified(run: Run) -> List[List[Any]]:
    """[fold, clip, path, speaker, true, predicted, confidence] of every misclassified test clip, by fold."""
    from ser_lightning.review import prediction_rows

    rows = []
    for result in run.folds:
        folder = run.fold_dir(result)
        predictions = read_json(folder / "test_predictions.json") if folder else None
        if not predictions:
            continue
        columns, fold_rows = prediction_rows(predictions, fold=int(result["fold"]))
        at = {c: i for i, c in enumerate(columns)}
        for r in fold_rows:
            if not r[at["correct"]]:
                rows.append([r[at["fold"]], r[at["clip"]], r[at["path"]], r[at["speaker"]], r[at["true"]],
                             r[at["predicted"]], r[at[f"p_{r[at['predicted']]}"]]])  # fmt: skip
    return rows


def _audio(path: str, page_dir: Path) -> str:
    if "::" in path:  # a member of a zip archive (ShEMO): no browser can play it from there
        return "<i>in a zip archive</i>"
    target = Path(path)
    try:
        src = os.path.relpath(target, page_dir)
    except ValueError:  # another drive (Windows)
        src = target.resolve().as_uri()
    return f"<audio controls preload='none' src='{html.escape(Path(src).as_posix())}'></audio>"


def errors_page(run: Run, out_dir: Path, limit: int = 2000) -> Optional[Path]:
    """Write out_dir/errors.html for `run` (None when it has no stored test predictions). The first `limit`
    misclassified clips get a row (the rest are counted on the page)."""
    folders = [run.fold_dir(r) for r in run.folds]
    if not any(f is not None and (f / "test_predictions.json").is_file() for f in folders):
        return None
    rows = misclassified(run)
    classes = run.class_names
    options = "".join(f"<option>{html.escape(c)}</option>" for c in classes)
    shown = rows[:limit]
    body = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run.name)}: misclassified clips</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;font-size:14px}"
        "td,th{border:1px solid #ccc;padding:3px 8px}th{background:#f0f0f0}</style>",
        f"<script>{_SCRIPT}</script></head><body><h1>{html.escape(run.name)}: misclassified test clips</h1>",
        f"<p>{len(rows)} misclassified of {sum(int(r['n_test']) for r in run.folds)} test clips"
        + (f"; the first {limit} are listed" if len(rows) > limit else "") + ". Audio plays from the corpus files "
        "on this machine (paths relative to this page).</p>",
        f"<p>true <select id='t' onchange='filt()'><option value=''>any</option>{options}</select> "
        f"predicted <select id='p' onchange='filt()'><option value=''>any</option>{options}</select></p>",
        "<table><tr><th>fold</th><th>clip</th><th>speaker</th><th>true</th><th>predicted</th><th>p(predicted)</th>"
        "<th>audio</th></tr>",
    ]
    for fold, clip, path, speaker, true, predicted, confidence in shown:
        body.append(f"<tr class='e' data-t='{html.escape(true)}' data-p='{html.escape(predicted)}'><td>{fold}</td>"
                    f"<td title='{html.escape(path)}'>{html.escape(clip)}</td><td>{html.escape(str(speaker))}</td>"
                    f"<td>{html.escape(true)}</td><td>{html.escape(predicted)}</td><td>{confidence:.3f}</td>"
                    f"<td>{_audio(path, out_dir)}</td></tr>")  # fmt: skip
    body.append("</table></body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / PAGE, "\n".join(body))
    return out_dir / PAGE


def top_confusions(rows: List[List[Any]], k: int = 10) -> List[List[Any]]:
    """[true, predicted, count] of the k most frequent confusions."""
    return [[t, p, n] for (t, p), n in Counter((r[4], r[5]) for r in rows).most_common(k)]
