"""W&B logging of a CV, offline: fold runs grouped (group = CV name, job_type = fold) with the full config,
metrics by stage, the confusion matrix (W&B plot table + image) and a per-class recall table; one cv-summary run
carrying `cv/<metric>_mean|_std`. Read back from the offline run files (`run-<id>.wandb` records, media/*.json).
Also: under `wandb agent` the fold runs leave the sweep and the cv-summary run is the agent's run."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from ser_lightning.cli import main
from ser_lightning.config import compose


def _shared(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "experiments-cache"


def wandb_records(path: Path) -> Iterator[Any]:
    """Records of an offline `.wandb` file: a 7-byte header (':W&B', magic, version), then the LevelDB log
    format (32 KiB blocks, 7-byte chunk headers: crc32c, length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4) around
    serialised `wandb_internal_pb2.Record` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            buf = chunk
        elif kind == 2:
            buf = chunk
            continue
        elif kind == 3:
            buf += chunk
            continue
        elif kind == 4:
            buf += chunk
        else:
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _complete_records(log: Path, timeout_s: float = 60) -> List[Any]:
    """The records once the run's `exit` record is on disk (wandb-core writes asynchronously: a run that has
    just finished may still be flushing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(wandb_records(log)) if log.stat().st_size > 7 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_run(run_dir: Path) -> Dict[str, Any]:
    """run id, group, job_type, config keys, history keys, final summary values of an offline run folder."""
    (log,) = run_dir.glob("run-*.wandb")
    out: Dict[str, Any] = {"config": {}, "history": set(), "summary": {}, "dir": run_dir}
    for r in _complete_records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(id=r.run.run_id, group=r.run.run_group, job_type=r.run.job_type, name=r.run.display_name,
                       sweep_id=r.run.sweep_id)  # fmt: skip
            for item in r.run.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in r.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"] |= {_key(i) for i in r.history.item}
        elif kind == "summary":
            for item in r.summary.update:
                out["summary"][_key(item)] = json.loads(item.value_json)
    return out


def _logged(run: Dict[str, Any], key: str) -> bool:
    """A scalar under `key`, or a media object (table, image) whose fields are nested under it."""
    return key in run["history"] or any(h.startswith(key + "/") for h in run["history"])


def _table(run_dir: Path, prefix: str) -> Dict[str, Any]:
    (path,) = run_dir.glob(f"files/media/table/{prefix}_*.table.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, ravdess_root):
    """A tiny 2-fold `ser cv` logged offline into its own wandb dir."""
    shared = _shared(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("wandb_cv")
    overrides = [
        "data=ravdess", f"data.root={ravdess_root}", "data.limit_per_class=40", "cv.folds=[1,2]",
        "model.encoder=random:test", "model.layer=2", "model.pooling=attentive", "model.heads=2", "model.input_seconds=clip",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "wandb.mode=offline", f"wandb.dir={tmp / 'wb'}", f"cache.dir={shared / 'features'}",
        f"data.table_cache_dir={shared / 'tables'}", f"output_dir={tmp / 'cv_tiny'}",
    ]  # fmt: skip
    assert main(["cv", *overrides]) == 0
    return tmp, overrides


def test_cv_runs_offline_grouped_with_plots_tables_and_summary(cv_run):
    tmp, _ = cv_run
    out = tmp / "cv_tiny"
    summary = json.loads((out / "summary.json").read_text())
    run_dirs = sorted((tmp / "wb" / "wandb").glob("offline-run-*"))
    runs = [read_run(d) for d in run_dirs]
    folds = sorted((r for r in runs if r["job_type"] == "fold"), key=lambda r: r["name"])
    summaries = [r for r in runs if r["job_type"] == "cv-summary"]
    assert len(folds) == 2 and len(summaries) == 1, [(r["name"], r["job_type"]) for r in runs]
    assert {r["group"] for r in runs} == {"cv_tiny"}  # all runs of the CV in one group
    assert len({r["id"] for r in runs}) == 3

    for k, run in zip((1, 2), folds):
        results = json.loads((out / f"fold_{k}" / "results.json").read_text())
        assert run["name"] == f"cv_tiny-fold{k}"
        # the full resolved config, nested as in config.yaml
        assert run["config"]["model"]["pooling"] == "attentive" and run["config"]["data"]["fold"] == k
        # metrics by stage, the confusion matrix as plot table + image, the per-class recall table
        for key in ("train/loss_epoch", "val/ua", "test/ua", "test/confusion_matrix_table", "test/per_class_recall",
                    "test/confusion_matrix_image"):  # fmt: skip
            assert _logged(run, key), (key, sorted(run["history"]))
        assert run["summary"]["test/ua"] == pytest.approx(results["test/ua"])
        assert run["summary"]["val/ua_best"] == pytest.approx(results["best_val"])
        cm_table = _table(run["dir"], "test/confusion_matrix_table")
        cols = cm_table["columns"]
        counts = {(row[cols.index("Actual")], row[cols.index("Predicted")]): row[cols.index("nPredictions")] for row in cm_table["data"]}
        names = results["class_names"]
        expected = {(names[i], names[j]): n for i, row in enumerate(results["confusion_matrix"]) for j, n in enumerate(row)}
        assert {k2: v for k2, v in counts.items() if v} == {k2: v for k2, v in expected.items() if v}
        recall = _table(run["dir"], "test/per_class_recall")
        assert recall["columns"] == ["class", "recall", "n"]
        assert {row[0]: row[1] for row in recall["data"]} == pytest.approx({c: results[f"test/recall_{c}"] for c in names})
        assert list(run["dir"].glob("files/media/images/test/confusion_matrix_image_*.png"))

    s = summaries[0]
    assert s["name"] == "cv_tiny-summary"
    assert s["summary"]["cv/test/ua_mean"] == pytest.approx(summary["test/ua"]["mean"])
    assert s["summary"]["cv/test/ua_std"] == pytest.approx(summary["test/ua"]["std"])
    assert s["summary"]["cv/test/wa_mean"] == pytest.approx(summary["test/wa"]["mean"])
    assert s["summary"]["cv/n_folds"] == 2
    assert _logged(s, "cv/confusion_matrix_table") and _logged(s, "cv/per_class_recall")
    per_fold = _table(s["dir"], "cv/folds")
    assert [row[0] for row in per_fold["data"]] == [1, 2]
    assert list(s["dir"].glob("files/media/images/cv/confusion_matrix_image_*.png"))


def test_under_wandb_agent_the_cv_summary_run_is_the_trial(cv_run, monkeypatch):
    """`wandb agent` sets one run id per trial: fold runs must not take it; the cv-summary run must, and carry
    the sweep parameters (from WANDB_SWEEP_PARAM_PATH) and the metric the sweep YAMLs optimise."""
    import wandb

    from ser_lightning import tracking
    from ser_lightning.run.cv import fold_config

    tmp, overrides = cv_run
    params = tmp / "sweep-params.yaml"
    params.write_text("model.layer:\n  value: 2\n")
    monkeypatch.setenv("WANDB_SWEEP_ID", "abcd1234")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun01")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    wandb.teardown()
    cfg = compose([o for o in overrides if not o.startswith("wandb.dir")] + [f"wandb.dir={tmp / 'agent'}"])
    fold = fold_config(cfg, 1)
    logger = tracking.make_logger(fold, Path(fold.output_dir), {})
    assert not tracking.in_agent()  # detached: the fold run gets its own id, outside the sweep
    fold_id = tracking._stable_run_id(Path(fold.output_dir))
    logger.experiment.log({"probe": 1})  # the fold run really starts, outside the sweep
    wandb.finish()
    summary = json.loads((Path(cfg.output_dir) / "summary.json").read_text())
    tracking.log_cv_summary_run(cfg, summary)
    assert tracking.in_agent()  # restored for the trial's own run
    runs = {r["id"]: r for r in map(read_run, (tmp / "agent" / "wandb").glob("offline-run-*"))}
    assert set(runs) == {fold_id, "agentrun01"}
    assert runs[fold_id]["sweep_id"] == "" and runs[fold_id]["job_type"] == "fold"
    assert "model.layer" not in runs[fold_id]["config"]
    run = runs["agentrun01"]
    assert run["id"] == "agentrun01" and run["sweep_id"] == "abcd1234" and run["job_type"] == "cv-summary"
    assert run["config"]["model.layer"] == 2  # the sweep's parameter, as the server shows it
    assert run["summary"]["cv/test/ua_mean"] == pytest.approx(summary["test/ua"]["mean"])
    wandb.teardown()


# ------------------------------------------------------------------------------------ review hub (issue #20)
def _artifacts(run_dir: Path) -> List[Any]:
    (log,) = run_dir.glob("run-*.wandb")
    return [r.artifact for r in _complete_records(log) if r.WhichOneof("record_type") == "artifact"]


def _md5_b64(path: Path) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def _runs_by_job(tmp: Path) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}
    for d in sorted((tmp / "wb" / "wandb").glob("offline-run-*")):
        run = read_run(d)
        out.setdefault(run["job_type"], []).append(run)
    return out


def test_cv_logs_model_and_dataset_artifacts_with_aliases_and_digests(cv_run):
    tmp, _ = cv_run
    out = tmp / "cv_tiny"
    folds = sorted(_runs_by_job(tmp)["fold"], key=lambda r: r["name"])
    for k, run in zip((1, 2), folds):
        results = json.loads((out / f"fold_{k}" / "results.json").read_text())
        arts = {a.type: a for a in _artifacts(run["dir"]) if a.type != "run_table"}  # (tables are artifacts too)
        assert set(arts) == {"model", "dataset"}
        model, dataset = arts["model"], arts["dataset"]
        assert model.name == "cv_tiny-model" and set(model.aliases) == {"latest", f"fold-{k}"}
        files = {c.path: c for c in model.manifest.contents}
        assert set(files) == {"head.json", "head.safetensors"}
        for name, entry in files.items():  # the artifact holds exactly the exported files
            assert entry.digest == _md5_b64(out / f"fold_{k}" / "export" / name)
        meta = json.loads(model.metadata)
        assert meta["encoder"] == results["encoder"] and meta["class_names"] == results["class_names"]
        assert meta["config_hash"] == results["config_hash"] and meta["dataset_artifact"] == dataset.name
        (features,) = dataset.manifest.contents
        listed = json.loads(Path(features.local_path).read_text())
        table_fp = results["provenance"]["data"]["table_fingerprint"] if "data" in results["provenance"] else None
        assert listed["n_clips"] == len(listed["clip_sha256"]) and listed["corpus"] == "ravdess"
        assert table_fp is None or listed["table_fingerprint"] == table_fp
        assert listed["splits"]["test"] == results["test_speakers"]
        assert results["wandb"]["artifacts"]["model"] == "cv_tiny-model"


def _logged_table(run: Dict[str, Any], key: str) -> Dict[str, Any]:
    """A logged wandb.Table as W&B stores it with its media: the run_table artifact the run logs for it (the
    run-folder copy names media cells only by type until the run is synced). Adds `_files`: the artifact's files."""
    slug = key.replace("/", "")
    # named run-<run id>-<slug>-<random suffix>; the suffix may itself contain "-"
    (art,) = [a for a in _artifacts(run["dir"]) if a.type == "run_table" and a.name.startswith(f"run-{run['id']}-{slug}-")]
    files = {c.path: c.local_path for c in art.manifest.contents}
    (table_json,) = [p for p in files if p.endswith(".table.json")]
    table = json.loads(Path(files[table_json]).read_text())
    table["_files"] = files
    return table


