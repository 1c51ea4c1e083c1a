"""`ser report RUN_DIR... [--out DIR] [--compare NAME...] [--wandb]`: Markdown + HTML reports readable without W&B.

Inputs: CV folders (`ser cv`: summary.json + fold_K/), single-fold folders (`ser train`: results.json), sweep
folders (`ser sweep`: sweep_state.json + one folder per trial), or a folder whose sub-folders are any of these.

- one CV: summary table (mean ± std over folds), per-fold table, per-class recall (table + bars), row-normalised
  confusion matrices pooled over folds and per fold;
- several runs / a sweep: leaderboard sorted by mean UA (± std over folds) with the configuration keys that differ
  between runs; a layer curve (WA and UA against encoder layer, one line per pooling, as the paper's figure 5)
  when runs differ by layer; per-class recall of chosen runs as grouped bars (--compare, default: the best 3);
  the best run's pooled confusion matrix; failed sweep trials.
Writes DIR/report.md (images linked from DIR/images/) and DIR/report.html (images embedded: one file to send).
`--wandb` also logs the images and the leaderboard to a W&B run (job_type=report; offline without an API key).
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ser_lightning.utils.io import atomic_write_text, read_json

# configuration keys that never make two runs different (where / how they are written, logged or cached)
IGNORED_KEYS = ("output_dir", "wandb.", "cv.", "data.fold", "trainer.enable_progress_bar", "cache.", "data.table_cache_dir",
                "data.num_workers", "data.root")  # fmt: skip
METRICS = (("test/wa", "WA"), ("test/ua", "UA"), ("test/f1_macro", "macro F1"), ("test/f1_weighted", "weighted F1"))


class ReportError(ValueError):
    pass


@dataclass
class Run:
    name: str
    path: Path
    kind: str  # cv | train
    summary: Dict[str, Any]
    folds: List[Dict[str, Any]]
    config: Dict[str, Any] = field(default_factory=dict)  # flattened config of the (first) fold
    params: Dict[str, Any] = field(default_factory=dict)  # sweep parameters, when the run is a sweep trial

    def value(self, key: str, default: Any = None) -> Any:
        """A configuration value as the run used it: its config.yaml first (overrides given after the sweep's
        parameters win there), then the sweep parameter (a run without config.yaml). `model.layer` of a run that
        fused `model.layers` is None: it was not used (the schema default -1 would read as "the last layer")."""
        if key == "model.layer" and self.value("model.layers"):
            return None
        if key in self.config:
            return self.config[key]
        return self.params.get(key, default)

    def stat(self, key: str) -> Tuple[float, float]:
        s = self.summary.get(key) or {}
        return float(s.get("mean", float("nan"))), float(s.get("std", 0.0))

    @property
    def class_names(self) -> List[str]:
        return list(self.summary["class_names"])

    @property
    def layer(self) -> Optional[int]:
        layers = self.summary.get("layers") or []
        return int(layers[0]) if len(layers) == 1 else None


# ---------------------------------------------------------------------------------------------- loading
def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = d
    return out


def _config(folder: Path) -> Dict[str, Any]:
    import yaml

    try:
        return _flatten(yaml.safe_load((folder / "config.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError):
        return {}


def load_run(path: Path, name: Optional[str] = None, params: Optional[Dict[str, Any]] = None) -> Run:
    """A CV folder (summary.json) or a single-fold folder (results.json)."""
    path = Path(path)
    summary = read_json(path / "summary.json")
    if isinstance(summary, dict):
        folds = [r for k in summary.get("folds", []) if isinstance(r := read_json(path / f"fold_{k}" / "results.json"), dict)]
        cfg = _config(path / f"fold_{summary['folds'][0]}") if summary.get("folds") else {}
        return Run(name or path.name, path, "cv", summary, folds, cfg, dict(params or {}))
    results = read_json(path / "results.json")
    if isinstance(results, dict) and "test/ua" in results:
        from ser_lightning.run.cv import summarize

        return Run(name or path.name, path, "train", summarize([results]), [results], _config(path), dict(params or {}))
    raise ReportError(f"{path} holds no finished run (no summary.json or results.json)")


def collect(inputs: Sequence[Path]) -> Tuple[List[Run], List[Dict[str, Any]]]:
    """Runs (and failed sweep trials) found in the given folders."""
    runs: List[Run] = []
    failed: List[Dict[str, Any]] = []
    for folder in map(Path, inputs):
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder")
        state = read_json(folder / "sweep_state.json")
        if isinstance(state, dict):
            for t in state.get("trials", []):
                if t.get("status") == "finished":
                    try:
                        runs.append(load_run(folder / t["name"], t["name"], t.get("params")))
                    except ReportError:
                        failed.append({**t, "status": "finished, outputs missing"})
                elif t.get("status") in ("failed", "running", "interrupted", "pending"):
                    failed.append(t)
            continue
        if (folder / "summary.json").is_file() or (folder / "results.json").is_file():
            runs.append(load_run(folder))
            continue
        children = [c for c in sorted(folder.iterdir()) if (c / "summary.json").is_file() or (c / "results.json").is_file()]
        if not children:
            raise ReportError(f"{folder}: no CV (summary.json), fold (results.json) or sweep (sweep_state.json) here")
        runs += [load_run(c) for c in children]
    if not runs:
        raise ReportError("no finished runs to report on")
    _unique_names(runs)
    return runs, failed


def _unique_names(runs: List[Run]) -> None:
    counts: Dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in runs:
        if counts[r.name] > 1:
            r.name = f"{r.path.parent.name}/{r.name}"


def _schema_defaults() -> Dict[str, Any]:
    from omegaconf import OmegaConf

    from ser_lightning.config import SERConfig

    schema = OmegaConf.to_container(OmegaConf.structured(SERConfig), resolve=False, throw_on_missing=False)
    return _flatten(schema)


def differing_keys(runs: Sequence[Run]) -> List[str]:
    """Configuration keys whose value differs between runs (what the leaderboard shows)."""
    if len(runs) < 2:
        return []
    from ser_lightning.config import GROUPS

    # group selections (data=ravdess) are not config keys: what they set shows up as data.*, model.*, ...
    # (`experiment` is also a config key, so an experiment's name still shows when it differs)
    keys = sorted({k for r in runs for k in r.config} | {k for r in runs for k in r.params if k not in GROUPS})
    defaults = _schema_defaults()
    out = []
    for k in keys:
        if any(k == p.rstrip(".") or (p.endswith(".") and k.startswith(p)) for p in IGNORED_KEYS):
            continue
        # a key missing from a run's config.yaml was added to the schema after that run: it ran with the default
        values = {repr(r.value(k, defaults.get(k))) for r in runs}
        if len(values) > 1:
            out.append(k)
    return out


# ---------------------------------------------------------------------------------------------- document
class Doc:
    """A tiny document model rendered to Markdown and to self-contained HTML."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: List[Tuple[str, Any]] = []

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(header), [[str(c) for c in r] for r in rows])))

    def img(self, path: Path, caption: str) -> None:
        self.blocks.append(("img", (Path(path), caption)))

    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, x in self.blocks:
            if kind == "h":
                out += [f"## {x}", ""]
            elif kind == "p":
                out += [x, ""]
            elif kind == "table":
                header, rows = x
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("")
            elif kind == "img":
                path, caption = x
                out += [f"![{caption}]({path.relative_to(base).as_posix()})", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
               "text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
               "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}")  # fmt: skip
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
               f"<style>{css}</style></head><body><h1>{html.escape(self.title)}</h1>"]  # fmt: skip
        for kind, x in self.blocks:
            if kind == "h":
                out.append(f"<h2>{html.escape(x)}</h2>")
            elif kind == "p":
                out.append(f"<p>{html.escape(x).replace('`', '')}</p>")
            elif kind == "table":
                header, rows = x
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</table>")
            elif kind == "img":
                path, caption = x
                data = base64.b64encode(path.read_bytes()).decode()
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip
        out.append("</body></html>")
        return "\n".join(out)


def pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def _describe(run: Run) -> str:
    s = run.summary
    enc = s.get("encoder") or {}
    layers = ",".join(map(str, s.get("layers") or [])) or "?"
    return (f"Corpus {s.get('corpus')}, folds {s.get('folds')} ({s.get('n_test')} test clips), encoder "
            f"`{enc.get('source')}` layer(s) {layers}, input {enc.get('input_seconds')}, pooling {s.get('pooling')}. "
            "Mean ± std (ddof=1) over folds, percent; checkpoints chosen on validation speakers.")  # fmt: skip


# ---------------------------------------------------------------------------------------------- sections
def single_run_sections(doc: Doc, run: Run, images: Path) -> Dict[str, Path]:
    from ser_lightning.run.plots import confusion_png, per_fold_confusions, recall_bars_png

    out: Dict[str, Path] = {}
    doc.p(_describe(run))
    doc.h("Summary")
    doc.table(["metric", "mean ± std (%)"] + [f"fold {r['fold']}" for r in run.folds],
              [[label, pct(*run.stat(key))] + [f"{100 * r[key]:.2f}" for r in run.folds] for key, label in METRICS])  # fmt: skip
    doc.h("Folds")
    doc.table(["fold", "test speakers", "n", "WA", "UA", "macro F1"],
              [[r["fold"], " ".join(map(str, r.get("test_speakers", []))), r["n_test"], f"{100 * r['test/wa']:.2f}",
                f"{100 * r['test/ua']:.2f}", f"{100 * r['test/f1_macro']:.2f}"] for r in run.folds])  # fmt: skip
    doc.h("Per-class recall")
    recalls = {c: run.stat(f"test/recall_{c}") for c in run.class_names}
    doc.table(["class", "recall mean ± std (%)", "test clips"],
              [[c, pct(*recalls[c]), sum(run.summary["confusion_matrix"][i])] for i, c in enumerate(run.class_names)])  # fmt: skip
    out["per_class_recall"] = recall_bars_png({run.name: recalls}, run.class_names, images / f"{_slug(run.name)}_recall.png",
                                              title=f"{run.name}: per-class recall (mean ± std over folds)")  # fmt: skip
    doc.img(out["per_class_recall"], "per-class recall, mean ± std over folds")
    doc.h("Confusion matrices (rows = true class, row-normalised)")
    out["confusion_pooled"] = confusion_png(run.summary["confusion_matrix"], run.class_names,
                                            images / f"{_slug(run.name)}_confusion_pooled.png",
                                            title=f"{run.name}: pooled over folds")  # fmt: skip
    doc.img(out["confusion_pooled"], "pooled over folds")
    for k, p in per_fold_confusions(run.folds, run.class_names, images / _slug(run.name)).items():
        out[f"confusion_fold_{k}"] = p
        doc.img(p, f"fold {k}")
    return out


