"""Frozen Whisper encoder: encoder-only loading, layer selection, any input length, padding-masked attention.

Layer numbering (`model.layer` / `model.layers`): k in 1..L is the output of encoder block k, which is
`hidden_states[k]` of transformers' WhisperEncoder (`hidden_states[0]` is the embeddings). Only the LAST
block's output carries the encoder's final LayerNorm (transformers applies `layer_norm` after the last block
only), so `layer=L` equals `last_hidden_state`; intermediate layers are pre-norm block outputs.
Only blocks 1..max(layers) are run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

# sizes of the official checkpoints, for random-weight encoders used in timing and tests
RANDOM_SIZES = {
    "test": dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, num_mel_bins=80),
    "tiny": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, num_mel_bins=80),
    "base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, num_mel_bins=80),
    "small": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, num_mel_bins=80),
    "medium": dict(d_model=1024, encoder_layers=24, encoder_attention_heads=16, num_mel_bins=80),
    "large-v3": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, num_mel_bins=128),
}
ENCODER_PREFIXES = ("model.encoder.", "encoder.")


def random_whisper_config(size: str):
    """A WhisperConfig of a known size with a tiny vocabulary (builds offline, no download)."""
    from transformers import WhisperConfig

    if size not in RANDOM_SIZES:
        raise ValueError(f"unknown random encoder size '{size}'; available: {', '.join(RANDOM_SIZES)}")
    s = RANDOM_SIZES[size]
    return WhisperConfig(
        vocab_size=64,
        num_mel_bins=s["num_mel_bins"],
        d_model=s["d_model"],
        encoder_layers=s["encoder_layers"],
        encoder_attention_heads=s["encoder_attention_heads"],
        encoder_ffn_dim=4 * s["d_model"],
        decoder_layers=1,
        decoder_attention_heads=s["encoder_attention_heads"],
        decoder_ffn_dim=4 * s["d_model"],
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        decoder_start_token_id=2,
        max_target_positions=32,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )


def _resolve_files(source: str) -> Tuple["object", List[Path]]:
    """(WhisperConfig, safetensors files) for a local folder or a hub id. Never reads pickle files."""
    from transformers import WhisperConfig

    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            found = ", ".join(p.name for p in path.iterdir()) or "(empty)"
            raise FileNotFoundError(f"{path}: no *.safetensors weights (found: {found}); pickle weights are refused")
        return WhisperConfig.from_pretrained(path), files
    if path.exists() or source.startswith((".", "/")):
        raise FileNotFoundError(f"encoder '{source}' is not a folder (expected a hub id, a folder or random:<size>)")
    from huggingface_hub import hf_hub_download

    config = WhisperConfig.from_pretrained(source)
    try:
        index = hf_hub_download(source, "model.safetensors.index.json")
        shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        files = [Path(hf_hub_download(source, shard)) for shard in shards]
    except Exception:  # single-file checkpoints have no index
        files = [Path(hf_hub_download(source, "model.safetensors"))]
    return config, files


def _load_encoder_tensors(files: Sequence[Path]) -> Dict[str, torch.Tensor]:
    """Read only the encoder tensors (the decoder is never materialised)."""
    from safetensors import safe_open

    state: Dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as sf:
            for key in sf.keys():
                for prefix in ENCODER_PREFIXES:
                    if key.startswith(prefix):
                        state[key[len(prefix) :]] = sf.get_tensor(key)
                        break
    if not state:
        raise ValueError(f"no encoder tensors ({' or '.join(ENCODER_PREFIXES)}*) in {', '.join(map(str, files))}")
    return state


def fingerprint_state(state: Dict[str, torch.Tensor]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes: identifies the weights, whatever the source path."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPE_NAMES[name]


@dataclass
class EncoderOutput:
    layers: Dict[int, torch.Tensor]  # layer -> (B, T, D)
    mask: torch.Tensor  # (B, T) True on frames that hold the clip's own audio (pooling uses these)
    # (B, T) True on every frame the encoder's attention sees (the clip and, under 10 s / 30 s / clip+T inputs, its
    # padding frames): the key mask adapted blocks (models/adapt.py) must use; equals `mask` at input_seconds=clip
    input_mask: Optional[torch.Tensor] = None


class FrozenWhisperEncoder(nn.Module):
    """Whisper encoder in eval mode with no gradients; forward on any length up to 30 s."""

    def __init__(self, encoder: nn.Module, source: str, fingerprint: str) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.source = source
        self.weight_fingerprint = fingerprint  # the weights alone; `fingerprint` adds what else changes the features
        self.compiled = False
        # token resolution inside the encoder (model.encoder_stride_after, set_stride): a TokenStride after block j
        self.stride_after: Optional[int] = None
        self.token_stride: Optional[nn.Module] = None
        self.train(False)

    @property
    def fingerprint(self) -> str:
        """The identity of the features this encoder computes: the weights' sha256, plus the token stride when one is
        set (a strided encoder's layers are other features: other cache key, refused by checkpoints and exports of
        the unstrided one). Unchanged for an unstrided encoder, so existing caches and runs keep their keys."""
        s = self.stride_settings
        return self.weight_fingerprint if s is None else f"{self.weight_fingerprint}+stride{s['stride']}-{s['pool']}-after{s['after']}"

    @property
    def stride_settings(self) -> Optional[Dict[str, object]]:
        """{after, stride, pool} when a token stride is set (recorded in results and head.json), else None."""
        if self.token_stride is None:
            return None
        return {"after": self.stride_after, "stride": self.token_stride.stride, "pool": self.token_stride.pool}

    def set_stride(self, after: Optional[int] = None, stride: int = 1, pool: str = "skip") -> "FrozenWhisperEncoder":
        """Token resolution after block `after` (1..L-1): blocks above it run on ceil(T/stride) frames, and every
        layer returned (those at or below it strided on output) has that many. after=None or stride=1: off. Returns
        self. ValueError listing what is allowed."""
        from ser_lightning.models.stride import maybe_stride

        module = maybe_stride(int(stride), pool)
        if after is None or module is None:
            self.stride_after, self.token_stride = None, None
            return self
        if isinstance(after, bool) or not 1 <= int(after) <= self.num_layers - 1:
            raise ValueError(f"encoder_stride_after={after!r}: {self.source} has {self.num_layers} blocks, so a stride "
                             f"goes after block 1..{self.num_layers - 1} (null = at the head input)")  # fmt: skip
        self.stride_after, self.token_stride = int(after), module
        return self

    # sizes flow from here to the head
    @property
    def output_dim(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers)

    @property
    def num_mel_bins(self) -> int:
        return int(self.encoder.config.num_mel_bins)

    @property
    def compute_dtype(self) -> str:
        """fp32 / bf16 / fp16: the dtype the blocks compute in (it changes the features: part of the cache key)."""
        dtype = next(self.encoder.parameters()).dtype
        return {v: k for k, v in DTYPE_NAMES.items()}[dtype]

    def train(self, mode: bool = True) -> "FrozenWhisperEncoder":
        # frozen: never leaves eval mode (Whisper's dropout / layerdrop must stay off)
        return super().train(False)

    def compile_blocks(self, **options) -> "FrozenWhisperEncoder":
        """torch.compile every encoder block in place (`model.compile`); returns self.

        The masked forward below calls the blocks one by one, so `torch.compile(self.encoder)` would never take
        effect: the blocks are what must be compiled. dynamic=True: one graph serves every input length (and,
        with PyTorch's inlined nn.Module parameters, every block of the same shape). Pays off on GPU for long
        runs; on CPU the first batches spend minutes compiling.
        """
        for block in self.encoder.layers:
            block.compile(**{"dynamic": True, **options})
        self.compiled = True
        return self

    def resolve_layers(self, layers: Sequence[int]) -> List[int]:
        """Map -1 to L and check every layer is in 1..L (the error lists what is available)."""
        resolved = []
        for layer in layers:
            k = self.num_layers if layer == -1 else int(layer)
            if not 1 <= k <= self.num_layers:
                raise ValueError(
                    f"layer {layer} does not exist in {self.source}: available 1..{self.num_layers} (or -1 = last)"
                )
            resolved.append(k)
        return resolved

    @torch.no_grad()
    def forward(
        self,
        input_features: torch.Tensor,
        input_frames: torch.Tensor,
        content_frames: torch.Tensor,
        layers: Sequence[int],
    ) -> EncoderOutput:
        """input_features (B, n_mels, T_mel) zero past input_frames[b]; returns the requested layers' outputs."""
        layers = self.resolve_layers(layers)
        enc = self.encoder
        dtype = next(enc.parameters()).dtype
        x = input_features.to(dtype)
        b, _, t_mel = x.shape
        if t_mel > enc.config.max_source_positions * 2:
            raise ValueError(f"input of {t_mel} mel frames is longer than Whisper's 30 s window (3000)")
        mel_valid = torch.arange(t_mel, device=x.device)[None, :] < input_frames[:, None]  # (B, T_mel)
        # zero the padded mel frames' conv1 outputs so conv2 sees what a lone clip sees (its own zero padding)
        h = nn.functional.gelu(enc.conv1(x)) * mel_valid[:, None, :].to(dtype)
        h = nn.functional.gelu(enc.conv2(h)).permute(0, 2, 1)  # (B, T, D)
        t = h.shape[1]
        out_frames = (input_frames + 1) // 2
        key_valid = torch.arange(t, device=x.device)[None, :] < out_frames[:, None]  # (B, T)
        h = h + enc.embed_positions.weight[:t].to(dtype)

        def additive(valid: torch.Tensor):
            if bool(valid.all()):
                return None
            # additive key mask (B, 1, 1, T): padded frames are never attended to, so batching cannot change a clip
            mask = torch.zeros(b, 1, 1, valid.shape[1], dtype=dtype, device=x.device)
            return mask.masked_fill_(~valid[:, None, None, :], torch.finfo(dtype).min)

        attn_mask = additive(key_valid)
        content_mask = torch.arange(t, device=x.device)[None, :] < content_frames[:, None]
        stride, strided = self.token_stride, False
        wanted = set(layers)
        outputs: Dict[int, torch.Tensor] = {}
        for index, block in enumerate(enc.layers[: max(layers)], start=1):
            h = block(h, attn_mask)
            h = h[0] if isinstance(h, tuple) else h
            if index in wanted:
                outputs[index] = enc.layer_norm(h) if index == self.num_layers else h
            if stride is not None and index == self.stride_after:
                # token resolution: the layers so far are strided on output, the blocks above run on ceil(T/s)
                # frames; groups are averaged / picked over the key frames (every input frame), as h is
                outputs = {k: stride(v, key_valid)[0] for k, v in outputs.items()}
                h, strided = outputs[index] if index in outputs else stride(h, key_valid)[0], True  # index < L: no norm
                key_valid, content_mask = stride.stride_mask(key_valid), stride.stride_mask(content_mask)
                attn_mask = additive(key_valid)
        if stride is not None and not strided:  # no block above the stride point was needed: stride the outputs
            outputs = {k: stride(v, key_valid)[0] for k, v in outputs.items()}
            key_valid, content_mask = stride.stride_mask(key_valid), stride.stride_mask(content_mask)
        return EncoderOutput(layers=outputs, mask=content_mask, input_mask=key_valid)


def load_encoder(source: str, device: torch.device | str = "cpu", dtype: str = "auto", seed: int = 0) -> FrozenWhisperEncoder:
    """Load only the encoder of a Whisper checkpoint: hub id, local folder (full or encoder-only), random:<size>."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    device = torch.device(device)
    if source.startswith("random:"):
        config = random_whisper_config(source.split(":", 1)[1])
        config._attn_implementation = "sdpa"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = WhisperEncoder(config)
        state = encoder.state_dict()
    else:
        config, files = _resolve_files(source)
        config._attn_implementation = "sdpa"
        state = _load_encoder_tensors(files)
        with torch.device("meta"):
            encoder = WhisperEncoder(config)
        missing, unexpected = encoder.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in missing if not k.startswith("embed_positions")] if "embed_positions.weight" in state else missing
        if missing or unexpected:
            raise ValueError(f"{source}: encoder weights do not match its config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    fingerprint = fingerprint_state(state)
    encoder = encoder.to(device=device, dtype=resolve_dtype(dtype, device))
    return FrozenWhisperEncoder(encoder, source=source, fingerprint=fingerprint)
