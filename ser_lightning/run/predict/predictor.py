"""The model side of `ser predict`: head.json checks, the exported head(s) + the encoder they were trained on
(fingerprint-checked), features exactly as training's cache held them, long clips cut into windows whose
probabilities are averaged, speaker-normalised heads scored one speaker at a time; `predict_files` is the
Python entry."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ser_lightning.run.predict.inputs import expand_inputs


class EncoderFingerprintError(ValueError):
    """The encoder weights are not the ones the head was trained on."""


def windows(num_samples: int, window: int, min_samples: int) -> List[Tuple[int, int]]:
    """Consecutive [start, end) spans of at most `window` samples; a short tail (< min_samples) is dropped."""
    if num_samples <= window:
        return [(0, num_samples)]
    spans = [(s, min(s + window, num_samples)) for s in range(0, num_samples, window)]
    if spans[-1][1] - spans[-1][0] < min_samples:
        spans.pop()
    return spans


def check_prediction_meta(meta: Dict[str, Any], path: Path | str) -> None:
    """ValueError naming head.json when it lacks (or holds malformed) a field prediction reads."""
    from ser_lightning.features.cache import DTYPES

    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: {what}; the file is damaged (re-export the run or copy it again)")

    enc, data = meta["encoder"], meta["data"]  # objects: checked by artifact.read_meta
    for key in ("source", "fingerprint"):
        if not isinstance(enc.get(key), str) or not enc[key]:
            raise bad(f"encoder.{key} must be a non-empty string (got {enc.get(key)!r})")
    layers = enc.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(k, int) and not isinstance(k, bool) for k in layers):
        raise bad(f"encoder.layers must be a non-empty list of integers (got {layers!r})")
    for key, required in (("sample_rate", True), ("max_seconds", True), ("min_seconds", False)):
        value = data.get(key)
        if value is None and not required:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or value != value:
            raise bad(f"data.{key} must be a positive number (got {value!r})")
    if meta.get("feature_dtype") is not None and meta["feature_dtype"] not in DTYPES:
        raise bad(f"feature_dtype must be one of {sorted(DTYPES)} or null (got {meta['feature_dtype']!r})")
    if not isinstance(meta.get("seed", 0), int):
        raise bad(f"seed must be an integer (got {meta.get('seed')!r})")


class Predictor:
    """Exported head + the encoder it was trained on; `predict(paths)` -> one record per path."""

    def __init__(self, run: Path | str, encoder: Optional[str] = None, device: Optional[str] = None,
                 batch_size: int = 16, encoder_module: Any = None) -> None:  # fmt: skip
        import torch

        from ser_lightning.features.encoder import load_encoder
        from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend
        from ser_lightning.features.pipeline import encoder_device
        from ser_lightning.run.artifact import CONFIG, export_members, find_export, load_heads

        self.folder = find_export(run)
        # one head, or an ensemble's members (ensemble.json): their softmax probabilities are averaged
        loaded = load_heads(self.folder)
        self.heads = [head for head, _ in loaded]
        self.metas = [meta for _, meta in loaded]
        self.head, self.meta = loaded[0]
        # every member shares encoder, data and feature dtype (load_heads checks): the first one's head.json speaks
        self.meta_path = export_members(self.folder)[0] / CONFIG
        check_prediction_meta(loaded[0][1], self.meta_path)
        self.class_names: List[str] = list(self.meta["class_names"])
        enc_info = self.meta["encoder"]
        self.device = torch.device(device or encoder_device())
        if encoder_module is None:
            source = encoder or enc_info["source"]
            try:
                encoder_module = load_encoder(source, device=self.device, dtype=self.meta["model"].get("encoder_dtype", "auto"),
                                              seed=int(self.meta.get("seed", 0)))  # fmt: skip
            except OSError as e:
                raise OSError(f"cannot load the encoder '{source}' named in {self.meta_path} ({e}); "
                              "pass --encoder PATH to a local copy of the same weights") from None  # fmt: skip
            try:  # model.encoder_stride_after: the token stride the head's features were made with (in the fingerprint)
                encoder_module.set_stride(**enc_info.get("stride", {}))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{self.meta_path}: encoder.stride {enc_info.get('stride')!r} ({e}); the file is damaged") from None
        if encoder_module.fingerprint != enc_info["fingerprint"]:
            def short(fp: str) -> str:  # the weights' sha256 abbreviated, a token stride (`+stride...`) in full
                sha, _, stride = fp.partition("+")
                return sha[:12] + (f"+{stride}" if stride else "")

            raise EncoderFingerprintError(
                f"encoder {encoder_module.source} has fingerprint {short(encoder_module.fingerprint)} (weights, and token "
                f"stride if any), but the head in {self.folder} was trained on {enc_info['source']} (fingerprint "
                f"{short(enc_info['fingerprint'])}); pass --encoder PATH to a copy of those weights"
            )
        self.encoder = encoder_module
        self.layers: List[int] = list(enc_info["layers"])
        # model.adapt=top|lora: each head's adapted encoder blocks, run on the fed layers before it (None: frozen)
        from ser_lightning.run.artifact import load_adapter

        self.adapters = [load_adapter(member, meta, encoder_module) for member, (_, meta) in zip(export_members(self.folder), loaded)]
        for adapter in self.adapters:
            if adapter is not None:
                adapter.to(self.device)
        try:
            self.policy = LengthPolicy.parse(self.meta["model"].get("input_seconds", "clip"))
        except ValueError as e:
            raise ValueError(f"{self.meta_path}: model.{e}; the file is damaged") from None
        self.frontend = LogMelFrontend(encoder_module.num_mel_bins)
        # adapted blocks under 10 s / 30 s / clip+T inputs attend to the padding frames: they are kept, as in training
        self.input_frames = self.policy.pads and any(a is not None for a in self.adapters)
        data = self.meta["data"]
        self.sample_rate = int(data["sample_rate"])
        self.window_seconds = min(float(data["max_seconds"]), 30.0)
        self.min_seconds = float(data.get("min_seconds", 0.1))
        self.feature_dtype = self.meta.get("feature_dtype")
        self.batch_size = int(batch_size)
        # model.feature_norm=speaker: predict() normalises each speaker's clips together (see there)
        self.speaker_norm = bool(getattr(self.head, "speaker_norm", False))
        for head in self.heads:
            head.to(self.device)

    def _features(self, waves: List[np.ndarray]) -> Tuple[List[Any], List[int]]:
        """Per window: the encoder features exactly as the feature cache held them in training, and the window's own
        frames among them (all of them unless adapted blocks need the padding frames too)."""
        import torch

        from ser_lightning.features.cache import DTYPES
        from ser_lightning.features.extract import encode_clips

        per_layer, content = encode_clips(self.encoder, self.frontend, waves, self.policy, self.layers, self.input_frames)
        out = []
        for i in range(len(waves)):
            arrays = [per_layer[k][i] for k in self.layers]
            if self.feature_dtype:
                arrays = [a.astype(DTYPES[self.feature_dtype]).astype(np.float32) for a in arrays]
            feats = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]
            out.append(feats[0] if len(feats) == 1 else torch.stack(feats))
        return out, content

    def _probabilities(self, waves: List[np.ndarray]) -> np.ndarray:
        """(N, C) class probabilities of N windows, batched by length like evaluation in training. A head trained
        with model.feature_norm=speaker is given the statistics of ALL N windows (one speaker)."""
        import torch

        from ser_lightning.data.datamodule import collate_features
        from ser_lightning.models.module import masked_stats

        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        batches = []
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            feats, content = self._features([waves[i] for i in idx])
            items = [{"features": f, "label": 0, "index": j, **({"content": c} if self.input_frames else {})}
                     for j, f, c in zip(idx, feats, content)]  # fmt: skip
            batches.append((idx, collate_features(items)))
        stats = None
        if self.speaker_norm:
            mean, std = masked_stats(((b["features"], b["mask"], None) for _, b in batches))  # (L, D) each
            stats = (mean.to(self.device), std.clamp_min(1e-5).to(self.device))
        probs = np.zeros((len(waves), len(self.class_names)), dtype=np.float64)
        for idx, batch in batches:
            norm = None if stats is None else tuple(t.expand(len(idx), *t.shape) for t in stats)  # (B, L, D) each
            features, mask = batch["features"].to(self.device), batch["mask"].to(self.device)
            input_mask = batch.get("input_mask", batch["mask"]).to(self.device)
            with torch.no_grad():
                p = torch.stack([torch.softmax(head(*self._head_input(adapter, meta, features, mask, input_mask), norm).float(), dim=-1)
                                 for head, adapter, meta in zip(self.heads, self.adapters, self.metas)]).mean(0)  # fmt: skip
            probs[idx] = p.cpu().numpy()
        return probs

    def predict(self, inputs: Iterable[Tuple[str, Optional[str]] | str], chunk: int = 64,
                speakers: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:  # fmt: skip
        """One record per input: path, label, probs (class -> p), duration, windows, error. A speaker-normalised
        head (model.feature_norm=speaker) normalises each speaker's inputs together: `speakers` maps path ->
        speaker (e.g. a manifest's speaker column); inputs it does not name form one more speaker. Their records
        carry `speaker` (None for that remainder)."""
        items = [(str(x), None) if isinstance(x, (str, Path)) else x for x in inputs]
        if not self.speaker_norm:
            return self._predict_items(items, chunk)
        groups: Dict[Optional[str], List[int]] = {}
        for i, (path, _) in enumerate(items):
            groups.setdefault((speakers or {}).get(path), []).append(i)
        records: List[Dict[str, Any]] = [{} for _ in items]
        for speaker, idx in groups.items():  # one pass per speaker: its statistics need all of its clips
            for i, rec in zip(idx, self._predict_items([items[i] for i in idx], sys.maxsize)):
                records[i] = {**rec, "speaker": speaker}
        return records

    def _predict_items(self, items: List[Tuple[str, Optional[str]]], chunk: int) -> List[Dict[str, Any]]:
        from ser_lightning.audio import BadAudioError, decode

        records: List[Dict[str, Any]] = []
        pending: List[Tuple[Dict[str, Any], List[np.ndarray], List[Tuple[int, int]]]] = []

        def flush() -> None:
            waves = [w for _, ws, _ in pending for w in ws]
            if waves:
                probs = self._probabilities(waves)
                k = 0
                for rec, ws, spans in pending:
                    p = probs[k : k + len(ws)]
                    k += len(ws)
                    rec["windows"] = [
                        {"start": a / self.sample_rate, "end": b / self.sample_rate, **self._label(pw)}
                        for (a, b), pw in zip(spans, p)
                    ]
                    rec.update(self._label(p.mean(axis=0)))
            pending.clear()

        window = int(round(self.window_seconds * self.sample_rate))
        min_samples = int(round(self.min_seconds * self.sample_rate))
        for path, error in items:
            rec: Dict[str, Any] = {"path": path, "label": None, "probs": None, "duration": None, "windows": [], "error": error}
            records.append(rec)
            if error:
                continue
            try:
                wave, info = decode(path, self.sample_rate, self.min_seconds)
            except BadAudioError as e:
                rec["error"] = e.reason
                continue
            rec["duration"] = round(info.duration, 4)
            spans = windows(len(wave), window, min_samples)
            pending.append((rec, [wave[a:b] for a, b in spans], spans))
            if sum(len(ws) for _, ws, _ in pending) >= chunk:
                flush()
        flush()
        return records

    @staticmethod
    def _head_input(adapter: Any, meta: Dict[str, Any], features: Any, mask: Any, input_mask: Any) -> Tuple[Any, Any]:
        """(the head's layers, their mask): the fed features as they are, or through the adapted encoder blocks
        (attending over `input_mask`, then cut to the clips' own frames, as in training: SERModule._features)."""
        if adapter is None:
            return features, mask
        from ser_lightning.models.adapt import adapt_features, trim_to_content

        spec = meta["adapt"]
        return trim_to_content(adapt_features(adapter, features, input_mask, spec["fed_layers"], spec["read_layers"]), mask)

    def _label(self, p: np.ndarray) -> Dict[str, Any]:
        return {"label": self.class_names[int(np.argmax(p))], "probs": {c: float(v) for c, v in zip(self.class_names, p)}}


def predict_files(run: Path | str, inputs: Sequence[str], encoder: Optional[str] = None,
                  allow_outside_root: bool = False, audio_root: Optional[str | Path] = None,
                  **kwargs: Any) -> List[Dict[str, Any]]:  # fmt: skip
    speakers: Dict[str, str] = {}
    paths = expand_inputs(inputs, allow_outside_root, speakers, audio_root)
    return Predictor(run, encoder=encoder, **kwargs).predict(paths, speakers=speakers)