def comparison_sections(doc: Doc, runs: List[Run], failed: List[Dict[str, Any]], images: Path,
                        compare: Optional[Sequence[str]] = None) -> Tuple[Dict[str, Path], Dict[str, Any]]:  # fmt: skip
    from ser_lightning.run.plots import confusion_png, layer_curve_png, leaderboard_png, recall_bars_png

    out: Dict[str, Path] = {}
    ranked = sorted(runs, key=lambda r: r.stat("test/ua")[0], reverse=True)
    keys = differing_keys(ranked)
    defaults = _schema_defaults()  # a key a run's config.yaml lacks was added later: that run used the default
    doc.p(f"{len(runs)} runs, sorted by mean UA over folds (± sample std over folds), percent. Columns between "
          "'run' and 'folds' are the configuration keys that differ between runs. 'val UA (selection)' is the "
          "validation-speaker UA that chose each fold's checkpoint: choose configurations by it, not by test UA.")  # fmt: skip
    doc.h("Leaderboard")
    header = ["rank", "run"] + keys + ["folds", "n test"] + [label for _, label in METRICS] + ["val UA (selection)"]
    rows = []
    for i, r in enumerate(ranked, 1):
        cells = [r.value(k, defaults.get(k, "")) for k in keys]
        val = pct(*r.stat("val/ua_best")) if "val/ua_best" in r.summary else "-"
        rows.append([i, r.name] + cells + [len(r.folds), r.summary.get("n_test")] + [pct(*r.stat(k)) for k, _ in METRICS] + [val])
    doc.table(header, rows)
    out["leaderboard"] = leaderboard_png([r.name for r in ranked], [r.stat("test/ua")[0] for r in ranked],
                                         [r.stat("test/ua")[1] for r in ranked], images / "leaderboard_ua.png",
                                         title="mean UA over folds (± std)")  # fmt: skip
    doc.img(out["leaderboard"], "UA, mean ± std over folds")
    tables: Dict[str, Any] = {"leaderboard": (header, rows)}

    # layer curve: runs that differ by (single) layer; one line per pooling and any other differing setting
    with_layer = [r for r in ranked if r.layer is not None]
    if len({r.layer for r in with_layer}) > 1:
        others = [k for k in keys if k not in ("model.layer", "model.layers", "model.pooling", "experiment")]
        series: Dict[str, List[Dict[str, float]]] = {}
        for r in with_layer:
            label = str(r.summary.get("pooling"))
            extra = [f"{k.split('.')[-1]}={r.value(k, defaults.get(k))}" for k in others]
            if extra:
                label += " (" + ", ".join(extra) + ")"
            wa, wa_std = r.stat("test/wa")
            ua, ua_std = r.stat("test/ua")
            series.setdefault(label, []).append({"layer": r.layer, "wa": wa, "wa_std": wa_std, "ua": ua, "ua_std": ua_std})
        doc.h("WA and UA by encoder layer")
        encoders = sorted({Path(str((r.summary.get("encoder") or {}).get("source"))).name for r in with_layer})
        out["layer_curve"] = layer_curve_png(series, images / "layer_curve.png", title=f"encoder {', '.join(encoders)}")
        doc.img(out["layer_curve"], "WA and UA (mean ± std over folds) by encoder layer, one line per pooling")
        layer_rows = []
        for label, pts in series.items():
            for pt in sorted(pts, key=lambda p: p["layer"]):
                layer_rows.append([label, pt["layer"], pct(pt["wa"], pt["wa_std"]), pct(pt["ua"], pt["ua_std"])])
        doc.table(["series", "layer", "WA", "UA"], layer_rows)
        tables["layer_curve"] = (["series", "layer", "WA", "UA"], layer_rows)

    # per-class comparison of chosen runs
    chosen = _choose(ranked, compare)
    classes = ranked[0].class_names
    same_classes = [r for r in chosen if r.class_names == classes]
    doc.h("Per-class recall of " + ("the chosen runs" if compare else f"the best {len(same_classes)} runs"))
    recalls = {r.name: {c: r.stat(f"test/recall_{c}") for c in classes} for r in same_classes}
    out["per_class_comparison"] = recall_bars_png(recalls, classes, images / "per_class_comparison.png")
    doc.img(out["per_class_comparison"], "per-class recall, mean ± std over folds")
    doc.table(["class"] + [r.name for r in same_classes], [[c] + [pct(*recalls[r.name][c]) for r in same_classes] for c in classes])

    best = ranked[0]
    doc.h(f"Best run: {best.name}")
    doc.p(_describe(best))
    out["best_confusion"] = confusion_png(best.summary["confusion_matrix"], best.class_names,
                                          images / "best_confusion_pooled.png", title=f"{best.name}: pooled over folds")  # fmt: skip
    doc.img(out["best_confusion"], f"{best.name}: confusion matrix pooled over folds (row-normalised)")
    if failed:
        doc.h("Trials without results")
        doc.table(["trial", "status", "exit", "last line of the log"],
                  [[t.get("name"), t.get("status"), t.get("returncode"),
                    ((t.get("error") or "").strip().splitlines() or [""])[-1][:200]] for t in failed])  # fmt: skip
    return out, tables


