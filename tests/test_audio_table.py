"""Bad and unusual input: every case through decode(), then through build_table under both policies."""

from __future__ import annotations

import json
import struct
import zipfile

import fakes
import numpy as np
import pytest

from ser_lightning.audio import ZIP_SEPARATOR, BadAudioError, crop, decode, wav_truncation
from ser_lightning.data.table import BadAudioReport, build_table


@pytest.mark.parametrize("case", sorted(fakes.BAD_CASES))
def test_decode_rejects_bad_input_naming_file_and_reason(tmp_path, case):
    writer, fragment = fakes.BAD_CASES[case]
    path = writer(tmp_path / f"{case}.wav")
    with pytest.raises(BadAudioError) as err:
        decode(str(path), 16000, min_seconds=0.1)
    assert err.value.path == str(path)
    assert fragment in err.value.reason
    assert str(path) in str(err.value)
    assert "object at 0x" not in str(err.value)  # the decoder's in-memory buffer is never what the message names


@pytest.mark.parametrize("case", sorted(fakes.UNUSUAL_CASES))
def test_decode_accepts_unusual_but_fine_input(tmp_path, case):
    writer, orig_sr = fakes.UNUSUAL_CASES[case]
    path = writer(tmp_path / f"{case}.wav")
    wave, info = decode(str(path), 16000)
    assert wave.ndim == 1 and wave.dtype == np.float32
    assert info.orig_sample_rate == orig_sr
    assert abs(info.duration - 0.3) < 0.005 and abs(len(wave) - 4800) <= 2
    assert info.channels == (2 if case.startswith("stereo") else 1)
    # resampled content is still the tone, not noise or silence
    assert 0.15 < float(np.abs(wave).max()) < 0.5


def test_missing_file_and_missing_zip_member(tmp_path):
    with pytest.raises(BadAudioError, match="file not found"):
        decode(str(tmp_path / "nope.wav"))
    archive = tmp_path / "female.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("female/F01A01.wav", fakes.audio_bytes())
    decode(f"{archive}{ZIP_SEPARATOR}female/F01A01.wav")
    with pytest.raises(BadAudioError, match="missing from its zip archive"):
        decode(f"{archive}{ZIP_SEPARATOR}female/F01A02.wav")
    with pytest.raises(BadAudioError, match="cannot read zip archive"):
        decode(f"{tmp_path / 'male.zip'}{ZIP_SEPARATOR}male/M01A01.wav")


def test_zip_rewritten_on_disk_is_reopened(tmp_path):
    archive = tmp_path / "female.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.wav", fakes.audio_bytes(0.3))
    assert abs(decode(f"{archive}{ZIP_SEPARATOR}a.wav")[1].duration - 0.3) < 0.01
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.wav", fakes.audio_bytes(0.5))
        z.writestr("pad.bin", b"x" * 100)
    assert abs(decode(f"{archive}{ZIP_SEPARATOR}a.wav")[1].duration - 0.5) < 0.01


def test_truncation_check_spares_streaming_headers():
    data = bytearray(fakes.audio_bytes(0.3))
    assert wav_truncation(bytes(data)) is None
    assert "truncated" in wav_truncation(bytes(data[:-100]))
    assert wav_truncation(bytes(data[:-1])) is None  # a partial last frame is tolerated
    pos = data.index(b"data")
    data[pos + 4 : pos + 8] = struct.pack("<I", 0xFFFFFFFF)  # size unknown (streaming writer)
    assert wav_truncation(bytes(data)) is None
    assert wav_truncation(b"fLaC....") is None


def test_crop_long_clip():
    wave = np.arange(100, dtype=np.float32)
    assert crop(wave, 40, "start").tolist() == list(range(40))
    assert crop(wave, 40, "center").tolist() == list(range(30, 70))
    assert crop(wave, 200) is wave


# ------------------------------------------------------------------------------- through the table


