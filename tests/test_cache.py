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
