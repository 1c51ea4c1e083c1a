"""`ser bench --parts adapt`: the cost of adaptation depth, one training epoch on RAVDESS-sized data (issue #16).

Variants: frozen (head only), top-1, top-2 (the blocks ending at the read layer fine-tuned), LoRA on top-2 and on
top-4 (rank `model.lora.rank`), each trained two ways in the same run:
- from the cache: the adapted blocks' input layer is read from memory (what the feature cache serves), so a step is
  the adapted blocks + the head, forward and backward;
- from audio: what a user without this platform runs every step: the log-mel front end, the frozen bottom of the
  encoder (no gradients) up to the first adapted block, then the same adapted blocks + head.
Each variant is timed over `steps` training steps of batch `batch` on clips of RAVDESS-like lengths (`model.input_
seconds=clip`) after one warm-up step, and its epoch time is that mean step time x the steps of an epoch of `clips`
clips (measured steps, extrapolated epoch: the row says so). Ratios: each epoch against the frozen epoch from the
cache, and from-audio against from-cache for the same variant.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

VARIANTS = (("frozen", 0, "frozen"), ("top-1", 1, "top"), ("top-2", 2, "top"), ("lora top-2", 2, "lora"),
            ("lora top-4", 4, "lora"))  # fmt: skip


def ravdess_like_lengths(n: int, seed: int = 0) -> List[float]:
    """RAVDESS speech clips last 3.0-5.3 s (mean ~3.7 s)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(3.7, 0.35, n), 3.0, 5.3).tolist()


def bench_adaptation(encoder: Any, read_layer: int, lora_rank: int = 16, clips: int = 1440, batch: int = 16,
                     steps: int = 4, num_classes: int = 8, seed: int = 0,
                     variants: Sequence[tuple] = VARIANTS) -> List[Dict[str, Any]]:  # fmt: skip
    """One row per variant: trainable parameters, step and epoch times from the cache and from audio (None where a
    variant does not fit below the read layer)."""
    from ser_lightning.features.frontend import LengthPolicy, LogMelFrontend
    from ser_lightning.models.adapt import AdaptedTop, LoraSettings, adapt_features, adapted_blocks
    from ser_lightning.models.head import SERHead

    device = next(encoder.parameters()).device
    rng = np.random.default_rng(seed)
    waves = [(0.05 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in ravdess_like_lengths(batch * (steps + 1), seed)]
    batches = [waves[i * batch : (i + 1) * batch] for i in range(steps + 1)]
    frontend, policy = LogMelFrontend(encoder.num_mel_bins), LengthPolicy.parse("clip")
    epoch_steps = math.ceil(clips / batch)
    rows = []
    for name, k, mode in variants:
        if k and k > read_layer - 1:
            rows.append({"variant": name, "skipped": f"needs {k} blocks below layer {read_layer}"})
            continue
        torch.manual_seed(seed)
        adapter = None
        fed = [read_layer]
        if k:
            blocks = adapted_blocks([read_layer], k, encoder.num_layers)
            adapter = AdaptedTop(encoder, blocks, mode, LoraSettings(rank=lora_rank) if mode == "lora" else None).to(device).train()
            fed = [blocks[0] - 1]
        head = SERHead(encoder.output_dim, num_classes, pooling="mean").to(device).train()
        params = list(head.parameters()) + ([p for p in adapter.parameters() if p.requires_grad] if adapter else [])
        opt = torch.optim.AdamW(params, lr=1e-4)
        labels = torch.randint(0, num_classes, (batch,), device=device)

        def fed_features(ws):
            x, frames, content = frontend(ws, policy, device)
            out = encoder(x, frames, content, fed)
            return out.layers[fed[0]].float(), out.mask

        cached = [fed_features(ws) for ws in batches]  # what the feature cache holds (computed once, not timed)

        def step(x: torch.Tensor, mask: torch.Tensor) -> None:
            h = adapt_features(adapter, x, mask, fed, [read_layer]) if adapter is not None else x
            loss = torch.nn.functional.cross_entropy(head(h, mask), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def timed(run) -> float:
            run(0)  # warm-up: allocator, lazy init
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(1, steps + 1):
                run(i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - start) / steps

        from_cache = timed(lambda i: step(*cached[i]))
        from_audio = timed(lambda i: step(*fed_features(batches[i])))
        rows.append({
            "variant": name, "mode": mode, "blocks": k, "fed_layer": fed[0],
            "trainable": sum(p.numel() for p in params), "step_cache_s": from_cache, "step_audio_s": from_audio,
            "epoch_cache_s": from_cache * epoch_steps, "epoch_audio_s": from_audio * epoch_steps,
        })  # fmt: skip
    frozen = next((r for r in rows if r.get("variant") == "frozen" and "epoch_cache_s" in r), None)
    for r in rows:
        if "epoch_cache_s" in r:
            r["ratio_to_frozen"] = r["epoch_cache_s"] / frozen["epoch_cache_s"] if frozen else None
            r["audio_over_cache"] = r["epoch_audio_s"] / r["epoch_cache_s"]
    return rows


def adapt_markdown(rows: List[Dict[str, Any]], source: str, read_layer: int, clips: int, batch: int, steps: int,
                   device: str) -> str:  # fmt: skip
    lines = [f"One training epoch of {clips} RAVDESS-length clips (3.0-5.3 s, `input_seconds=clip`), batch {batch}, "
             f"encoder `{source}` read at layer {read_layer}, on {device}: mean of {steps} measured steps after a "
             "warm-up step, times the steps of an epoch. From the cache: the adapted blocks' input is served from "
             "memory; from audio: front end + frozen bottom recomputed every step.", "",
             "| variant | trainable parameters | epoch from the cache | x frozen epoch | epoch from audio | from audio / from the cache |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['variant']} | - | skipped ({r['skipped']}) | | | |")
            continue
        lines.append(f"| {r['variant']} | {r['trainable']:,} | {r['epoch_cache_s']:.1f} s | {r['ratio_to_frozen']:.2f}x | "
                     f"{r['epoch_audio_s']:.1f} s | {r['audio_over_cache']:.2f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


def adapt_report(cfg: Any, args: Any, command: str) -> Optional[str]:
    """`ser bench --parts adapt`: measure, print, append to the benchmarks file."""
    from ser_lightning.features.pipeline import head_layers, load_config_encoder
    from ser_lightning.run.bench.report import emit_report
    from ser_lightning.utils.machine import machine_info, machine_line

    encoder = load_config_encoder(cfg)
    read_layer = max(head_layers(cfg.model, encoder)[0])
    device = str(next(encoder.parameters()).device)
    rows = bench_adaptation(encoder, read_layer, int(cfg.model.lora.rank), args.adapt_clips, int(cfg.data.batch_size),
                            args.adapt_steps)  # fmt: skip
    machine = machine_info()
    text = (f"### `{command}`: adaptation depth, from the cache vs from audio ({device})\n\nMachine: {machine_line(machine)}.\n\n"
            + adapt_markdown(rows, encoder.source, read_layer, args.adapt_clips, int(cfg.data.batch_size), args.adapt_steps, device))  # fmt: skip
    emit_report(args, text, {"machine": machine, "device": device, "adapt": rows})
    return text
