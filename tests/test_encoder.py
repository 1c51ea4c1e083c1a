"""Frozen Whisper encoder: layer mapping, exactness of the short-input forward, batch invariance, loading."""

import numpy as np
import pytest
import soundfile as sf
import torch

from ser_lightning.features.encoder import load_encoder
from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend


def _clips(root, n=3):
    files = sorted((root / "Actor_01").glob("*.flac"))[:: 20][:n]
    return [sf.read(f, dtype="float32")[0] for f in files]


def test_frontend_equals_whisper_feature_extractor(ravdess_root):
    from transformers import WhisperFeatureExtractor

    ext, fe = WhisperFeatureExtractor(), LogMelFrontend(80)
    for wave in _clips(ravdess_root, 2):
        ref30 = ext(wave, sampling_rate=16000, return_tensors="pt").input_features
        ours30, frames, _ = fe([wave], LengthPolicy.parse("30"))
        torch.testing.assert_close(ours30, ref30, rtol=0, atol=1e-5)
        assert int(frames[0]) == 3000
        ref = ext(wave, sampling_rate=16000, return_tensors="pt", padding="longest").input_features
        ours, _, _ = fe([wave], LengthPolicy.parse("clip"))
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_layer_k_is_transformers_hidden_states_k_on_real_weights(tiny_encoder, ravdess_root):
    """On the full 3000-frame input our forward must equal transformers' own encoder, layer by layer."""
    wave = _clips(ravdess_root, 1)[0]
    feats, frames, content = LogMelFrontend(80)([wave], LengthPolicy.parse("30"))
    with torch.no_grad():
        ref = tiny_encoder.encoder(feats, output_hidden_states=True)
    layers = list(range(1, tiny_encoder.num_layers + 1))
    out = tiny_encoder(feats, frames, content, layers)
    assert len(ref.hidden_states) == tiny_encoder.num_layers + 1  # [0] = embeddings
    for k in layers:
        torch.testing.assert_close(out.layers[k], ref.hidden_states[k], rtol=1e-4, atol=1e-4)
    # only the last layer carries the final LayerNorm: it is last_hidden_state
    torch.testing.assert_close(out.layers[tiny_encoder.num_layers], ref.last_hidden_state, rtol=1e-4, atol=1e-4)
    # the real-audio mask covers ceil(n/320) frames of the 1500
    assert int(out.mask.sum()) == (len(wave) // 160 + 1) // 2


def test_clip_features_do_not_depend_on_batch_neighbours(tiny_encoder, ravdess_root):
    waves = _clips(ravdess_root, 3)
    waves[1] = waves[1][: len(waves[1]) // 2]  # very different lengths in one batch
    fe = LogMelFrontend(80)
    for policy in ("clip", "5"):
        p = LengthPolicy.parse(policy)
        batch = tiny_encoder(*fe(waves, p), [2, 4])
        for i, w in enumerate(waves):
            alone = tiny_encoder(*fe([w], p), [2, 4])
            n = int(alone.mask.sum())
            assert int(batch.mask[i].sum()) == n
            for k in (2, 4):
                torch.testing.assert_close(batch.layers[k][i, :n], alone.layers[k][0, :n], rtol=1e-4, atol=2e-4)


def test_unmasked_batching_would_differ(tiny_encoder, ravdess_root):
    """Guard: without the key mask, a short clip's features change when batched with a long one."""
    waves = _clips(ravdess_root, 2)
    short = waves[0][:16000]
    fe = LogMelFrontend(80)
    feats, frames, content = fe([short, waves[1]], LengthPolicy.parse("clip"))
    masked = tiny_encoder(feats, frames, content, [4]).layers[4][0, : int(content[0])]
    full = torch.full_like(frames, feats.shape[-1])  # pretend every frame is real input
    unmasked = tiny_encoder(feats, full, content, [4]).layers[4][0, : int(content[0])]
    assert (masked - unmasked).abs().max() > 1e-2


def test_only_needed_blocks_run_and_encoder_is_frozen(random_encoder):
    calls = []
    hooks = [b.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, b in enumerate(random_encoder.encoder.layers)]
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    random_encoder(*LogMelFrontend(80)([wave], LengthPolicy.parse("clip")), [1])
    for h in hooks:
        h.remove()
    assert calls == [0]
    assert not any(p.requires_grad for p in random_encoder.parameters())
    random_encoder.train()
    assert not random_encoder.encoder.training


def test_layer_errors_list_what_exists(random_encoder):
    with pytest.raises(ValueError, match=r"available 1\.\.2"):
        random_encoder.resolve_layers([3])
    assert random_encoder.resolve_layers([-1]) == [2]


def test_loading_errors_and_fingerprints(tmp_path, tiny_en_path):
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_encoder(str(tmp_path))
    with pytest.raises(ValueError, match="available: test, tiny, base"):
        load_encoder("random:huge")
    a, b = load_encoder("random:test", seed=0), load_encoder("random:test", seed=1)
    assert a.fingerprint != b.fingerprint and a.fingerprint == load_encoder("random:test", seed=0).fingerprint
    tiny = load_encoder(str(tiny_en_path))
    assert (tiny.num_layers, tiny.output_dim, tiny.num_mel_bins) == (4, 384, 80)
    # only encoder tensors are materialised: the module is a WhisperEncoder with no decoder
    assert type(tiny.encoder).__name__ == "WhisperEncoder"


def test_random_sizes_match_the_official_configs():
    from ser_lightning.features.encoder import random_whisper_config

    assert random_whisper_config("small").encoder_layers == 12
    assert random_whisper_config("large-v3").num_mel_bins == 128
