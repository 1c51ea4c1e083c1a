"""The report's sections: one run in detail, or several runs compared (leaderboard, layer curve, per-class recall)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ser_lightning.run.report.doc import Doc, pct
from ser_lightning.run.report.runs import ReportError, Run, differing_keys, schema_defaults

METRICS = (("test/wa", "WA"), ("test/ua", "UA"), ("test/f1_macro", "macro F1"), ("test/f1_weighted", "weighted F1"))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def _describe(run: Run) -> str:
    s = run.summary
    enc = s.get("encoder") or {}
    layers = ",".join(map(str, s.get("layers") or [])) or "?"
    return (f"Corpus {s.get('corpus')}, folds {s.get('folds')} ({s.get('n_test')} test clips), encoder "
            f"`{enc.get('source')}` layer(s) {layers}, input {enc.get('input_seconds')}, pooling {s.get('pooling')}. "
            "Mean ± std (ddof=1) over folds, percent; checkpoints chosen on validation speakers.")  # fmt: skip


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
    cma_folds = [r for r in run.folds if r.get("cma_attention")]
    if cma_folds:  # model.fusion=cma: does the cross-layer attention attend uniformly?
        import shutil

        doc.h("Cross-layer attention (model.fusion=cma)")
        doc.p("Normalised attention entropy per head on a test batch (1 = uniform over the clip's frames, 0 = one "
              "frame); maps: query frame (rows) x key frame (columns) of a few test clips.")  # fmt: skip
        doc.table(["fold"] + [f"head {h}" for h in range(len(cma_folds[0]["cma_attention"]["entropy_per_head"]))],
                  [[r["fold"], *(f"{x:.3f}" for x in r["cma_attention"]["entropy_per_head"])] for r in cma_folds])  # fmt: skip
        for r in cma_folds:
            src = run.fold_dir(r) / r["cma_attention"]["map"] if run.fold_dir(r) else None
            if src is not None and src.is_file():
                dst = images / f"{_slug(run.name)}_cma_fold{r['fold']}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                out[f"cma_fold_{r['fold']}"] = dst
                doc.img(dst, f"fold {r['fold']}: cross-layer attention")
    return out


def comparison_sections(doc: Doc, runs: List[Run], failed: List[Dict[str, Any]], images: Path,
                        compare: Optional[Sequence[str]] = None) -> Tuple[Dict[str, Path], Dict[str, Any]]:  # fmt: skip
    from ser_lightning.run.plots import confusion_png, layer_curve_png, leaderboard_png, recall_bars_png

    out: Dict[str, Path] = {}
    ranked = sorted(runs, key=lambda r: r.stat("test/ua")[0], reverse=True)
    keys = differing_keys(ranked)
    defaults = schema_defaults()  # a key a run's config.yaml lacks was added later: that run used the default
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

