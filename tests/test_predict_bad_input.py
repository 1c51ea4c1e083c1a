"""`ser predict` and the head loader on bad input (issue #19): a damaged export names the file and the problem
(no traceback); a text file renamed .wav is reported by its name; file names with tabs, newlines, backslashes,
spaces, quotes or non-ASCII characters keep one stdout line per file; manifests resolve against --audio-root;
a mix of good and bad files scores the good ones and lists the bad ones with their reasons."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import fault_helpers as fh  # noqa: E402

SR = 16000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run (random:test encoder; shared with test_predict.py when run in the same session)."""
    return fh.trained_run(tmp_path_factory)


def _sine(seconds: float = 1.0, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path: Path, wave: np.ndarray, subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    sf.write(str(path), wave, SR, subtype=subtype)
    return path


def _unescape(field: str) -> str:
    """Undo the stdout escapes: \\\\ \\t \\n \\r, and \\xNN for a byte of a file name that is not UTF-8."""
    def one(m: re.Match) -> str:
        e = m.group(1)
        return chr(0xDC00 + int(e[1:], 16)) if e[0] == "x" else {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[e]

    return re.sub(r"\\(x[0-9a-f]{2}|.)", one, field)


def _stdout_rows(text: str):
    """path -> (label or ERROR, probability or reason) from `ser predict`'s stdout, undoing its escapes."""
    rows = {}
    for line in text.splitlines():
        fields = line.split("\t")
        assert len(fields) == 3, f"not path<TAB>label<TAB>value: {line!r}"
        rows[_unescape(fields[0])] = (fields[1], _unescape(fields[2]))
    return rows


def _predict(capsys, *args: str):
    """`ser predict ARGS` in-process: (exit code, stdout, stderr). An exception escaping main() fails the test."""
    from ser_lightning.cli import main

    capsys.readouterr()
    code = main(["predict", *args])
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    return code, printed.out, printed.err


# ------------------------------------------------------------------------------------------ a damaged export
def _damaged_export(run: Path, tmp_path: Path, weights=None, config=None) -> Path:
    folder = tmp_path / "head"
    shutil.copytree(run / "export", folder)
    if weights is not None:
        (folder / "head.safetensors").write_bytes(weights(folder / "head.safetensors"))
    if config is not None:
        meta = json.loads((folder / "head.json").read_text())
        (folder / "head.json").write_bytes(config(meta))
    return folder


def _nan_weights(path: Path) -> bytes:
    from safetensors.torch import load_file, save

    state = load_file(str(path))
    name = sorted(state)[0]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    return save(state)


WEIGHT_DAMAGE = {
    "truncated": (lambda p: p.read_bytes()[: len(p.read_bytes()) // 2], "unreadable head weights"),
    "garbage": (lambda p: b"this is not a safetensors file\n" * 20, "unreadable head weights"),
    "zero-byte": (lambda p: b"", "unreadable head weights"),
    "NaN weights": (_nan_weights, "NaN or infinite"),
}
CONFIG_DAMAGE = {
    "truncated": (lambda m: json.dumps(m).encode()[:70], "unreadable head config"),
    "garbage": (lambda m: b"\x00\xff\xfe binary garbage", "unreadable head config"),
    "no encoder": (lambda m: json.dumps({k: v for k, v in m.items() if k != "encoder"}).encode(), "'encoder' must be an object"),
    "no class_names": (lambda m: json.dumps({k: v for k, v in m.items() if k != "class_names"}).encode(), "'class_names'"),
    "class count": (lambda m: json.dumps({**m, "class_names": m["class_names"][:2]}).encode(), "classes but class_names lists 2"),
    "bad head": (lambda m: json.dumps({**m, "head": {**m["head"], "input_dim": "wide"}}).encode(), "does not describe a valid head"),
    "no sample rate": (lambda m: json.dumps({**m, "data": {}}).encode(), "data.sample_rate"),
    "bad layers": (lambda m: json.dumps({**m, "encoder": {**m["encoder"], "layers": "one"}}).encode(), "encoder.layers"),
}


@pytest.mark.parametrize("damage", sorted(WEIGHT_DAMAGE))
def test_a_damaged_head_safetensors_is_named_with_its_problem(run, tmp_path, capsys, damage):
    from ser_lightning.run.artifact import load_head

    make, problem = WEIGHT_DAMAGE[damage]
    folder = _damaged_export(run, tmp_path, weights=make)
    weights = str(folder / "head.safetensors")
    with pytest.raises(ValueError) as err:
        load_head(folder)
    assert weights in str(err.value) and problem in str(err.value)
    code, out, stderr = _predict(capsys, "--run", str(folder), str(_write(tmp_path / "clip.wav", _sine())))
    assert code == 1 and out == ""
    assert weights in stderr and problem in stderr


@pytest.mark.parametrize("damage", sorted(CONFIG_DAMAGE))
def test_a_damaged_head_json_is_named_with_its_problem(run, tmp_path, capsys, damage):
    make, problem = CONFIG_DAMAGE[damage]
    folder = _damaged_export(run, tmp_path, config=make)
    config = str(folder / "head.json")
    if damage not in ("no sample rate", "bad layers"):  # those two are fields only prediction reads
        from ser_lightning.run.artifact import load_head

        with pytest.raises(ValueError) as err:
            load_head(folder)
        assert config in str(err.value) and problem in str(err.value)
    code, out, stderr = _predict(capsys, "--run", str(folder), str(_write(tmp_path / "clip.wav", _sine())))
    assert code == 1 and out == ""
    assert config in stderr and problem in stderr


def test_a_damaged_ensemble_json_is_named(run, tmp_path, capsys):
    folder = _damaged_export(run, tmp_path)
    (folder / "ensemble.json").write_text('{"format": "ser_lightning.ensemble/1", "members": [')
    code, _, stderr = _predict(capsys, "--run", str(folder), str(_write(tmp_path / "clip.wav", _sine())))
    assert code == 1 and str(folder / "ensemble.json") in stderr and "unreadable" in stderr


# ------------------------------------------------------------------------------------------ audio decoding
def test_a_text_file_renamed_wav_is_reported_by_its_name(tmp_path):
    from ser_lightning.audio import BadAudioError, decode

    path = tmp_path / "notes.wav"
    path.write_text("this is a text file, not audio\n" * 10)
    with pytest.raises(BadAudioError) as err:
        decode(str(path))
    assert str(path) in err.value.reason and "Format not recognised" in err.value.reason
    assert "BytesIO" not in str(err.value) and "object at 0x" not in str(err.value)


# ------------------------------------------------------------------------------------------ ser predict output
def test_file_names_with_tabs_newlines_and_backslashes_keep_one_line_each(run, tmp_path, capsys):
    from ser_lightning.run.predict import tsv_field

    assert tsv_field("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re"
    folder = tmp_path / "odd"
    folder.mkdir()
    names = ["tab\there.wav", "new\nline.wav", "back\\slash.wav", "cr\rname.wav", "plain.wav"]
    for name in names:
        _write(folder / name, _sine())
    (folder / "bad\tnews.wav").write_bytes(b"")
    out_csv = tmp_path / "p.csv"
    code, out, _ = _predict(capsys, "--run", str(run), str(folder), "--out", str(out_csv))
    assert code == 1
    rows = _stdout_rows(out)  # exactly one line of three fields per file
    assert sorted(rows) == sorted(str(folder / n) for n in [*names, "bad\tnews.wav"])
    assert rows[str(folder / "bad\tnews.wav")] == ("ERROR", "zero-byte file")
    labels = {rows[str(folder / n)] for n in names}
    assert len(labels) == 1 and next(iter(labels))[0] != "ERROR"  # the same audio: the same prediction
    with out_csv.open(newline="", encoding="utf-8") as f:  # the CSV quotes what needs quoting
        assert sorted(r["path"] for r in csv.DictReader(f)) == sorted(rows)


def test_audio_root_resolves_manifest_paths_and_refuses_escapes(run, tmp_path, capsys):
    from ser_lightning.run.predict import predict_files

    audio = tmp_path / "audio"
    (audio / "spk1").mkdir(parents=True)
    _write(audio / "spk1" / "a.wav", _sine())
    _write(tmp_path / "elsewhere.wav", _sine())
    lists = tmp_path / "lists"
    lists.mkdir()
    manifest = lists / "m.csv"
    manifest.write_text("path,label\nspk1/a.wav,x\n../elsewhere.wav,y\n")
    # without --audio-root the paths are relative to the manifest's folder (where spk1/a.wav is not)
    code, out, _ = _predict(capsys, "--run", str(run), str(manifest))
    rows = _stdout_rows(out)
    assert code == 1 and rows[str(lists / "spk1" / "a.wav")] == ("ERROR", "file not found")
    code, out, _ = _predict(capsys, "--run", str(run), "--audio-root", str(audio), str(manifest))
    rows = _stdout_rows(out)
    assert code == 1 and rows[str(audio / "spk1" / "a.wav")][0] != "ERROR"
    label, reason = rows["../elsewhere.wav"]
    assert label == "ERROR" and f"outside --audio-root {audio}" in reason and "--allow-outside-root" in reason
    code, out, _ = _predict(capsys, "--run", str(run), "--audio-root", str(audio), "--allow-outside-root", str(manifest))
    rows = _stdout_rows(out)
    assert code == 0 and rows[str(tmp_path / "elsewhere.wav")][0] != "ERROR"
    code, _, stderr = _predict(capsys, "--run", str(run), "--audio-root", str(tmp_path / "nope"), str(manifest))
    assert code == 2 and "--audio-root" in stderr and "not a folder" in stderr
    records = predict_files(run, [str(manifest)], audio_root=audio)
    assert records[0]["path"] == str(audio / "spk1" / "a.wav") and records[0]["error"] is None
    assert "outside --audio-root" in records[1]["error"]


def test_a_mix_of_good_and_bad_files_scores_the_good_and_lists_the_bad(run, tmp_path, capsys):
    import soundfile as sf

    folder = tmp_path / "mix"
    folder.mkdir()
    sine = _sine()
    good = ["plain.wav", "with spaces in it.wav", "émotion ünïcode 音声 😀.wav", "it's \"quoted\".wav", "tab\tname.wav"]
    for name in good:
        _write(folder / name, sine)
    sf.write(str(folder / "plain.flac"), sine, SR)
    full = (folder / "plain.wav").read_bytes()
    nan = sine.copy()
    nan[100] = np.nan
    bad = {
        "zero.wav": "zero-byte file",
        "truncated.wav": "truncated wav",
        "text.wav": f"'{folder / 'text.wav'}': Format not recognised",
        "nan.wav": "contains NaN or infinite samples",
        "short.wav": "too short (50 ms",
        "silent.wav": "silent",
    }
    (folder / "zero.wav").write_bytes(b"")
    (folder / "truncated.wav").write_bytes(full[: len(full) // 2])
    (folder / "text.wav").write_text("hello, I am a text file\n" * 20)
    _write(folder / "nan.wav", nan, subtype="FLOAT")
    _write(folder / "short.wav", sine[: SR // 20])  # 50 ms
    _write(folder / "silent.wav", np.zeros(SR, dtype=np.float32))
    non_utf8 = None
    try:  # a file name that is not valid UTF-8 (the file system may refuse it)
        raw = bytes(folder) + b"/latin1-caf\xe9.wav"
        with open(raw, "wb") as f:
            f.write(full)
        non_utf8 = str(folder / "latin1-caf\udce9.wav")
    except OSError:
        pass
    broken_manifest = tmp_path / "broken.csv"
    broken_manifest.write_bytes(b"path\n\xff\xfe\x00garbage")
    missing = tmp_path / "missing.wav"
    out_jsonl, out_csv = tmp_path / "p.jsonl", tmp_path / "p.csv"
    args = ["--run", str(run), str(folder), str(broken_manifest), str(missing)]
    code, out, stderr = _predict(capsys, *args, "--out", str(out_jsonl))
    n_good = len(good) + 1 + (non_utf8 is not None)
    n_bad = len(bad) + 2
    assert code == 1 and f"{n_good} predicted, {n_bad} failed" in stderr
    records = {r["path"]: r for r in map(json.loads, out_jsonl.read_text().splitlines())}
    assert len(records) == n_good + n_bad
    for name, reason in bad.items():
        r = records[str(folder / name)]
        assert r["label"] is None and r["probs"] is None and reason in r["error"], (name, r["error"])
    manifest_error = records[str(broken_manifest)]["error"]
    assert "unreadable manifest" in manifest_error and str(broken_manifest) in manifest_error
    assert records[str(missing)]["error"] == "file not found"
    scored = [str(folder / n) for n in [*good, "plain.flac"]] + ([non_utf8] if non_utf8 else [])
    reference = records[str(folder / "plain.wav")]["probs"]
    for path in scored:
        r = records[path]
        assert r["error"] is None and r["duration"] == 1.0 and r["label"] == max(r["probs"], key=r["probs"].get)
        assert r["probs"] == pytest.approx(reference, abs=1e-4)  # the same sine: the same scores
    # stdout: one line per file, the bad ones with ERROR and the reason
    rows = _stdout_rows(out)
    assert set(rows) == set(records) and not any("object at 0x" in v for _, v in rows.values())
    for path, r in records.items():
        assert rows[path] == (("ERROR", r["error"]) if r["error"] else (r["label"], f"{r['probs'][r['label']]:.3f}"))
    if non_utf8:
        assert "/latin1-caf\\xe9.wav\t" in out
    # CSV: the same rows, quoted; a non-UTF-8 name is written with its own bytes
    code, _, _ = _predict(capsys, *args, "--out", str(out_csv))
    assert code == 1
    with out_csv.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        table = {row["path"]: row for row in csv.DictReader(f)}
    assert set(table) == set(records)
    for path, r in records.items():
        assert table[path]["error"] == (r["error"] or "") and table[path]["label"] == (r["label"] or "")
