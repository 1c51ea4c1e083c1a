"""Feature cache: one pass stores every layer, reuse without re-encoding, keys, corruption, padding trimmed."""

import fakes
import numpy as np
import pytest

from ser_lightning.features.cache import cache_for
from ser_lightning.features.extract import fill_cache
from ser_lightning.features.frontend import LengthPolicy


def _clips(tmp_path, n=6):
    return fakes.noise_clips(tmp_path, n, step_s=0.3)


def _cache(tmp_path, encoder, policy="clip", dtype="fp16"):
    return cache_for(str(tmp_path / "c"), encoder.fingerprint, {"n_mels": 80}, policy, 30.0, "center", dtype=dtype)


def test_one_pass_stores_all_layers_and_is_reused(tmp_path, random_encoder):
    paths, durations = _clips(tmp_path)
    cache = _cache(tmp_path, random_encoder)
    first = fill_cache(cache, random_encoder, paths, durations, [1, 2], LengthPolicy.parse("clip"), progress=False)
    assert first.encoded == 6
    # multi-layer and single-layer configurations are served without encoding again
    again = fill_cache(cache, random_encoder, paths, durations, [2], LengthPolicy.parse("clip"), progress=False)
    assert again.encoded == 0 and again.cached == 6
    for h, seconds in durations.items():
        a = cache.get(h, 2)
        assert a.dtype == np.float16 and a.shape == ((int(seconds * 16000) // 160 + 1) // 2, 64)  # trimmed to the clip
    # a layer that was not stored triggers encoding of exactly the clips that lack it
    assert cache.missing(list(paths), [1, 2]) == []


def test_cache_key_changes_with_what_changes_features(tmp_path, random_encoder):
    a = _cache(tmp_path, random_encoder)
    assert a.key != _cache(tmp_path, random_encoder, policy="30s").key
    assert a.key != _cache(tmp_path, random_encoder, dtype="fp32").key
    from ser_lightning.features.encoder import load_encoder

    assert a.key != _cache(tmp_path, load_encoder("random:test", seed=5)).key
    assert a.key == _cache(tmp_path, random_encoder).key


def test_corrupt_shard_is_detected_and_rebuilt(tmp_path, random_encoder):
    paths, durations = _clips(tmp_path)
    cache = _cache(tmp_path, random_encoder)
    fill_cache(cache, random_encoder, paths, durations, [1], LengthPolicy.parse("clip"), progress=False)
    good = cache.get("h3", 1).copy()
    shard = next(cache.dir.glob("shard-*"))
    f = shard / "layer_1.npy"
    raw = bytearray(f.read_bytes())
    raw[-10] ^= 0xFF  # flip bits in the data: same size, wrong content
    f.write_bytes(bytes(raw))
    reopened = _cache(tmp_path, random_encoder)
    assert reopened.missing(list(paths), [1]) == list(paths)  # nothing trusted from the corrupt shard
    assert list((reopened.dir / "corrupt").iterdir())
    stats = fill_cache(reopened, random_encoder, paths, durations, [1], LengthPolicy.parse("clip"), progress=False)
    assert stats.encoded == 6
    np.testing.assert_array_equal(reopened.get("h3", 1), good)


def test_unknown_clip_is_a_clear_error(tmp_path, random_encoder):
    with pytest.raises(KeyError, match="not in the cache"):
        _cache(tmp_path, random_encoder).get("nope", 1)


def test_an_input_frame_cache_keeps_the_padding_frames_and_each_clips_own_length(tmp_path, random_encoder):
    """frames=input (adapted blocks under 10 s inputs): own key; every frame the encoder attended to is stored, the
    index lists each clip's own frame count (what the head pools over); a shard without those counts is corrupt."""
    import json

    paths, durations = _clips(tmp_path)
    common = (str(tmp_path / "c"), random_encoder.fingerprint, {"n_mels": 80}, "2s", 30.0, "center")
    trimmed, full = cache_for(*common), cache_for(*common, input_frames=True)
    assert trimmed.key != full.key and full.keeps_input_frames and not trimmed.keeps_input_frames
    for cache in (trimmed, full):
        fill_cache(cache, random_encoder, paths, durations, [1], LengthPolicy.parse("2"), progress=False)
    for h, seconds in durations.items():
        own = (int(seconds * 16000) // 160 + 1) // 2
        stored = full.get(h, 1)
        assert stored.shape[0] == max(own, 100) and full.content_length(h, 1) == own  # 2 s = 100 encoder frames
        np.testing.assert_array_equal(stored[:own], trimmed.get(h, 1))  # the own frames are the trimmed cache's
        assert trimmed.content_length(h, 1) == own
    with pytest.raises(ValueError, match="content_lengths are required"):
        full.write_shard(["x"], {1: [np.zeros((3, 64), np.float32)]})
    with pytest.raises(ValueError, match="content_lengths are only kept"):
        trimmed.write_shard(["x"], {1: [np.zeros((3, 64), np.float32)]}, [2])
    index_file = next(full.dir.glob("shard-*")) / "index.json"
    index = json.loads(index_file.read_text())
    del index["content_lengths"]
    from ser_lightning.utils.io import json_digest

    index["index_sha256"] = json_digest(index, "index_sha256")  # a consistent index, but without the counts
    index_file.write_text(json.dumps(index))
    assert cache_for(*common, input_frames=True).missing(list(paths), [1]) == list(paths)  # moved aside, re-encoded