def test_prediction_tables_with_audio_for_the_misclassified_clips(cv_run):
    tmp, _ = cv_run
    out = tmp / "cv_tiny"
    runs = _runs_by_job(tmp)
    total = 0
    for run in runs["fold"]:
        k = run["config"]["data"]["fold"]
        results = json.loads((out / f"fold_{k}" / "results.json").read_text())
        table = _logged_table(run, "test/predictions")
        cols = table["columns"]
        assert cols[:6] == ["clip", "path", "speaker", "true", "predicted", "correct"] and cols[-1] == "audio"
        assert len(table["data"]) == results["n_test"]
        wrong = [r for r in table["data"] if not r[cols.index("correct")]]
        n_correct = sum(results["confusion_matrix"][i][i] for i in range(len(results["class_names"])))
        assert len(wrong) == results["n_test"] - n_correct
        with_audio = [r for r in table["data"] if r[-1]]
        assert len(with_audio) == min(len(wrong), 200) and all(not r[cols.index("correct")] for r in with_audio)
        assert all(r[-1]["_type"] == "audio-file" for r in with_audio)
        import soundfile as sf

        for r in with_audio[:3]:  # listenable: the clip itself, decoded at 16 kHz
            wave, sr = sf.read(table["_files"][r[-1]["path"]])
            assert sr == 16000 and abs(len(wave) / sr - sf.info(r[cols.index("path")]).duration) < 0.01
        assert run["summary"]["test/predictions_audio_left_out"] == max(0, len(wrong) - 200)
        total += results["n_test"]
    (summary_run,) = runs["cv-summary"]
    table = _logged_table(summary_run, "cv/predictions")
    assert len(table["data"]) == total and {r[0] for r in table["data"]} == {1, 2}  # the fold column


