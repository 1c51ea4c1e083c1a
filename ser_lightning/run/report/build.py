"""`make_report`: collect the runs, write the sections, render report.md and report.html (and log to W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ser_lightning.run.report.compute import compute_section
from ser_lightning.run.report.doc import Doc
from ser_lightning.run.report.errors import errors_page, misclassified, top_confusions
from ser_lightning.run.report.runs import collect
from ser_lightning.run.report.sections import METRICS, comparison_sections, single_run_sections
from ser_lightning.utils.io import atomic_write_text


def make_report(inputs: Sequence[Path], out: Path, compare: Optional[Sequence[str]] = None, title: Optional[str] = None,
                wandb_mode: Optional[str] = None) -> Dict[str, Any]:  # fmt: skip
    """Write out/report.md, out/report.html and out/images/*.png; returns paths and what was reported."""
    runs, failed = collect(inputs)
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    tables: Dict[str, Any] = {}
    if len(runs) == 1 and not failed:
        run = runs[0]
        doc = Doc(title or f"Report: {run.name}")
        pngs = single_run_sections(doc, run, images)
        tables["summary"] = (["metric", "mean", "std"], [[label, *run.stat(k)] for k, label in METRICS])
        page = errors_page(run, out)
        if page is not None:
            rows = misclassified(run)
            doc.h("Misclassified test clips")
            doc.p(f"{len(rows)} misclassified test clips, each with an audio player and filters by true and predicted "
                  f"class: [{page.name}]({page.name}) (open it on the machine that holds the corpus). Most frequent:")  # fmt: skip
            doc.table(["true", "predicted", "clips"], top_confusions(rows))
    else:
        doc = Doc(title or f"Report: {len(runs)} runs")
        pngs, tables = comparison_sections(doc, runs, failed, images, compare)
    compute_pngs, compute_tables = compute_section(doc, runs, images)  # only when a run has compute figures
    pngs = {**pngs, **compute_pngs}
    tables.update(compute_tables)
    doc.p("Inputs: " + ", ".join(f"`{p}`" for p in inputs))
    atomic_write_text(out / "report.md", doc.markdown(out))
    atomic_write_text(out / "report.html", doc.html())
    result: Dict[str, Any] = {"markdown": out / "report.md", "html": out / "report.html", "images": pngs,
                              "errors": out / "errors.html" if (out / "errors.html").is_file() else None,
                              "runs": [r.name for r in runs], "failed": [t.get("name") for t in failed]}  # fmt: skip
    if wandb_mode is not None:
        from ser_lightning.tracking import log_report_run

        result["wandb"] = log_report_run(out, doc.title, pngs, tables, mode=wandb_mode)
    return result
