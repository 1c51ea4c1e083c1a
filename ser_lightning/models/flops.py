"""The FLOPs of this project's two compute paths, counted on the real modules (utils/flops.py: the counter and its
exact fits): `EncoderCost`, the frozen Whisper encoder's forward on one clip (conv front end and the blocks run, any
token stride set on it), and `ModuleCost`, a trained SERModule's step from its fed features (adapted encoder blocks,
then the head): eval forward, and train-mode forward + `loss.backward()`. Both take batch-1 counts at a few
representative lengths and fit them exactly (linear layers are linear in the frames, attention quadratic); see
run/compute.py for how a run's figures are built from them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from ser_lightning.features.frontend import LengthPolicy, encoder_frames, mel_frames
from ser_lightning.utils.flops import Counted, Term, ceil_div as _ceil_div, count_flops

# representative lengths: mel frames for the encoder, encoder frames (features) for the module; mixed residues so the
# stride terms (ceil(T/2), ceil(T/s)) are told apart. The fits are exact, so short lengths suffice.
ENCODER_POINTS = (64, 97, 128, 151, 190, 233, 256, 301, 344, 389)
HEAD_POINTS = (11, 23, 38, 50, 67, 81, 97, 120, 133, 149, 158, 171, 190, 203)


def stride_of(settings: Any) -> int:
    return int(settings["stride"]) if isinstance(settings, Mapping) and settings.get("stride") else 1


class EncoderCost:
    """FLOPs of FrozenWhisperEncoder.forward on one clip of T_mel mel frames, reading `layers` (blocks 1..max run),
    with the encoder's token stride when one is set. Variables: (T_mel, ceil(T_mel / 2)[, ceil(. / stride)])."""

    def __init__(self, encoder: Any, layers: Sequence[int], store: Optional[Dict[str, Any]] = None) -> None:
        self.encoder, self.layers = encoder, encoder.resolve_layers(list(layers))
        self.stride = stride_of(getattr(encoder, "stride_settings", None))
        terms: List[Term] = [(-1, 0), (0, 1), (1, 1), (1, 2)] + ([(2, 1), (2, 2)] if self.stride > 1 else [])
        self.counted = Counted({} if store is None else store, self._count, terms, [self.point(t) for t in ENCODER_POINTS])

    def point(self, t_mel: int) -> Tuple[int, ...]:
        t = encoder_frames(int(t_mel))
        return (int(t_mel), t) + ((_ceil_div(t, self.stride),) if self.stride > 1 else ())

    def _count(self, point: Tuple[int, ...]) -> int:
        t_mel = point[0]
        device = next(self.encoder.parameters()).device
        x = torch.zeros(1, self.encoder.num_mel_bins, t_mel, device=device)
        frames = torch.tensor([t_mel], device=device)
        content = torch.tensor([encoder_frames(t_mel)], device=device)
        return count_flops(lambda: self.encoder(x, frames, content, self.layers))

    def flops(self, t_mel: int) -> float:
        """FLOPs at T_mel mel frames (from the fit, or counted)."""
        return self.counted(self.point(t_mel))

    def clip_flops(self, samples: int, policy: LengthPolicy | str) -> float:
        """FLOPs of a clip of `samples` samples (16 kHz, cropped) under an input policy ('clip', '10', 'clip+2')."""
        policy = LengthPolicy.parse(policy) if isinstance(policy, str) else policy
        return self.flops(mel_frames(policy.input_samples(int(samples))))


@contextmanager
def preserved(module: torch.nn.Module) -> Iterator[None]:
    """Counting leaves the module as it was: train/eval modes, gradients, RNG state, speaker statistics."""
    modes = {m: m.training for m in module.modules()}
    grads = {p: p.grad for p in module.parameters()}
    speaker = (getattr(module, "speaker_mean", None), getattr(module, "speaker_std", None))
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            for m, mode in modes.items():
                m.training = mode
            for p, g in grads.items():
                p.grad = g
            if hasattr(module, "speaker_mean"):
                module.speaker_mean, module.speaker_std = speaker