def _bad_input_corpus(root):
    """A manifest corpus with three good speakers, every unusual-but-fine case, a 60 s clip, every bad case
    and a missing file. Returns (manifest, names of the bad files)."""
    rows, bad = [], []
    for s in ("good1", "good2", "good3"):
        for label in ("a", "b"):
            fakes.write_audio(root / f"{s}_{label}.wav", seed=len(rows))
            rows.append({"path": f"{s}_{label}.wav", "label": label, "speaker": s})
    for case, (writer, _) in fakes.UNUSUAL_CASES.items():
        path = writer(root / f"{case}.wav")
        rows.append({"path": path.name, "label": "a", "speaker": "odd"})
    fakes.write_long(root / "long.wav", 60.0)  # twice Whisper's window: cropped, counted
    rows.append({"path": "long.wav", "label": "b", "speaker": "odd"})
    for i, name in enumerate(("a clip with spaces.wav", "émotion ü 情感.wav", "it's \"quoted\".wav")):  # odd names
        fakes.write_audio(root / name, seed=100 + i)
        rows.append({"path": name, "label": "b", "speaker": "odd"})
    for case, (writer, _) in fakes.BAD_CASES.items():
        writer(root / f"{case}.wav")
        rows.append({"path": f"{case}.wav", "label": "a", "speaker": "bad"})
        bad.append(f"{case}.wav")
    rows.append({"path": "missing.wav", "label": "b", "speaker": "bad"})
    bad.append("missing.wav")
    return fakes.write_manifest(root / "manifest.csv", rows), bad


def test_error_policy_lists_every_bad_file_with_its_reason(tmp_path, cfg):
    manifest, bad = _bad_input_corpus(tmp_path / "corpus")
    report = tmp_path / "report"
    with pytest.raises(BadAudioReport) as err:
        build_table(cfg(name="manifest", manifest=str(manifest)), report_dir=report)
    message = str(err.value)
    assert f"{len(bad)} unusable clip(s)" in message
    for name in bad:
        assert f"{name}: " in message
    for case, (_, fragment) in fakes.BAD_CASES.items():
        line = next(li for li in message.splitlines() if f"{case}.wav:" in li)
        assert fragment in line
    assert "missing.wav: file not found" in message
    assert "on_bad_audio=skip" in message
    assert isinstance(err.value, BadAudioError) and len(err.value.files) == len(bad)
    listed = json.loads((report / "bad_audio.json").read_text())
    assert sorted(f["path"].rsplit("/", 1)[-1] for f in listed["files"]) == sorted(bad)
    # nothing cached for a failed build: the same call fails again
    with pytest.raises(BadAudioReport):
        build_table(cfg(name="manifest", manifest=str(manifest)))


def test_skip_policy_skips_counts_and_lists(tmp_path, cfg):
    manifest, bad = _bad_input_corpus(tmp_path / "corpus")
    report = tmp_path / "report"
    c = cfg(name="manifest", manifest=str(manifest), on_bad_audio="skip", max_seconds=30.0)
    table = build_table(c, report_dir=report)
    kept = 6 + len(fakes.UNUSUAL_CASES) + 1 + 3  # good, unusual, long, the three odd file names
    assert len(table.dataset) == kept
    assert {"a clip with spaces", "émotion ü 情感", "it's \"quoted\""} <= set(table.dataset["key"])
    assert "bad" not in set(table.dataset["speaker"])
    listed = json.loads((report / "bad_audio.json").read_text())
    assert listed["skipped"] == len(bad)
    reasons = {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in listed["files"]}
    assert sorted(reasons) == sorted(bad)
    for case, (_, fragment) in fakes.BAD_CASES.items():
        assert fragment in reasons[f"{case}.wav"]
    summary = json.loads((report / "table_report.json").read_text())
    assert (summary["clips"], summary["skipped"], summary["cropped"]) == (kept, len(bad), 1)
    assert summary["cropped_files"][0].endswith("long.wav") and summary["max_seconds"] == 30.0
    assert summary["counts"] == {"a": 3 + len(fakes.UNUSUAL_CASES), "b": 4 + 3}
    cropped = dict(zip(table.dataset["key"], table.dataset["cropped"]))
    assert cropped["long"] is True and sum(cropped.values()) == 1
    durations = dict(zip(table.dataset["key"], table.dataset["duration"]))
    assert abs(durations["long"] - 60.0) < 0.01 and abs(durations["48khz"] - 0.3) < 0.01
    # second build: from the cache, same counts in the report
    again = build_table(c, report_dir=tmp_path / "report2")
    assert again.fingerprint == table.fingerprint and again.bad_audio == table.bad_audio
    assert json.loads((tmp_path / "report2" / "table_report.json").read_text())["skipped"] == len(bad)