def test_wandb_summary_shows_the_selected_checkpoint_and_agrees_with_the_leaderboard(cv_run):
    """define_metric: val/ua summarises as its max over epochs, the checkpoint-selection score the leaderboard
    shows; test metrics are the selected checkpoint's; the epoch is the step metric."""
    tmp, _ = cv_run
    out = tmp / "cv_tiny"
    for run in _runs_by_job(tmp)["fold"]:
        results = json.loads((out / f"fold_{run['config']['data']['fold']}" / "results.json").read_text())
        assert run["summary"]["val/ua"] == {"max": pytest.approx(results["best_val"])}
        assert run["config"]["params/head"] == results["trainable_parameters"]["head"] > 0  # per optimizer group
        assert run["summary"]["test/ua"] == pytest.approx(results["test/ua"])
    from ser_lightning.run.report.runs import load_run

    row = load_run(out)  # what `ser report`'s leaderboard shows for this CV
    (summary_run,) = _runs_by_job(tmp)["cv-summary"]
    assert summary_run["summary"]["cv/val/ua_best_mean"] == pytest.approx(row.stat("val/ua_best")[0])
    assert summary_run["summary"]["cv/test/ua_mean"] == pytest.approx(row.stat("test/ua")[0])
    assert summary_run["summary"]["cv/test/ua_std"] == pytest.approx(row.stat("test/ua")[1])