class ModuleCost:
    """FLOPs of the trained SERModule from its fed features (adapted blocks, then the head) on one clip: `forward`
    (eval, no grad) and `train` (train mode, forward + loss.backward()). A point is (T_feat, T_content) when the fed
    features hold every input frame (padding included: live encoder or a cache that keeps input frames), else
    (T,); a head token stride adds ceil(. / stride) of each."""

    def __init__(self, module: Any, feature_dim: int, input_frames: bool,
                 stores: Optional[Tuple[Dict, Dict]] = None) -> None:  # fmt: skip
        self.module, self.dim, self.input_frames = module, int(feature_dim), bool(input_frames)
        stores = stores or ({}, {})
        self.stride = int(getattr(getattr(module.head, "config", None), "token_stride", 1) or 1)
        n = 2 if self.input_frames else 1
        terms: List[Term] = [(-1, 0)] + [(v, p) for v in range(n * (2 if self.stride > 1 else 1)) for p in (1, 2)]
        if self.input_frames:
            pairs = [(a, b) for i, a in enumerate(HEAD_POINTS) for b in (HEAD_POINTS[i // 2], HEAD_POINTS[i // 3], a)]
        else:
            pairs = [(a,) for a in HEAD_POINTS]
        candidates = [self.point(*p) for p in pairs]
        self.forward = Counted(stores[0], lambda p: self._count(p, train=False), terms, candidates)
        self.train = Counted(stores[1], lambda p: self._count(p, train=True), terms, candidates)

    def point(self, t_feat: int, t_content: Optional[int] = None) -> Tuple[int, ...]:
        base = (int(t_feat), int(t_feat if t_content is None else t_content)) if self.input_frames else (int(t_feat),)
        return base + (tuple(_ceil_div(t, self.stride) for t in base) if self.stride > 1 else ())

    def batch(self, t_feat: int, t_content: int) -> Dict[str, torch.Tensor]:
        m = self.module
        device = m.device
        n_fed = len(m.layers)
        shape = (1, t_feat, self.dim) if n_fed == 1 else (1, n_fed, t_feat, self.dim)
        frames = torch.arange(t_feat, device=device)[None, :]
        batch = {"features": torch.zeros(shape, device=device), "mask": frames < t_content,
                 **{k: torch.zeros(1, dtype=torch.long, device=device) for k in ("label", "index", "speaker")}}  # fmt: skip
        if t_content != t_feat:
            batch["input_mask"] = frames < t_feat
        return batch

    def _count(self, point: Tuple[int, ...], train: bool) -> int:
        m = self.module
        t_feat, t_content = (point[0], point[1]) if self.input_frames else (point[0], point[0])
        batch = self.batch(t_feat, t_content)
        if getattr(m.head, "speaker_norm", False) and getattr(m, "speaker_mean", None) is None:
            ones = torch.ones(1, len(m.read_layers), self.dim)
            m.set_speaker_stats(ones * 0, ones)  # restored by `preserved`
        if not train:
            m.eval()

            def run() -> None:
                with torch.no_grad():
                    m(batch)
        else:
            m.train()

            def run() -> None:
                with torch.enable_grad():
                    loss = m.model_step(batch)[0]
                    loss.backward()

        flops = count_flops(run)
        if train:
            for p in m.parameters():
                p.grad = None
        return flops


def module_parameters(encoder: Any, module: Any, fed_layers: Sequence[int]) -> Tuple[int, int]:
    """(trainable: head + adapted, total: every parameter on the inference path, the encoder's included)."""
    head = list(module.head.parameters())
    adapter = list(module.adapter.parameters()) if module.adapter is not None else []
    trainable = sum(p.numel() for p in head + adapter if p.requires_grad)
    enc = encoder.encoder
    run = max(fed_layers)
    parts = [enc.conv1, enc.conv2, enc.embed_positions, *enc.layers[:run]]
    parts += [enc.layer_norm] if run == len(enc.layers) else []  # applied after the last block only
    used = sum(p.numel() for part in parts for p in part.parameters())
    return trainable, used + sum(p.numel() for p in head + adapter)
