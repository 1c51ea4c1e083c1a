"""Adaptation depth (issue #16): the encoder's top blocks, trainable or with LoRA adapters, fed from the cache.

`model.adapt = frozen | top | lora`, `model.adapt_blocks = k`: the k encoder blocks that end at the deepest layer the
head reads (`last`) are copied out of the frozen encoder into an `AdaptedTop`; blocks above `last` are never run. The
input of the first adapted block (`first = last - k + 1`) is the output of layer `first - 1`, an ordinary encoder
layer, so it can come from the feature cache: the frozen bottom is never recomputed. It must be exactly what the
encoder feeds that block: every input frame (under the 10 s / 30 s policies Whisper attends to the padding frames
too) and the same key mask (`key_valid`: the encoder's own input frames; batching pads are never attended to).
With the adapters at their initial values (LoRA B = 0; top-k untouched) the adapted path reproduces the frozen
layers exactly (tests/test_adapt.py).

- `top`: the copied blocks train in full (`requires_grad`), the rest of the encoder stays frozen.
- `lora`: LoRA adapters from `peft` (`inject_adapter_in_model`) on `model.lora.targets` of the copied blocks only
  (default the attention projections q_proj / k_proj / v_proj / out_proj; fc1 / fc2 selectable). Only encoder
  blocks are ever in the module handed to peft, so no decoder name can match.
- `grad_checkpointing`: recompute each adapted block in the backward pass (activation memory of one block).
The encoder's final LayerNorm (applied after block L only) is copied frozen when `last` is L.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch
from torch import nn

ADAPT_MODES = ("frozen", "top", "lora")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: List[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))

    def check(self) -> None:
        if int(self.rank) < 1:
            raise ValueError(f"model.lora.rank={self.rank}: the adapter rank must be >= 1 (the design's recipe: 16)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"model.lora.dropout={self.dropout}: use a probability in [0, 1)")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"model.lora.targets={list(self.targets)}: {'unknown ' + str(unknown) + '; ' if unknown else ''}"
                             f"choose among {', '.join(LORA_TARGETS)} (Whisper encoder block modules)")  # fmt: skip


def adapted_blocks(read_layers: Sequence[int], adapt_blocks: int, num_layers: int) -> List[int]:
    """The 1-based encoder blocks an adaptation of depth `adapt_blocks` trains: the k blocks ending at the deepest
    read layer. ValueError (what is allowed) when k does not fit below it."""
    last = max(read_layers)
    if not 1 <= int(adapt_blocks) <= last - 1:
        raise ValueError(f"model.adapt_blocks={adapt_blocks}: the deepest layer read is {last}, so 1..{last - 1} blocks can "
                         f"be adapted (block 1's input, the embeddings, is not a cached layer); the encoder has {num_layers}")  # fmt: skip
    return list(range(last - int(adapt_blocks) + 1, last + 1))


def key_mask(key_valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """The encoder's additive attention mask (B, 1, 1, T): keys past a clip's input frames get no weight."""
    if bool(key_valid.all()):
        return None
    mask = torch.zeros(key_valid.shape[0], 1, 1, key_valid.shape[1], dtype=dtype, device=key_valid.device)
    return mask.masked_fill_(~key_valid[:, None, None, :], torch.finfo(dtype).min)


class AdaptedTop(nn.Module):
    """Encoder blocks `first..last` (1-based) copied from a frozen Whisper encoder, adapted by `mode`."""

    def __init__(self, encoder: nn.Module, blocks: Sequence[int], mode: str, lora: LoraSettings | None = None,
                 grad_checkpointing: bool = False) -> None:  # fmt: skip
        super().__init__()
        if mode not in ("top", "lora"):
            raise ValueError(f"model.adapt={mode!r}: an adapted top is top or lora ({', '.join(ADAPT_MODES)})")
        whisper = getattr(encoder, "encoder", encoder)  # a FrozenWhisperEncoder or a transformers WhisperEncoder
        self.num_layers = len(whisper.layers)
        self.first, self.last = int(blocks[0]), int(blocks[-1])
        if list(blocks) != list(range(self.first, self.last + 1)) or not 1 <= self.first <= self.last <= self.num_layers:
            raise ValueError(f"adapted blocks {list(blocks)}: consecutive blocks within 1..{self.num_layers}")
        self.mode = mode
        self.grad_checkpointing = bool(grad_checkpointing)
        self.blocks = copy.deepcopy(whisper.layers[self.first - 1 : self.last]).float()
        self.final_norm = copy.deepcopy(whisper.layer_norm).float() if self.last == self.num_layers else None
        self.train()  # the copies come from an encoder held in eval mode; Lightning keeps submodules' modes as found
        self.requires_grad_(False)
        if mode == "top":
            self.blocks.requires_grad_(True)
        else:
            from peft import LoraConfig, inject_adapter_in_model

            settings = lora or LoraSettings()
            settings.check()
            config = LoraConfig(r=int(settings.rank), lora_alpha=float(settings.alpha), lora_dropout=float(settings.dropout),
                                target_modules=list(settings.targets), bias="none")  # fmt: skip
            self.blocks = inject_adapter_in_model(config, self.blocks)
            for name, p in self.blocks.named_parameters():
                p.requires_grad_("lora_" in name)  # adapters only; the copied weights stay the encoder's

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, h: torch.Tensor, key_valid: torch.Tensor, layers: Sequence[int]) -> Dict[int, torch.Tensor]:
        """h: (B, T, D) the output of layer first-1 at every input frame; key_valid: (B, T) the encoder's input
        frames. Returns {layer: (B, T, D)} for the requested layers in first..last."""
        wanted = set(int(x) for x in layers)
        h = h.to(next(self.blocks.parameters()).dtype)
        mask = key_mask(key_valid, h.dtype)
        out: Dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks, start=self.first):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                h = checkpoint(block, h, mask, use_reentrant=False)
            else:
                h = block(h, mask)
            h = h[0] if isinstance(h, tuple) else h
            if index in wanted:
                out[index] = self.final_norm(h) if index == self.num_layers and self.final_norm is not None else h
        return out


def adapt_features(adapter: AdaptedTop, x: torch.Tensor, mask: torch.Tensor, fed_layers: Sequence[int],
                   read_layers: Sequence[int]) -> torch.Tensor:  # fmt: skip
    """The head's input from the fed layers: x (B, T, D) or (B, L_fed, T, D) holds `fed_layers` (the read layers below
    the first adapted block, then that block's input layer); returns the `read_layers`, those from the first adapted
    block up computed by `adapter`: (B, T, D) for one layer, else (B, L_read, T, D). `mask` (B, T) is every clip's
    input frames (input_seconds=clip: its own frames), the encoder's key mask."""
    by_layer = {k: (x if x.dim() == 3 else x[:, i]) for i, k in enumerate(fed_layers)}
    adapted = adapter(by_layer[adapter.first - 1].float(), mask, [k for k in read_layers if k >= adapter.first])
    feats = [by_layer[k].float() if k < adapter.first else adapted[k] for k in read_layers]
    return feats[0] if len(feats) == 1 else torch.stack(feats, dim=1)


def trim_to_content(x: torch.Tensor, mask: torch.Tensor) -> tuple:
    """(x, mask) cut to the batch's longest clip: past it every frame is padding the head never pools over (adapted
    blocks under 10 s / 30 s inputs return every input frame). x (B, T, D) or (B, L, T, D), mask (B, T)."""
    t = int(mask.sum(1).max()) if mask.numel() else 0
    if t >= mask.shape[1]:
        return x, mask
    return x[..., :t, :], mask[:, :t]
