"""`ser report`: accuracy against compute (run/report/compute.py). The Pareto front and the cheapest-within-1-UA
choice on hand-made points with a hand-computed answer; a report over fake run folders (summary.json /
results.json with the `compute` schema of run/compute.py) draws both plots, tables exactly the front, names the
runs without compute figures, and `--wandb` logs the plots and the front offline."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

from ser_lightning.cli import main
from ser_lightning.run.cv import summarize
from ser_lightning.run.report import make_report
from ser_lightning.run.report.compute import Point, cheapest_within, pareto_front, points
from ser_lightning.run.report.runs import collect

CLASSES = ["neutral", "happy", "sad", "angry"]
PNG = b"\x89PNG\r\n\x1a\n"


def P(name: str, ua: float, total: float, inference: float = 1.0, std: float = 0.01) -> Point:
    return Point(name, ua, std, total, inference, 1000)


# ---------------------------------------------------------------------------------------------- the front
def test_pareto_front_dominated_ties_and_equal_flops():
    pts = [
        P("a", 0.70, 10),  # cheapest
        P("g", 0.60, 10),  # equal FLOPs to a, lower UA: dominated
        P("e", 0.70, 50),  # equal UA to a, more FLOPs: dominated
        P("b", 0.80, 100),
        P("d", 0.80, 100),  # identical to b: neither dominates the other, both on the front
        P("c", 0.75, 200),  # b beats it on both
        P("f", 0.85, 1000),  # the best
        P("h", 0.85, 2000),  # as good as f, dearer: dominated
    ]
    front = pareto_front(pts, "total")
    assert [p.name for p in front] == ["a", "b", "d", "f"]  # cheapest first, ties by name
    # the same points against inference FLOPs: another front
    inf = [P("x", 0.70, 1, inference=5), P("y", 0.80, 1, inference=5), P("z", 0.60, 1, inference=1),
           P("w", 0.65, 1, inference=3)]  # fmt: skip
    assert [p.name for p in pareto_front(inf, "inference")] == ["z", "w", "y"]
    assert pareto_front([], "total") == []
    assert [p.name for p in pareto_front([P("only", 0.5, 7)])] == ["only"]


def test_cheapest_within_one_ua_point_of_the_best():
    pts = [P("best", 0.85, 1000), P("near", 0.84, 300), P("nearer", 0.845, 500), P("far", 0.8399, 10)]
    assert cheapest_within(pts).name == "near"  # exactly 1 point below counts; 0.8399 does not
    assert cheapest_within(pts, tolerance=0.006).name == "nearer"
    assert cheapest_within(pts, tolerance=0.0).name == "best"
    assert cheapest_within([P("a", 0.8, 5), P("b", 0.8, 5)]).name == "a"  # equal: by name
    assert cheapest_within([P("a", 0.8, 5, inference=9), P("b", 0.7999, 50, inference=2)], "inference").name == "b"
    assert cheapest_within([]) is None


# ---------------------------------------------------------------------------------------------- fake run folders
def _fold(fold: int, seed: int) -> Dict[str, Any]:
    rng = np.random.default_rng(seed + fold)
    m = rng.integers(0, 3, size=(4, 4)) + 6 * np.eye(4, dtype=int)
    recall = np.diag(m) / m.sum(1)
    res = {
        "fold": fold, "class_names": CLASSES, "confusion_matrix": m.tolist(), "n_test": int(m.sum()),
        "test/wa": float(np.trace(m) / m.sum()), "test/ua": float(recall.mean()), "test/f1_macro": 0.5,
        "test/f1_weighted": 0.5, "test_speakers": [f"{fold:02d}"], "pooling": "qkv", "layers": [3],
        "encoder": {"source": "openai/whisper-base", "input_seconds": "clip", "layers": [3]},
        "corpus": "ravdess", "config_hash": "x", "wall_time_s": 1.0,
    }  # fmt: skip
    res.update({f"test/recall_{c}": float(r) for c, r in zip(CLASSES, recall)})
    return res


def compute(total: float, inference: float, trainable: int = 12345) -> Dict[str, Any]:
    """The `compute` block run/compute.py writes (every key of its schema)."""
    encode = total * 0.6
    return {
        "encoder_gflops_per_clip": inference * 0.9, "encoder_gflops_per_audio_second": inference * 0.3,
        "head_gflops_per_clip": inference * 0.1, "inference_gflops_per_clip": inference,
        "train_gflops_per_epoch": (total - encode) / 10, "epochs": 10, "train_gflops": total - encode,
        "encode_gflops": encode, "total_gflops": total, "trainable_parameters": trainable,
        "total_parameters": trainable + 70_000_000, "clips": {"train": 100, "val": 20, "test": 30},
        "counter": "torch.utils.flop_counter",
    }  # fmt: skip


def make_cv(folder: Path, ua: float, std: float, comp: Optional[Dict[str, Any]], seed: int = 0) -> None:
    """A `ser cv` folder: fold_K/results.json + summary.json (cv.summarize), UA set to a known value."""
    results = [_fold(k, seed) for k in (1, 2)]
    for r in results:
        (folder / f"fold_{r['fold']}").mkdir(parents=True, exist_ok=True)
        (folder / f"fold_{r['fold']}" / "results.json").write_text(json.dumps(r))
    summary = summarize(results)
    summary["test/ua"] = {"mean": ua, "std": std, "folds": [ua - std / 2, ua + std / 2]}
    if comp is not None:
        summary["compute"] = comp
    (folder / "summary.json").write_text(json.dumps(summary))


def make_train(folder: Path, ua: float, comp: Optional[Dict[str, Any]]) -> None:
    """A `ser train` folder: results.json only (its `compute` is the fold's)."""
    r = _fold(1, 7)
    r["test/ua"] = ua
    if comp is not None:
        r["compute"] = comp
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(r))


