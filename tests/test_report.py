"""`ser report`: Markdown + HTML from CV / sweep folders. The run folders are written here in the exact formats
of `ser train` / `ser cv` / `ser sweep` (results.json, summary.json via cv.summarize, config.yaml,
sweep_state.json), with known numbers, so every table value can be checked."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import yaml

from ser_lightning.cli import main
from ser_lightning.run.cv import summarize
from ser_lightning.run.report import ReportError, collect, make_report

CLASSES = ["neutral", "happy", "sad", "angry"]
PNG = b"\x89PNG\r\n\x1a\n"


def fold_results(fold: int, cm: List[List[int]], layer: int, pooling: str) -> Dict[str, Any]:
    m = np.asarray(cm, dtype=float)
    recall = np.diag(m) / m.sum(1)
    precision = np.diag(m) / np.maximum(m.sum(0), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    res = {
        "fold": fold, "class_names": CLASSES, "confusion_matrix": cm, "n_test": int(m.sum()),
        "test/wa": float(np.trace(m) / m.sum()), "test/ua": float(recall.mean()), "test/f1_macro": float(f1.mean()),
        "test/f1_weighted": float((f1 * m.sum(1)).sum() / m.sum()), "test_speakers": [f"{fold:02d}", f"{fold + 10:02d}"],
        "encoder": {"source": "openai/whisper-base", "input_seconds": "clip", "layers": [layer]}, "pooling": pooling,
        "layers": [layer], "corpus": "ravdess", "config_hash": "x", "wall_time_s": 1.0,
        "monitor": "val/ua", "best_val": 0.5 + 0.01 * fold + 0.001 * layer,
    }  # fmt: skip
    res.update({f"test/recall_{c}": float(r) for c, r in zip(CLASSES, recall)})
    return res


def make_cv(folder: Path, layer: int = 3, pooling: str = "qkv", quality: int = 5, seed: int = 0) -> Dict[str, Any]:
    """A finished `ser cv` folder with 2 folds; higher quality = more clips on the diagonal."""
    rng = np.random.default_rng(seed)
    results = []
    for k in (1, 2):
        cm = rng.integers(0, 3, size=(4, 4))
        cm[np.diag_indices(4)] += quality + k
        r = fold_results(k, cm.tolist(), layer, pooling)
        (folder / f"fold_{k}").mkdir(parents=True, exist_ok=True)
        (folder / f"fold_{k}" / "results.json").write_text(json.dumps(r))
        cfg = {"model": {"layer": layer, "pooling": pooling, "heads": 6, "encoder": "openai/whisper-base"},
               "data": {"name": "ravdess", "fold": k, "root": "/data"}, "output_dir": str(folder / f"fold_{k}"),
               "wandb": {"group": folder.name}}  # fmt: skip
        (folder / f"fold_{k}" / "config.yaml").write_text(yaml.safe_dump(cfg))
        results.append(r)
    summary = summarize(results)
    (folder / "summary.json").write_text(json.dumps(summary))
    return summary


def _pct(stat: Dict[str, float]) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def _md_rows(md: str, first_cell: str) -> List[List[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith(f"| {first_cell}")]


def _check_outputs(out: Path, n_images_min: int) -> str:
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(linked) >= n_images_min
    for rel in linked:  # every linked image exists and is a PNG
        assert (out / rel).read_bytes()[:8] == PNG, rel
    embedded = re.findall(r"src='data:image/png;base64,", html)
    assert len(embedded) == len(linked)  # the HTML is self-contained: all images embedded
    assert "<table>" in html and "src='http" not in html
    return md


def test_single_cv_report(tmp_path):
    summary = make_cv(tmp_path / "cv_a")
    res = make_report([tmp_path / "cv_a"], tmp_path / "rep")
    md = _check_outputs(tmp_path / "rep", n_images_min=4)  # recall bars, pooled + 2 per-fold confusions
    (ua,) = _md_rows(md, "UA")
    assert ua[1] == _pct(summary["test/ua"])
    folds = json.loads((tmp_path / "cv_a" / "fold_2" / "results.json").read_text())
    assert ua[3] == f"{100 * folds['test/ua']:.2f}"
    for c in CLASSES:
        (row,) = _md_rows(md, c)
        assert row[1] == _pct(summary[f"test/recall_{c}"])
        assert int(row[2]) == sum(summary["confusion_matrix"][CLASSES.index(c)])
    assert set(res["images"]) >= {"confusion_pooled", "confusion_fold_1", "confusion_fold_2", "per_class_recall"}


def test_normalised_confusion():
    from ser_lightning.run.plots import normalise_rows

    norm = normalise_rows([[3, 1], [0, 0]])
    assert norm.tolist() == [[0.75, 0.25], [0.0, 0.0]]  # rows = true class; an empty row stays 0


def test_sweep_report_leaderboard_layer_curve_and_failures(tmp_path):
    sweep = tmp_path / "sweep"
    trials, summaries = [], {}
    for pooling, base in (("mean", 2), ("qkv", 6)):
        for layer in (1, 2, 3):
            name = f"layer-{layer}_pooling-{pooling}"
            summaries[name] = make_cv(sweep / name, layer, pooling, quality=base + 2 * layer, seed=layer)
            trials.append({"name": name, "params": {"model.layer": layer, "model.pooling": pooling}, "status": "finished",
                           "metric": summaries[name]["test/ua"]["mean"]})  # fmt: skip
    trials.append({"name": "layer-9_pooling-qkv", "params": {"model.layer": 9, "model.pooling": "qkv"}, "status": "failed",
                   "returncode": 1, "error": "Traceback ...\nValueError: layer 9 does not exist"})  # fmt: skip
    (sweep / "sweep_state.json").write_text(json.dumps({"trials": trials}))

    runs, failed = collect([sweep])
    assert len(runs) == 6 and [t["name"] for t in failed] == ["layer-9_pooling-qkv"]
    res = make_report([sweep], tmp_path / "rep", compare=["layer-1_pooling-mean", "layer-3_pooling-qkv"])
    md = _check_outputs(tmp_path / "rep", n_images_min=4)
    assert "layer_curve" in res["images"] and "per_class_comparison" in res["images"]

    # leaderboard sorted by mean UA, differing config keys as columns, nothing volatile
    header = next(line for line in md.splitlines() if line.startswith("| rank |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert "model.layer" in cols and "model.pooling" in cols
    assert not any(c.startswith(("output_dir", "wandb", "data.fold", "data.root")) for c in cols)
    rows = [r for r in (_md_rows(md, str(i)) for i in range(1, 7))]
    names = [r[0][1] for r in rows]
    expected = sorted(summaries, key=lambda n: -summaries[n]["test/ua"]["mean"])
    assert names == expected
    ua_col = cols.index("UA")
    assert [r[0][ua_col] for r in rows] == [_pct(summaries[n]["test/ua"]) for n in expected]
    # the validation UA that selected each fold's checkpoint: mean +- std of the folds' best_val
    val_col = cols.index("val UA (selection)")
    for r, n in zip(rows, expected):
        layer = int(n.split("_")[0].split("-")[1])
        vals = [0.51 + 0.001 * layer, 0.52 + 0.001 * layer]
        assert summaries[n]["val/ua_best"]["folds"] == pytest.approx(vals)
        assert r[0][val_col] == f"{100 * np.mean(vals):.2f} ± {100 * np.std(vals, ddof=1):.2f}"

    # layer curve: one series per pooling, every layer, the right numbers
    for pooling in ("mean", "qkv"):
        pts = _md_rows(md, pooling)
        assert [int(p[1]) for p in pts] == [1, 2, 3]
        for p in pts:
            s = summaries[f"layer-{p[1]}_pooling-{pooling}"]
            assert p[2] == _pct(s["test/wa"]) and p[3] == _pct(s["test/ua"])

    # per-class comparison of the chosen runs; the failed trial is listed
    comp_header = next(line for line in md.splitlines() if line.startswith("| class |"))
    assert "layer-1_pooling-mean" in comp_header and "layer-3_pooling-qkv" in comp_header
    assert "layer-9_pooling-qkv" in md and "ValueError: layer 9 does not exist" in md
    with pytest.raises(ReportError, match="no such run"):
        make_report([sweep], tmp_path / "rep2", compare=["nope"])


def test_cli_several_cv_dirs_and_wandb_offline(tmp_path, monkeypatch, capsys):
    make_cv(tmp_path / "runs" / "cv_a", quality=3)
    make_cv(tmp_path / "runs" / "cv_b", quality=9, seed=1)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "runs" / "cv_a"), str(tmp_path / "runs" / "cv_b"), "--out", str(out), "--wandb"]) == 0
    md = _check_outputs(out, n_images_min=3)
    assert "WA and UA by encoder layer" not in md  # same layer everywhere: no layer curve
    assert _md_rows(md, "1")[0][1] == "cv_b"  # the better run first
    wandb_runs = list((out / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1
    logged = {p.name.split("_")[0] for p in wandb_runs[0].glob("files/media/images/report/*.png")}
    assert {"leaderboard", "per", "best"} <= logged
    # a parent folder of runs works too; a folder without runs is an error
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep3")]) == 0
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    assert "no CV" in capsys.readouterr().err


def test_a_key_added_to_the_schema_later_is_not_a_difference(tmp_path):
    """Runs made before a config field existed lack it in config.yaml; they ran with its default."""
    from ser_lightning.run.report.runs import Run, differing_keys

    old = Run("old", tmp_path, "cv", {}, [], {"model.layer": 3, "model.pooling": "qkv"})
    new = Run("new", tmp_path, "cv", {}, [], {"model.layer": 4, "model.pooling": "qkv", "model.feature_norm": "none"})
    assert differing_keys([old, new]) == ["model.layer"]
    changed = Run("std", tmp_path, "cv", {}, [], {"model.layer": 4, "model.pooling": "qkv", "model.feature_norm": "standardize"})
    assert differing_keys([old, changed]) == ["model.feature_norm", "model.layer"]


def test_the_config_a_run_used_wins_over_its_sweep_parameter(tmp_path):
    """`ser sweep x.yaml model.encoder=/local/path` overrides the YAML's value: report what ran."""
    from ser_lightning.run.report.runs import Run, differing_keys

    trial = Run("t", tmp_path, "cv", {}, [], {"model.encoder": "/local/base", "model.layer": 3},
                {"data": "ravdess", "model.encoder": "openai/whisper-base", "model.layer": 3})  # fmt: skip
    plain = Run("p", tmp_path, "cv", {}, [], {"model.encoder": "/local/base", "model.layer": 4})
    assert trial.value("model.encoder") == "/local/base"
    assert differing_keys([trial, plain]) == ["model.layer"]  # neither the encoder nor the `data` group