def test_predict_reads_a_logged_model_artifact_folder(cv_run, tmp_path):
    """The artifact's files laid out as W&B downloads them (path -> file) are a model `ser predict` runs, with the
    run's own test scores."""
    import shutil

    from ser_lightning.run.predict import predict_files

    tmp, _ = cv_run
    run = next(r for r in _runs_by_job(tmp)["fold"] if r["config"]["data"]["fold"] == 1)
    model = next(a for a in _artifacts(run["dir"]) if a.type == "model")
    folder = tmp_path / "artifacts" / "cv_tiny-model-v0"
    for entry in model.manifest.contents:
        (folder / entry.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(entry.local_path, folder / entry.path)
        assert _md5_b64(folder / entry.path) == entry.digest
    stored = json.loads((tmp / "cv_tiny" / "fold_1" / "test_predictions.json").read_text())
    records = predict_files(folder, stored["path"][:5])
    for record, probs in zip(records, stored["probabilities"][:5]):
        assert [record["probs"][c] for c in stored["class_names"]] == pytest.approx(probs, abs=1e-4)


def test_a_wandb_reference_that_cannot_be_resolved_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: fails at once, never hangs
    assert main(["predict", "--run", "wandb:team/proj/model:best", str(tmp_path / "a.wav")]) == 1
    assert "wandb:team/proj/model:best: cannot download the model artifact" in capsys.readouterr().err


def test_wandb_dir_environment_variable_is_honoured(tmp_path, monkeypatch):
    import wandb

    from ser_lightning import tracking

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    cfg = compose(["model.encoder=random:test", "data.root=/x", "wandb.mode=offline", f"output_dir={tmp_path / 'run'}"])
    logger = tracking.make_logger(cfg, tmp_path / "run", {})
    assert Path(logger.experiment.dir).resolve().is_relative_to((tmp_path / "elsewhere").resolve())
    wandb.finish()
    monkeypatch.delenv("WANDB_DIR")
    cfg = compose(["model.encoder=random:test", "data.root=/x", "wandb.mode=offline", f"wandb.dir={tmp_path / 'mine'}"])
    logger = tracking.make_logger(cfg, tmp_path / "run", {})
    assert Path(logger.experiment.dir).resolve().is_relative_to((tmp_path / "mine").resolve())  # wandb.dir wins
    wandb.finish()


def test_a_sweeps_best_trial_is_logged_as_the_best_model(cv_run, tmp_path, monkeypatch):
    import shutil

    from ser_lightning.review import log_sweep_best

    tmp, _ = cv_run
    sweep = tmp_path / "my_sweep"
    shutil.copytree(tmp / "cv_tiny", sweep / "layer-2", ignore=shutil.ignore_patterns("wandb"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    logged = log_sweep_best(sweep, {"name": "layer-2", "params": {"model.layer": 2}, "metric": 0.4}, "offline")
    assert logged["folders"] == ["fold_1/", "fold_2/"]
    (run_dir,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    (model,) = [a for a in _artifacts(run_dir) if a.type == "model"]
    assert model.name == "my_sweep-model" and set(model.aliases) == {"best", "latest"}
    files = {c.path: c.digest for c in model.manifest.contents}
    assert set(files) == {f"fold_{k}/{n}" for k in (1, 2) for n in ("head.json", "head.safetensors")}
    assert files["fold_2/head.safetensors"] == _md5_b64(sweep / "layer-2" / "fold_2" / "export" / "head.safetensors")
    assert json.loads(model.metadata)["params"] == {"model.layer": 2}
