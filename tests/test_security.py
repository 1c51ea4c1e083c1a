"""Security: no pickle from user-supplied files (torch.load only with weights_only=True, our checkpoints hold
nothing outside torch's allowlist, exported heads are safetensors + JSON), manifest paths stay inside their
root unless allowed, no shell built from strings."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import fault_helpers as fh  # noqa: E402

PACKAGE = fh.ROOT / "ser_lightning"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _kw(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_sources_are_found():
    assert len(SOURCES) > 20 and PACKAGE / "run" / "train.py" in SOURCES


def test_torch_load_only_with_weights_only_true():
    offenders = []
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text())):
            if _name(call.func) == "torch.load":
                value = _kw(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f"{path.relative_to(fh.ROOT)}:{call.lineno}")
    assert offenders == []


def test_no_pickle_no_shell():
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve") for n in names):
                    offenders.append(f"{path.name}:{node.lineno} imports {names}")
        for call in _calls(tree):
            name = _name(call.func)
            if name in ("os.system", "os.popen", "eval", "exec") or name.startswith("os.exec") or name.startswith("os.spawn"):
                offenders.append(f"{path.name}:{call.lineno} {name}")
            shell = _kw(call, "shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                offenders.append(f"{path.name}:{call.lineno} {name}(shell=...)")
            if name.endswith("load") and name.split(".")[0] in ("np", "numpy"):
                allow = _kw(call, "allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    offenders.append(f"{path.name}:{call.lineno} np.load(allow_pickle=...)")
    assert offenders == []


def test_trainer_restores_checkpoints_with_weights_only():
    tree = ast.parse((PACKAGE / "run" / "fold.py").read_text())  # one head on one fold: where fit and test run
    calls = [c for c in _calls(tree) if _name(c.func) in ("trainer.fit", "trainer.test")]
    assert len(calls) == 2
    for call in calls:
        value = _kw(call, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, _name(call.func)


def test_our_checkpoints_hold_only_allowlisted_objects(tmp_path_factory):
    """They load with plain torch.load(weights_only=True): nothing beyond tensors and primitives is pickled."""
    import torch

    run = fh.trained_run(tmp_path_factory)
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert {"state_dict", "optimizer_states", "loops", "ser_encoder"} <= set(ckpt)
        assert not any(k.startswith("_encoder") or "encoder.encoder" in k for k in ckpt["state_dict"])  # no Whisper weights


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_malicious_checkpoint_is_never_unpickled(tmp_path):
    import torch

    from ser_lightning.run.callbacks import AtomicCheckpointIO, usable_checkpoint

    marker = tmp_path / "code-ran"
    evil = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "optimizer_states": [], "epoch": 0, "x": _Payload(marker)}, evil)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)  # even when a caller asks for pickle
    assert usable_checkpoint(evil) is not None
    assert not marker.exists()


def test_export_and_predict_read_no_pickle(tmp_path_factory, monkeypatch):
    import pickle

    import torch

    from ser_lightning.run.artifact import load_head
    from ser_lightning.run.predict import predict_files

    run = fh.trained_run(tmp_path_factory)
    assert sorted(p.name for p in (run / "export").iterdir()) == ["head.json", "head.safetensors"]
    assert (run / "export" / "head.safetensors").read_bytes()[8:9] == b"{"  # safetensors: u64 header size, JSON
    json.loads((run / "export" / "head.json").read_text())

    def refuse(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_head(run / "export")
    clip = next(f["path"] for f in json.loads((run / "provenance.json").read_text())["data_files"])
    assert predict_files(run, [clip])[0]["error"] is None


def test_encoder_loading_refuses_pickle_weights(tmp_path):
    from ser_lightning.features.encoder import load_encoder

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle weights are refused"):
        load_encoder(str(tmp_path))


def test_manifest_paths_cannot_escape_their_root_unless_allowed(tmp_path):
    """The manifest loader (data/corpora/manifest.py) has the data.allow_outside_root switch, off by default."""
    from ser_lightning.config import compose
    from ser_lightning.data.corpora import manifest

    assert compose(["data.root=x", "model.encoder=random:test"]).data.allow_outside_root is False
    root = tmp_path / "corpus"
    root.mkdir()
    for bad in ("../secret.wav", "/etc/passwd", "a/../../b.wav"):
        with pytest.raises(ValueError, match="outside the audio root"):
            manifest.resolve_path(bad, root, False, "m.csv line 2")
        assert manifest.resolve_path(bad, root, True, "m.csv line 2")  # allowed explicitly
    assert manifest.resolve_path("a/./b.wav", root, False, "x") == str(root / "a" / "b.wav")
    rows = tmp_path / "corpus" / "m.csv"
    rows.write_text("path,label,speaker\n../secret.wav,happy,s1\n")
    with pytest.raises(ValueError, match=r"m\.csv line 2.*outside the audio root"):
        manifest.load_manifest(manifest=str(rows))