def test_a_fusion_run_shows_no_single_layer():
    """model.layer is unused when model.layers fuses several: the report must not show the default -1 for it."""
    from pathlib import Path

    from ser_lightning.run.report.runs import Run

    fused = Run("f", Path("f"), "cv", {}, [], config={"model.layer": -1, "model.layers": [3, 4, 5, 6]})
    single = Run("s", Path("s"), "cv", {}, [], config={"model.layer": 4, "model.layers": None})
    assert fused.value("model.layer") is None and fused.value("model.layers") == [3, 4, 5, 6]
    assert single.value("model.layer") == 4


def test_errors_page_lists_the_misclassified_clips_with_playable_audio(tmp_path):
    """errors.html: every misclassified test clip of the run, an audio player whose source (relative to the page)
    is the clip's file, filters by true / predicted class; report.md names the most frequent confusions."""
    import html as html_lib

    import fakes

    make_cv(tmp_path / "cv_a")
    clips = [fakes.write_audio(tmp_path / "audio" / f"c{i} é.wav", seed=i) for i in range(4)]
    probs = [[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.6, 0.1], [0.1, 0.1, 0.2, 0.6], [0.1, 0.1, 0.7, 0.1]]
    labels = [0, 1, 3, 3]  # clip 1: happy read as sad; clip 3: angry read as sad
    predictions = {"class_names": CLASSES, "sha256": ["x"] * 4, "path": [str(c) for c in clips],
                   "speaker": ["01"] * 4, "label": labels, "probabilities": probs}  # fmt: skip
    (tmp_path / "cv_a" / "fold_1" / "test_predictions.json").write_text(json.dumps(predictions))
    res = make_report([tmp_path / "cv_a"], tmp_path / "rep")
    page = (tmp_path / "rep" / "errors.html").read_text()
    assert res["errors"] == tmp_path / "rep" / "errors.html"
    rows = re.findall(r"<tr class='e' data-t='(\w+)' data-p='(\w+)'>.*?<audio controls preload='none' src='([^']+)'>", page)
    assert [(t, p) for t, p, _ in rows] == [("happy", "sad"), ("angry", "sad")]
    for (_, _, src), clip in zip(rows, (clips[1], clips[3])):
        assert (tmp_path / "rep" / html_lib.unescape(src)).resolve() == clip.resolve()
    assert "2 misclassified of" in page and "<select id='t'" in page
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "[errors.html](errors.html)" in md and _md_rows(md, "happy")[-1] == ["happy", "sad", "1"]
