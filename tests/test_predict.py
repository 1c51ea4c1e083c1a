"""`ser predict` and `ser export`: the exported head + its encoder give exactly the trained model's test
predictions; long clips are windowed; bad files are reported per file; a foreign encoder is refused."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import fault_helpers as fh  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fh.trained_run(tmp_path_factory)


def _test_files(run):
    prov = json.loads((run / "provenance.json").read_text())
    return [f for f in prov["data_files"] if f["split"] == "test"]


def test_predictions_equal_the_trained_models_test_evaluation(run):
    """Per-file argmax reproduces the confusion matrix `ser train` tested, and the probabilities equal the head
    applied directly to the cached features training read."""
    import torch

    from ser_lightning.features.cache import FeatureCache
    from ser_lightning.run.artifact import load_head
    from ser_lightning.run.predict import predict_files

    results = json.loads((run / "results.json").read_text())
    files = _test_files(run)
    records = predict_files(run, [f["path"] for f in files])
    names = results["class_names"]
    cm = np.zeros((len(names), len(names)), dtype=int)
    for f, r in zip(files, records):
        assert r["error"] is None and len(r["windows"]) == 1 and abs(sum(r["probs"].values()) - 1) < 1e-5
        cm[names.index(f["label"]), names.index(r["label"])] += 1
    assert cm.tolist() == results["confusion_matrix"]
    # direct evaluation of the head on the feature cache (what trainer.test read), clip by clip
    head, meta = load_head(run / "export")
    caches = Path(json.loads((run / "provenance.json").read_text())["config"]["cache"]["dir"])
    (cache_dir,) = [p for p in caches.iterdir() if json.loads((p / "settings.json").read_text())["encoder"] == meta["encoder"]["fingerprint"]]
    cache = FeatureCache(cache_dir.parent, json.loads((cache_dir / "settings.json").read_text()), verify=False)
    for f, r in list(zip(files, records))[:8]:
        x = torch.from_numpy(np.asarray(cache.get(f["sha256"], meta["encoder"]["layers"][0]), dtype=np.float32))[None]
        with torch.no_grad():
            p = torch.softmax(head(x, torch.ones(x.shape[:2], dtype=torch.bool)), -1)[0].numpy()
        np.testing.assert_allclose([r["probs"][c] for c in names], p, atol=1e-5)


def _wav(path, wave, sr=16000):
    import soundfile as sf

    sf.write(str(path), wave, sr, subtype="FLOAT")
    return str(path)


def test_long_clips_are_windowed_and_averaged(run, tmp_path):
    from ser_lightning.audio import decode
    from ser_lightning.run.predict import predict_files

    waves = [decode(f["path"])[0] for f in _test_files(run)[:24]]
    long = np.concatenate(waves)
    assert 62 * 16000 < len(long)
    long = long[: 65 * 16000]  # 65 s -> windows of 30, 30 and 5 s
    path = _wav(tmp_path / "long.wav", long)
    parts = [_wav(tmp_path / f"part{k}.wav", long[a * 16000 : b * 16000]) for k, (a, b) in enumerate([(0, 30), (30, 60), (60, 65)])]
    rec, *separate = predict_files(run, [path, *parts])
    assert [(w["start"], w["end"]) for w in rec["windows"]] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    names = list(rec["probs"])
    for w, s in zip(rec["windows"], separate):
        np.testing.assert_allclose([w["probs"][c] for c in names], [s["probs"][c] for c in names], atol=1e-5)
        assert w["label"] == s["label"]
    mean = np.mean([[w["probs"][c] for c in names] for w in rec["windows"]], axis=0)
    np.testing.assert_allclose([rec["probs"][c] for c in names], mean, atol=1e-9)
    assert rec["label"] == names[int(np.argmax(mean))] and rec["duration"] == 65.0


def test_cli_reports_bad_files_and_writes_jsonl_and_csv(run, tmp_path, capsys):
    from ser_lightning.cli import main

    good = [f["path"] for f in _test_files(run)[:3]]
    folder = tmp_path / "folder"
    folder.mkdir()
    for p in good[:2]:
        shutil.copy(p, folder / Path(p).name)
    (folder / "notes.txt").write_text("not audio")
    (tmp_path / "empty.wav").write_bytes(b"")
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path,label\nfolder/{Path(good[0]).name},x\n../outside.wav,y\n")
    inputs = [good[2], str(tmp_path / "empty.wav"), str(tmp_path / "missing.flac"), str(folder), str(manifest)]
    out_jsonl, out_csv = tmp_path / "p.jsonl", tmp_path / "p.csv"
    assert main(["predict", "--run", str(run), *inputs, "--out", str(out_jsonl)]) == 1  # some files failed
    printed = capsys.readouterr()
    assert "4 predicted, 3 failed" in printed.err
    records = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [Path(r["path"]).name for r in records] == [Path(good[2]).name, "empty.wav", "missing.flac",
                                                       *sorted(Path(p).name for p in good[:2]), Path(good[0]).name, "outside.wav"]  # fmt: skip
    errors = {Path(r["path"]).name: r["error"] for r in records if r["error"]}
    assert errors["empty.wav"] == "zero-byte file" and errors["missing.flac"] == "file not found"
    assert "outside the manifest's folder" in errors["outside.wav"] and "--allow-outside-root" in errors["outside.wav"]
    assert set(errors) == {"empty.wav", "missing.flac", "outside.wav"}
    ok = [r for r in records if not r["error"]]
    assert len(ok) == 4 and all(r["label"] == max(r["probs"], key=r["probs"].get) for r in ok)
    assert f"{good[2]}\t{ok[0]['label']}" in printed.out and "empty.wav\tERROR\tzero-byte file" in printed.out
    # the same clip reached by its path, through the folder and through the manifest: the same prediction
    first = Path(good[0]).name
    same = [r["probs"] for r in ok if Path(r["path"]).name == first]
    assert len(same) == 2 and same[0] == same[1]
    assert main(["predict", "--run", str(run), good[0], "--out", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 1 and rows[0]["window"] == "all" and rows[0]["error"] == ""
    assert rows[0]["label"] == max(same[0], key=same[0].get)
    assert [float(rows[0][f"prob_{c}"]) for c in same[0]] == pytest.approx(list(same[0].values()))


def test_a_different_encoder_is_refused(run, tmp_path, capsys):
    from ser_lightning.cli import main
    from ser_lightning.run.predict import EncoderFingerprintError, Predictor

    clip = _test_files(run)[0]["path"]
    # other weights of the same architecture (random:test with another seed is another random:test...)
    assert main(["predict", "--run", str(run), "--encoder", "random:tiny", clip]) == 1
    assert "fingerprint" in capsys.readouterr().err
    head_dir = tmp_path / "export"
    shutil.copytree(run / "export", head_dir)
    meta = json.loads((head_dir / "head.json").read_text())
    meta["seed"] = 1  # random:test built with seed 1 is not the encoder the head was trained on
    (head_dir / "head.json").write_text(json.dumps(meta))
    with pytest.raises(EncoderFingerprintError, match="trained on random:test"):
        Predictor(head_dir)


def test_export_copies_a_loadable_head_and_predict_reads_it(run, tmp_path, capsys):
    import torch

    from ser_lightning.cli import main
    from ser_lightning.run.artifact import load_head
    from ser_lightning.run.predict import predict_files

    out = tmp_path / "head"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["head.json", "head.safetensors"]
    assert (out / "head.safetensors").read_bytes() == (run / "export" / "head.safetensors").read_bytes()
    head, meta = load_head(out)
    assert not head.training and meta["class_names"] == json.loads((run / "results.json").read_text())["class_names"]
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    for k, v in head.state_dict().items():
        assert torch.equal(v, ckpt["head." + k]), k  # the exported weights are the tested (best) checkpoint's
    assert main(["export", "--run", str(run), "--out", str(out)]) == 1  # not empty: refused
    assert "not empty" in capsys.readouterr().err
    clip = _test_files(run)[0]["path"]
    assert predict_files(out, [clip])[0]["probs"] == predict_files(run, [clip])[0]["probs"]
    cv = tmp_path / "cv"
    shutil.copytree(run / "export", cv / "fold_2" / "export")
    assert main(["predict", "--run", str(cv), clip]) == 1
    err = capsys.readouterr().err
    assert "cross-validation folder" in err and "fold_2" in err
