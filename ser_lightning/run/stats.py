"""`ser data stats`: what a corpus holds, fold by fold and split by split, before anything is trained.

`data_stats` builds the validated utterance table (decoding every clip once, through the table cache) and,
for every fold, the train / val / test split that folds.make_split gives: clips per class, speakers, clips per
speaker, total and mean duration. `format_stats` renders it as a fixed-width text table.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ser_lightning.data.table import dataset_rows
from ser_lightning.data.folds import check_classes, coverage_problem, fold_speakers, make_split
from ser_lightning.data.table import build_table

SPLITS = ("train", "val", "test")


def _split_stats(rows: Sequence[tuple], class_names: Sequence[str]) -> Dict[str, Any]:
    """rows: (label_name, speaker, duration) of one split."""
    per_class = Counter(r[0] for r in rows)
    per_speaker = Counter(r[1] for r in rows)
    total = float(sum(r[2] for r in rows))
    clips = len(rows)
    return {
        "clips": clips,
        "counts": {c: per_class.get(c, 0) for c in class_names},
        "missing_classes": check_classes("", [r[0] for r in rows], class_names),
        "speakers": len(per_speaker),
        "clips_per_speaker": dict(sorted(per_speaker.items())),
        "clips_per_speaker_min": min(per_speaker.values(), default=0),
        "clips_per_speaker_max": max(per_speaker.values(), default=0),
        "clips_per_speaker_mean": clips / len(per_speaker) if per_speaker else 0.0,
        "duration_total_s": total,
        "duration_mean_s": total / clips if clips else 0.0,
    }


def data_stats(
    data_cfg: Dict[str, Any],
    num_folds: Optional[int] = None,
    val_speakers: int = 2,
    seed: int = 0,
    report_dir: Optional[Path] = None,
    val_fraction: Optional[float] = None,
) -> Dict[str, Any]:
    """Per-fold, per-split statistics of a corpus (JSON-ready).

    num_folds: for corpora without official folds (default data_cfg['num_folds'], else 5). The validation
    speakers are those make_split draws with (val_speakers, seed), or data_cfg['val_speaker_ids'] when set.
    """
    table = build_table(data_cfg, report_dir)
    corpus = table.corpus
    num_folds = num_folds or data_cfg.get("num_folds")
    class_names = list(table.class_names)
    ds = table.dataset
    rows = list(zip(ds["label_name"], ds["speaker"], ds["duration"]))
    report = table.report()
    out: Dict[str, Any] = {
        "corpus": corpus.name,
        "class_names": class_names,
        "overall": _split_stats(rows, class_names),
        "excluded": dict(corpus.excluded),
        "skipped": report["skipped"],
        "cropped": report["cropped"],
        "notes": list(corpus.notes),
        "folds": [],
    }
    val_ids = data_cfg.get("val_speaker_ids")
    folds = fold_speakers(corpus, num_folds, seed)
    out["coverage_problem"] = coverage_problem(corpus, len(folds))  # said up front: no fold count can fix it later
    for fold in sorted(folds):
        split = make_split(corpus, fold, num_folds, val_speakers, val_ids, seed, val_fraction=val_fraction,
                           rows=dataset_rows(ds))  # fmt: skip
        members = {"train": set(split.train_speakers), "val": set(split.val_speakers), "test": set(split.test_speakers)}
        entry: Dict[str, Any] = {"fold": fold}
        for name in SPLITS:
            entry[name] = _split_stats([r for r in rows if r[1] in members[name]], class_names)
            entry[name]["speaker_ids"] = sorted(members[name])
        out["folds"].append(entry)
    out["warnings"] = imbalance_warnings(out)
    return out


def imbalance_warnings(stats: Dict[str, Any], size_ratio: float = 2.0, class_ratio: float = 3.0) -> List[str]:
    """What a user should look at before training: test folds of very different sizes, strongly unbalanced classes,
    and splits missing a class."""
    out: List[str] = []
    if stats.get("coverage_problem"):
        out.append(stats["coverage_problem"])
    sizes = {f["fold"]: f["test"]["clips"] for f in stats["folds"]}
    if sizes and min(sizes.values()) and max(sizes.values()) / min(sizes.values()) > size_ratio:
        out.append(f"test folds differ in size more than {size_ratio:g}x: " + ", ".join(f"fold {k} {n}" for k, n in sizes.items()))
    counts = stats["overall"]["counts"]
    if counts and min(counts.values()) and max(counts.values()) / min(counts.values()) > class_ratio:
        out.append(f"classes are unbalanced (largest / smallest > {class_ratio:g}x): "
                   + ", ".join(f"{c} {n}" for c, n in counts.items()) + "; UA (macro recall) weighs each class equally")  # fmt: skip
    for f in stats["folds"]:
        for name in SPLITS:
            if f[name]["missing_classes"]:
                out.append(f"fold {f['fold']} {name} split has no {', '.join(f[name]['missing_classes'])}")
    return out


def _fmt_table(header: List[str], body: List[List[str]], left: int = 2) -> List[str]:
    """Fixed-width rows: the first `left` columns left-aligned, the numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]

    def line(cells: List[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body]


def format_stats(stats: Dict[str, Any]) -> str:
    """A readable fixed-width table: one row per fold and split, then the whole corpus."""
    classes = stats["class_names"]
    header = ["fold", "split", "clips", "spk", "clips/spk", "hours", "mean s"] + list(classes)

    def row(fold: str, split: str, s: Dict[str, Any]) -> List[str]:
        per_spk = f"{s['clips_per_speaker_min']}-{s['clips_per_speaker_max']}"
        return [fold, split, str(s["clips"]), str(s["speakers"]), per_spk, f"{s['duration_total_s'] / 3600:.2f}",
                f"{s['duration_mean_s']:.2f}"] + [str(s["counts"][c]) for c in classes]  # fmt: skip

    body = [row(str(f["fold"]), name, f[name]) for f in stats["folds"] for name in SPLITS]
    body.append(row("all", "-", stats["overall"]))
    lines = [f"corpus {stats['corpus']}: {stats['overall']['clips']} clips, {stats['overall']['speakers']} speakers, "
             f"{len(stats['folds'])} folds; skipped {stats['skipped']}, cropped {stats['cropped']}"]  # fmt: skip
    lines += _fmt_table(header, body)
    if stats["excluded"]:
        lines.append("excluded: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats["excluded"].items())))
    lines += [f"WARNING {w}" for w in stats.get("warnings", [])]
    lines += [f"note: {n}" for n in stats["notes"]]
    return "\n".join(lines)
