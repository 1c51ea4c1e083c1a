"""`ensemble.members=K`: member m is exactly the single-head run with seed+m, the fold's prediction is the mean
of the members' softmax probabilities (metrics hand-checked), no member sees the test speakers, `best_val` is
the members' validation mean, the export predicts exactly what the fold tested, runs from before the option
keep their identity, and an interrupted ensemble resumes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import fault_helpers as fh  # noqa: E402


def _preds(sha, labels, probs, names=("a", "b", "c")):
    return {"class_names": list(names), "sha256": sha, "path": [f"/{s}.wav" for s in sha], "speaker": ["s"] * len(sha),
            "label": labels, "probabilities": probs}  # fmt: skip


def test_average_and_metrics_match_hand_computed_values():
    from ser_lightning.run.ensemble import average_predictions, prediction_metrics

    sha, labels = ["x", "y", "z", "w"], [0, 1, 2, 2]
    # member A right on x, z; member B right on y, w; their mean is right on x, y, w and wrong on z
    a = _preds(sha, labels, [[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.0, 0.3, 0.7], [0.5, 0.1, 0.4]])
    b = _preds(sha, labels, [[0.4, 0.3, 0.3], [0.0, 1.0, 0.0], [0.0, 0.9, 0.1], [0.1, 0.1, 0.8]])
    mean = average_predictions([a, b])
    np.testing.assert_allclose(mean["probabilities"][2], [0.0, 0.6, 0.4])  # z -> class 1 (wrong)
    m = prediction_metrics(mean)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert m["test/wa"] == pytest.approx(3 / 4)
    assert m["test/ua"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["test/recall_c"] == pytest.approx(0.5) and m["n_test"] == 4
    # members that scored other clips cannot be averaged
    with pytest.raises(ValueError, match="sha256"):
        average_predictions([a, _preds(["x", "y", "z", "v"], labels, b["probabilities"])])


@pytest.fixture(scope="module")
def ensemble_cv(tmp_path_factory):
    """A 2-member ensemble CV on fold 2 of the tiny configuration, and the single-head run with the same seed."""
    if not fh.RAVDESS.is_dir():
        pytest.skip(f"RAVDESS not found at {fh.RAVDESS}")
    from ser_lightning.config import compose
    from ser_lightning.run.cv import run_cv
    from ser_lightning.run.train import train

    work = fh.shared_work(tmp_path_factory)
    root = tmp_path_factory.mktemp("ensemble")
    over = ["data.fold=2", "cv.folds=[2]", "model.feature_dropout=0.3"]
    summary = run_cv(compose(fh.tiny_overrides(root / "cv", work, *over, "ensemble.members=2")))
    # (the tiny configuration draws a debug subset: members keep the ensemble's subset seed, data.subset_seed=0)
    single = train(compose(fh.tiny_overrides(root / "single", work, *over, "data.subset_seed=0")))
    return root, summary, single


def test_member_zero_is_the_single_head_run_and_the_fold_is_their_mean(ensemble_cv):
    from ser_lightning.run.ensemble import average_predictions, prediction_metrics

    root, summary, single = ensemble_cv
    fold = root / "cv" / "fold_2"
    res = json.loads((fold / "results.json").read_text())
    m0 = json.loads((fold / "member_0" / "results.json").read_text())
    m1 = json.loads((fold / "member_1" / "results.json").read_text())
    # member 0 == ensemble.members=1 with the same seed, bit for bit; member 1 is another head (seed + 1)
    assert m0["confusion_matrix"] == single["confusion_matrix"] and m0["best_val"] == single["best_val"]
    assert m0["config_hash"] == single["config_hash"]
    assert json.loads((fold / "member_1" / "provenance.json").read_text())["seed"] == 1
    # every member validated on training speakers of its own draw, never on the test fold
    for m in (m0, m1):
        assert not set(m["val_speakers"]) & set(res["test_speakers"])
    assert res["val_speakers"] == sorted(set(m0["val_speakers"]) | set(m1["val_speakers"]))
    # the fold's numbers are the argmax of the members' mean probabilities
    preds = [json.loads((fold / f"member_{k}" / "test_predictions.json").read_text()) for k in (0, 1)]
    expect = prediction_metrics(average_predictions(preds))
    assert res["confusion_matrix"] == expect["confusion_matrix"]
    assert res["test/ua"] == pytest.approx(expect["test/ua"])
    assert res["best_val"] == pytest.approx((m0["best_val"] + m1["best_val"]) / 2)
    assert res["ensemble"]["members"] == 2 and [m["seed"] for m in res["members"]] == [0, 1]
    # the CV summary says it is an ensemble and carries the members' validation mean as the selection score
    assert summary["ensemble_members"] == 2
    assert summary["val/ua_best"]["mean"] == pytest.approx(res["best_val"])
    assert "ENSEMBLE of 2 heads" in (root / "cv" / "summary.md").read_text()
    # each member's test_predictions.json agrees with its own confusion matrix
    for p, m in zip(preds, (m0, m1)):
        assert prediction_metrics(p)["confusion_matrix"] == m["confusion_matrix"]


def test_ensemble_export_predicts_exactly_the_tested_confusion_matrix(ensemble_cv, tmp_path):
    from ser_lightning.run.artifact import load_heads
    from ser_lightning.run.artifact import copy_export
    from ser_lightning.run.predict import predict_files

    root, _, _ = ensemble_cv
    fold = root / "cv" / "fold_2"
    res = json.loads((fold / "results.json").read_text())
    tested = json.loads((fold / "test_predictions.json").read_text())
    copied = copy_export(fold, tmp_path / "heads")  # `ser export`: both members + ensemble.json
    assert len(load_heads(copied)) == 2
    records = predict_files(copied, tested["path"])
    names = res["class_names"]
    cm = np.zeros((len(names), len(names)), dtype=int)
    for label, r in zip(tested["label"], records):
        cm[label, names.index(r["label"])] += 1
    assert cm.tolist() == res["confusion_matrix"]
    np.testing.assert_allclose([[r["probs"][c] for c in names] for r in records], tested["probabilities"], atol=1e-5)
    # an ensemble.json naming a member outside its folder is refused
    spec = json.loads((copied / "ensemble.json").read_text())
    spec["members"][1] = "../elsewhere"
    (copied / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="outside the export folder"):
        load_heads(copied)


def test_runs_from_before_the_option_keep_their_identity():
    """A configuration at the new fields' defaults hashes like one from a schema without them (so finished runs
    are reused and interrupted ones resume); a real ensemble is another configuration."""
    from omegaconf import OmegaConf

    from ser_lightning.config import compose
    from ser_lightning.run.rundir import config_hash

    cfg = compose(["data=ravdess", "model.encoder=random:test"])
    old = OmegaConf.to_container(cfg)
    del old["ensemble"], old["data"]["subset_seed"], old["model"]["context"], old["model"]["context_layers"]
    assert config_hash(cfg) == config_hash(OmegaConf.create(old))
    # a field away from its default is part of the identity
    assert config_hash(compose(["data=ravdess", "model.encoder=random:test", "model.context=conv"])) != config_hash(cfg)
    ensemble = compose(["data=ravdess", "model.encoder=random:test", "ensemble.members=3"])
    assert config_hash(ensemble) != config_hash(cfg)
    # member 0 of a (full-corpus) ensemble IS the single-head run; member 1 is seed + 1
    from ser_lightning.run.ensemble import member_config

    assert config_hash(member_config(ensemble, 0)) == config_hash(cfg)
    assert config_hash(member_config(ensemble, 1)) == config_hash(compose(["data=ravdess", "model.encoder=random:test", "seed=1"]))


def test_interrupted_ensemble_resumes_to_the_same_results(ensemble_cv, tmp_path, tmp_path_factory):
    """Member 1 and the combination removed (as if killed after member 0): the same call trains member 1 again
    and writes the same fold results."""
    from ser_lightning.config import compose
    from ser_lightning.run.train import train

    root, _, _ = ensemble_cv
    fold = tmp_path / "fold_2"
    shutil.copytree(root / "cv" / "fold_2", fold)
    before = json.loads((fold / "results.json").read_text())
    for name in ("results.json", "test_predictions.json"):
        (fold / name).unlink()
    shutil.rmtree(fold / "member_1")
    cfg = compose(fh.tiny_overrides(fold, fh.shared_work(tmp_path_factory), "data.fold=2", "model.feature_dropout=0.3",
                                    "ensemble.members=2"))  # fmt: skip
    after = train(cfg)
    assert after["confusion_matrix"] == before["confusion_matrix"]
    assert [m["test/ua"] for m in after["members"]] == [m["test/ua"] for m in before["members"]]


def test_members_must_be_positive():
    from ser_lightning.config import ConfigError, compose

    with pytest.raises(ConfigError, match="ensemble.members"):
        compose(["data=ravdess", "model.encoder=random:test", "ensemble.members=0"])
