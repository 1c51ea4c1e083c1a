"""Integrity of the on-disk caches (issue #19): a feature shard's index.json and the corpus-table Arrow cache are
verified on load; what does not verify is detected, named, moved aside and rebuilt, and the rebuilt data equal
the original."""

import json

import fakes
import numpy as np
import pytest

from ser_lightning.features.cache import cache_for
from ser_lightning.features.extract import fill_cache
from ser_lightning.features.frontend import LengthPolicy
from ser_lightning.utils.io import json_digest

# ------------------------------------------------------------------------------------ feature-cache index


def _clips(tmp_path, n=6):
    return fakes.noise_clips(tmp_path, n, step_s=0.2)


def _cache(tmp_path, encoder, verify=True):
    return cache_for(str(tmp_path / "c"), encoder.fingerprint, {"n_mels": 80}, "clip", 30.0, "center", verify=verify)


def _fill(cache, encoder, paths, durations):
    return fill_cache(cache, encoder, paths, durations, [1, 2], LengthPolicy.parse("clip"), progress=False)


def _edit_index(cache, edit):
    (shard,) = cache.dir.glob("shard-*")
    index_file = shard / "index.json"
    index = json.loads(index_file.read_text())
    edit(index)
    index_file.write_text(json.dumps(index))
    return index_file


def _shift_one_offset(index):
    index["offsets"][2] += 3  # what the fault probe did: the clip now starts 3 frames late


def _swap_two_lengths(index):
    index["lengths"][1], index["lengths"][2] = index["lengths"][2], index["lengths"][1]


def _swap_two_hashes(index):
    index["hashes"][0], index["hashes"][1] = index["hashes"][1], index["hashes"][0]


@pytest.mark.parametrize("edit", [_shift_one_offset, _swap_two_lengths, _swap_two_hashes])
@pytest.mark.parametrize("verify", [True, False])
def test_changed_index_is_detected_and_the_shard_reencoded(tmp_path, random_encoder, capsys, edit, verify):
    paths, durations = _clips(tmp_path)
    cache = _cache(tmp_path, random_encoder, verify)
    _fill(cache, random_encoder, paths, durations)
    before = {(h, k): np.array(cache.get(h, k)) for h in paths for k in (1, 2)}
    index_file = _edit_index(cache, edit)
    capsys.readouterr()

    reopened = _cache(tmp_path, random_encoder, verify)
    out = capsys.readouterr().out
    assert "corrupt shard moved aside" in out and str(index_file) in out and "index checksum mismatch" in out
    assert reopened.missing(list(paths), [1, 2]) == list(paths)  # nothing trusted from that shard
    (moved,) = (reopened.dir / "corrupt").iterdir()
    assert "index.json" in json.loads((moved / "REASON.json").read_text())["reason"]
    assert _fill(reopened, random_encoder, paths, durations).encoded == len(paths)
    after = _cache(tmp_path, random_encoder, verify)
    assert after.missing(list(paths), [1, 2]) == []
    for (h, k), want in before.items():
        np.testing.assert_array_equal(np.array(after.get(h, k)), want)


def test_index_without_checksum_from_older_code_is_reverified(tmp_path, random_encoder, capsys):
    """An index written before index_sha256 existed stays readable (structure and arrays re-verified)..."""
    paths, durations = _clips(tmp_path)
    cache = _cache(tmp_path, random_encoder)
    _fill(cache, random_encoder, paths, durations)
    before = {h: np.array(cache.get(h, 1)) for h in paths}
    _edit_index(cache, lambda index: index.pop("index_sha256"))
    capsys.readouterr()
    legacy = _cache(tmp_path, random_encoder)
    assert "corrupt" not in capsys.readouterr().out and legacy.missing(list(paths), [1, 2]) == []
    for h, want in before.items():
        np.testing.assert_array_equal(np.array(legacy.get(h, 1)), want)

    # ... but a changed offset in such an index is still caught: offsets must be the running sum of the lengths
    def legacy_shifted(index):
        index.pop("index_sha256", None)
        _shift_one_offset(index)

    index_file = _edit_index(legacy, legacy_shifted)
    reopened = _cache(tmp_path, random_encoder)
    out = capsys.readouterr().out
    assert str(index_file) in out and "inconsistent index" in out
    assert reopened.missing(list(paths), [1]) == list(paths)
    _fill(reopened, random_encoder, paths, durations)
    for h, want in before.items():
        np.testing.assert_array_equal(np.array(_cache(tmp_path, random_encoder).get(h, 1)), want)