def _choose(ranked: List[Run], compare: Optional[Sequence[str]]) -> List[Run]:
    if not compare:
        return ranked[:3]
    by_name = {r.name: r for r in ranked}
    chosen = []
    for name in compare:
        match = by_name.get(name) or next((r for r in ranked if r.path.name == name or str(r.path) == name), None)
        if match is None:
            raise ReportError(f"--compare {name}: no such run; runs: {', '.join(by_name)}")
        chosen.append(match)
    return chosen


# ---------------------------------------------------------------------------------------------- entry
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
    else:
        doc = Doc(title or f"Report: {len(runs)} runs")
        pngs, tables = comparison_sections(doc, runs, failed, images, compare)
    doc.p("Inputs: " + ", ".join(f"`{p}`" for p in inputs))
    atomic_write_text(out / "report.md", doc.markdown(out))
    atomic_write_text(out / "report.html", doc.html())
    result: Dict[str, Any] = {"markdown": out / "report.md", "html": out / "report.html", "images": pngs,
                              "runs": [r.name for r in runs], "failed": [t.get("name") for t in failed]}  # fmt: skip
    if wandb_mode is not None:
        from ser_lightning.tracking import log_report_run

        result["wandb"] = log_report_run(out, doc.title, pngs, tables, mode=wandb_mode)
    return result


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("report", help="Markdown + HTML report of CV / sweep folders (tables, confusion matrices, layer curve)")
    p.add_argument("run_dirs", nargs="+", type=Path, help="CV folders, ser train folders, sweep folders, or their parent")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/report for one input, else ./report)")
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN", help="runs for the per-class comparison (default: best 3)")
    p.add_argument("--title", default=None)
    p.add_argument("--wandb", nargs="?", const="auto", default=None, metavar="MODE",
                   help="also log the images and tables to W&B (auto: online with an API key, else offline)")

    def run(args: argparse.Namespace) -> int:
        out = args.out or (args.run_dirs[0] / "report" if len(args.run_dirs) == 1 else Path("report"))
        try:
            res = make_report(args.run_dirs, out, args.compare, args.title, args.wandb)
        except ReportError as e:
            print(f"ser report: {e}", file=sys.stderr)
            return 1
        print(f"[ser report] {len(res['runs'])} run(s) -> {res['markdown']} and {res['html']} ({len(res['images'])} images)")
        if res.get("wandb"):
            print(f"[ser report] W&B: {res['wandb']}")
        return 0

    return run