def test_cropped_count_follows_max_seconds(tmp_path, cfg):
    root = tmp_path / "corpus"
    rows = []
    for i, seconds in enumerate((0.3, 2.0, 3.0)):
        fakes.write_audio(root / f"s{i}_x.wav", seconds=seconds)
        rows.append({"path": f"s{i}_x.wav", "label": "x", "speaker": f"s{i}"})
    manifest = fakes.write_manifest(root / "m.csv", rows)
    table = build_table(cfg(name="manifest", manifest=str(manifest), max_seconds=1.5), report_dir=tmp_path / "r")
    assert table.report()["cropped"] == 2
    assert json.loads((tmp_path / "r" / "table_report.json").read_text())["cropped"] == 2
    assert json.loads((tmp_path / "r" / "bad_audio.json").read_text()) == {"skipped": 0, "files": []}


def test_fixed_file_rebuilds_the_table_and_clears_the_report(tmp_path, cfg):
    root = tmp_path / "corpus"
    rows = [{"path": f"s{i}_x.wav", "label": "x", "speaker": f"s{i}"} for i in range(3)]
    for i in range(2):
        fakes.write_audio(root / f"s{i}_x.wav")
    fakes.write_zero_byte(root / "s2_x.wav")
    manifest = fakes.write_manifest(root / "m.csv", rows)
    c = cfg(name="manifest", manifest=str(manifest), on_bad_audio="skip")
    assert len(build_table(c, report_dir=tmp_path / "r").dataset) == 2
    fakes.write_audio(root / "s2_x.wav", seconds=0.4)
    assert len(build_table(c, report_dir=tmp_path / "r").dataset) == 3
    assert json.loads((tmp_path / "r" / "bad_audio.json").read_text())["skipped"] == 0


def test_every_clip_bad_is_an_error_even_when_skipping(tmp_path, cfg):
    root = tmp_path / "corpus"
    fakes.write_garbage(root / "s1_x.wav")
    manifest = fakes.write_manifest(root / "m.csv", [{"path": "s1_x.wav", "label": "x", "speaker": "s1"}])
    with pytest.raises(ValueError, match="every clip was unusable"):
        build_table(cfg(name="manifest", manifest=str(manifest), on_bad_audio="skip"))


def test_loader_errors_are_not_skipped_by_the_audio_policy(tmp_path, cfg):
    """An unknown label or an unreadable speaker is a corpus error, raised under on_bad_audio=skip too."""
    shemo_root = fakes.make_shemo(tmp_path / "shemo", ["F01A01.wav", "F01X01.wav"])
    folder_root = fakes.make_folder(tmp_path / "folder", speakers=("s1",), labels=("calm",))
    fakes.write_audio(folder_root / "calm" / "nospeaker.wav")
    for policy in ("error", "skip"):
        with pytest.raises(ValueError, match=r"F01X01\.wav: unknown ShEMO emotion letter 'X'"):
            build_table(cfg(name="shemo", root=str(shemo_root), on_bad_audio=policy))
        with pytest.raises(ValueError, match=r"nospeaker\.wav: cannot read a speaker"):
            build_table(cfg(name="folder", root=str(folder_root), on_bad_audio=policy))