def test_malformed_index_is_a_corrupt_shard_not_a_crash(tmp_path, random_encoder, capsys):
    paths, durations = _clips(tmp_path, 3)
    cache = _cache(tmp_path, random_encoder)
    _fill(cache, random_encoder, paths, durations)
    index_file = _edit_index(cache, lambda index: index.pop("lengths"))
    reopened = _cache(tmp_path, random_encoder)
    assert str(index_file) in capsys.readouterr().out
    assert reopened.missing(list(paths), [1]) == list(paths)


# ------------------------------------------------------------------------------------ corpus-table cache


@pytest.fixture
def table_cfg(ravdess_root, cfg):
    return cfg(name="ravdess", root=str(ravdess_root), classes=["neutral", "happy", "sad", "angry"], limit_per_class=2)


def _arrow_file(c):
    from pathlib import Path

    (f,) = Path(c["table_cache_dir"]).glob("ravdess-*/arrow/*.arrow")
    return f


def _rows(table):
    return table.dataset.to_dict()


def _flip_a_label(f, table):
    """Flip the lowest bit of one row's label in the Arrow file (the value stays a valid class index)."""
    labels = np.asarray(table.dataset["label"], dtype="<i8")
    raw = bytearray(f.read_bytes())
    at = raw.find(labels.tobytes())
    assert at > 0 and raw.count(labels.tobytes()) == 1, "the label column was not found in the Arrow file"
    raw[at] ^= 0x01  # row 0: label 0 <-> 1, 2 <-> 3: no longer the index of its label_name
    f.write_bytes(bytes(raw))


def _truncate(f, table):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_flip_a_label, _truncate])
def test_damaged_table_cache_is_detected_named_and_rebuilt(table_cfg, capsys, damage):
    from ser_lightning.data.table import build_table

    original = build_table(table_cfg)
    want = _rows(original)
    f = _arrow_file(table_cfg)
    damage(f, original)
    capsys.readouterr()

    rebuilt = build_table(table_cfg)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[ser table]")]
    assert len(lines) == 1 and str(f) in lines[0] and "rebuilding" in lines[0], lines
    assert _rows(rebuilt) == want
    names = rebuilt.class_names
    assert all(names[i] == n for i, n in zip(rebuilt.dataset["label"], rebuilt.dataset["label_name"]))
    (moved,) = (f.parents[2] / "corrupt").iterdir()
    assert str(f) in json.loads((moved / "REASON.json").read_text())["reason"]
    # the rebuilt cache verifies: the next load reuses it silently
    assert _rows(build_table(table_cfg)) == want and "[ser table]" not in capsys.readouterr().out


def test_label_inconsistent_with_label_name_is_caught_even_with_matching_checksums(table_cfg, capsys):
    """The row check is independent of the checksums: a table re-saved with a wrong label (and fresh checksums,
    as a buggy writer would) is still refused."""
    from ser_lightning.data import table as tmod

    original = tmod.build_table(table_cfg)
    want = _rows(original)
    root = _arrow_file(table_cfg).parents[1]
    bad = original.dataset.map(lambda r, i: {"label": (r["label"] + 1) % 4} if i == 0 else {}, with_indices=True)
    bad.save_to_disk(str(root / "arrow2"))
    import shutil

    shutil.rmtree(root / "arrow")
    (root / "arrow2").rename(root / "arrow")
    meta = json.loads((root / "COMPLETE.json").read_text())
    meta["files"] = tmod._file_sums(root / "arrow")
    meta["sha256"] = json_digest(meta, "sha256")
    (root / "COMPLETE.json").write_text(json.dumps(meta))
    capsys.readouterr()
    rebuilt = tmod.build_table(table_cfg)
    out = capsys.readouterr().out
    assert "row 0 has label" in out and str(root / "arrow") in out
    assert _rows(rebuilt) == want


def test_table_cache_from_older_code_is_rebuilt(table_cfg, capsys):
    from ser_lightning.data.table import build_table

    want = _rows(build_table(table_cfg))
    root = _arrow_file(table_cfg).parents[1]
    meta = json.loads((root / "COMPLETE.json").read_text())
    (root / "COMPLETE.json").write_text(json.dumps({"bad_audio": meta["bad_audio"], "n": meta["n"]}))  # old format
    capsys.readouterr()
    assert _rows(build_table(table_cfg)) == want
    out = capsys.readouterr().out
    assert "without checksums" in out and str(root / "COMPLETE.json") in out
    assert json.loads((root / "COMPLETE.json").read_text())["format"] == 2


def test_unreadable_completion_marker_is_rebuilt(table_cfg, capsys):
    from ser_lightning.data.table import build_table

    want = _rows(build_table(table_cfg))
    done = _arrow_file(table_cfg).parents[1] / "COMPLETE.json"
    done.write_text(done.read_text()[:-5])
    capsys.readouterr()
    assert _rows(build_table(table_cfg)) == want
    assert str(done) in capsys.readouterr().out