RUNS: Dict[str, Tuple[float, float, Optional[Tuple[float, float]]]] = {
    # name: (UA, std, (total GFLOPs, inference GFLOPs/clip)); front on total: cheap, mid, top;
    # on inference: lean, mid, top
    "cheap": (0.60, 0.02, (100.0, 50.0)),
    "mid": (0.75, 0.03, (1_000.0, 20.0)),
    "waste": (0.70, 0.01, (5_000.0, 80.0)),  # dominated by mid on both
    "top": (0.80, 0.02, (20_000.0, 10.0)),
    "near": (0.795, 0.01, (30_000.0, 60.0)),  # within 1 point of top but dearer on both: dominated
    "old": (0.90, 0.01, None),  # no compute: skipped, not plotted, not on a front
}


def _make_runs(root: Path) -> None:
    for name, (ua, std, c) in RUNS.items():
        make_cv(root / name, ua, std, None if c is None else compute(*c), seed=len(name))
    make_train(root / "lean", 0.55, compute(200_000.0, 1.0, trainable=999))  # a single fold: cheapest inference


def _section_tables(md: str) -> List[List[List[str]]]:
    """The tables (rows of cells, header dropped) of the 'Accuracy against compute' section."""
    section = md.split("## Accuracy against compute", 1)[1].split("\n## ", 1)[0]
    tables, rows = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            tables.append([r for r in rows[2:]])
            rows = []
    return tables


def test_report_draws_both_plots_and_tables_exactly_the_front(tmp_path):
    _make_runs(tmp_path / "runs")
    runs, _ = collect([tmp_path / "runs"])
    pts, skipped = points(runs)
    assert skipped == [("old", "no compute figures")]
    assert {p.name: p.trainable_parameters for p in pts}["lean"] == 999  # a train run's results.json compute

    res = make_report([tmp_path / "runs"], tmp_path / "rep")
    out = tmp_path / "rep"
    for name in ("ua_vs_total_gflops", "ua_vs_inference_gflops"):
        assert res["images"][name] == out / "images" / f"{name}.png"
        assert res["images"][name].read_bytes()[:8] == PNG
    md = (out / "report.md").read_text()
    assert "images/ua_vs_total_gflops.png" in md and "images/ua_vs_inference_gflops.png" in md
    assert len(re.findall(r"src='data:image/png;base64,", (out / "report.html").read_text())) == md.count("![")
    total, inference = _section_tables(md)
    assert [r[0] for r in total] == ["cheap", "mid", "top"]  # exactly the front, cheapest first
    assert [r[0] for r in inference] == ["lean", "top"]
    assert total[2] == ["top", "80.00 ± 2.00", "20,000", "10", "12,345"]
    assert inference[0] == ["lean", "55.00 ± 0.00", "200,000", "1", "999"]
    # cheapest within 1 UA point of the best plotted run (top, 80.00): near is 0.5 points below but dearer
    assert ("within 1 UA point of the best plotted one (top, UA 80.00 ± 2.00) on total GFLOPs (encoding the corpus + "
            "training): **top**") in md
    assert "Skipped, not plotted" in md and "old (no compute figures)" in md
    assert "old" not in {r[0] for t in (total, inference) for r in t}


def test_no_compute_figures_no_section(tmp_path):
    make_cv(tmp_path / "runs" / "a", 0.7, 0.01, None)
    make_cv(tmp_path / "runs" / "b", 0.8, 0.01, None, seed=1)
    res = make_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Accuracy against compute" not in md
    assert not {"ua_vs_total_gflops", "ua_vs_inference_gflops"} & set(res["images"])
    # one run with figures is enough for the section; the other is named as skipped
    make_cv(tmp_path / "runs" / "b", 0.8, 0.01, compute(10.0, 1.0), seed=1)
    make_report([tmp_path / "runs"], tmp_path / "rep2")
    md = (tmp_path / "rep2" / "report.md").read_text()
    assert "## Accuracy against compute" in md and "a (no compute figures)" in md
    assert [[r[0] for r in t] for t in _section_tables(md)] == [["b"], ["b"]]


def test_a_single_run_report_with_compute(tmp_path):
    make_cv(tmp_path / "cv", 0.7, 0.01, compute(10.0, 1.0))
    res = make_report([tmp_path / "cv"], tmp_path / "rep")
    assert {"ua_vs_total_gflops", "ua_vs_inference_gflops", "confusion_pooled"} <= set(res["images"])
    assert "(the best itself)" in (tmp_path / "rep" / "report.md").read_text()


def test_wandb_logs_the_plots_and_the_front_offline(tmp_path, monkeypatch):
    _make_runs(tmp_path / "runs")
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--wandb"]) == 0
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    images = {p.name for p in run_dir.glob("files/media/images/report/*.png")}
    for name in ("ua_vs_total_gflops", "ua_vs_inference_gflops"):
        assert any(i.startswith(name + "_") for i in images), images
    for cost, front in (("total", ["cheap", "mid", "top"]), ("inference", ["lean", "top"])):
        (path,) = run_dir.glob(f"files/media/table/report/pareto_{cost}_table_*.table.json")
        table = json.loads(path.read_text())
        assert table["columns"][:3] == ["run", "ua_mean", "ua_std"]
        assert [r[0] for r in table["data"]] == front
        assert table["data"][-1][1] == pytest.approx(0.80)
