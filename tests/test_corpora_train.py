"""Every corpus trains through `ser train` (fake ShEMO / IEMOCAP trees with the real layout, EmoBox, folder,
manifest), with the fold's test speakers exactly as the protocol defines them."""

import json

import pytest

import fakes
from ser_lightning.config import compose
from ser_lightning.run.train import train

COMMON = [
    "model.encoder=random:test", "model.layer=2", "model.pooling=attentive", "model.heads=2",
    "model.input_seconds=clip", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "wandb.mode=disabled",
]  # fmt: skip


def _train(tmp_path, *overrides):
    cfg = compose([*COMMON, f"cache.dir={tmp_path / 'cache'}", f"data.table_cache_dir={tmp_path / 'tables'}",
                   f"output_dir={tmp_path / 'run'}", *overrides])  # fmt: skip
    res = train(cfg)
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["n_test"] == sum(map(sum, stored["confusion_matrix"])) > 0
    assert not set(stored["test_speakers"]) & set(stored["val_speakers"])
    return res


def test_shemo_trains_on_fold_10(tmp_path, shemo_tree):
    res = _train(tmp_path, "data=shemo", f"data.root={shemo_tree}", "data.fold=10")
    assert res["test_speakers"] == ["F28", "F29", "F30", "F31", "M52", "M53", "M54", "M55", "M56"]
    assert res["class_names"] == ["anger", "happiness", "neutral", "sadness", "surprise"]  # fear dropped


def test_iemocap_trains_leave_one_session_out(tmp_path, iemocap_release):
    res = _train(tmp_path, "data=iemocap", f"data.root={iemocap_release}", "data.fold=3", "data.subset=all")
    assert res["test_speakers"] == ["Ses03F", "Ses03M"]
    assert res["class_names"] == ["neutral", "happy", "sad", "angry"]


def test_emobox_trains(tmp_path, emobox_ravdess):
    res = _train(tmp_path, "data=emobox", f"data.root={emobox_ravdess}", "data.fold=1", "data.val_speakers=1")
    assert res["n_test"] > 0


@pytest.mark.parametrize("kind", ["folder", "manifest"])
def test_folder_and_manifest_train_on_automatic_speaker_folds(tmp_path, kind):
    speakers = [f"spk{i:02d}" for i in range(10)]
    if kind == "folder":
        root = fakes.make_folder(tmp_path / "corpus", speakers=speakers, per_label=2)
        extra = [f"data.root={root}"]
    else:
        manifest = fakes.make_manifest_corpus(tmp_path / "corpus", speakers=speakers)
        extra = [f"data.root={manifest.parent}", f"data.manifest={manifest}"]
    res = _train(tmp_path, f"data={kind}", *extra, "data.num_folds=5", "data.fold=2", "data.val_speakers=2")
    assert len(res["test_speakers"]) == 2 and res["n_test"] > 0
