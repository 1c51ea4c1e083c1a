"""`ser bench --parts context`: latency and peak memory of each temporal context over long inputs.

Every (context, length, batch) runs in a fresh process with an address-space limit (`--context-memory-gb`), so a
configuration that runs out of memory fails with a real allocation error and is reported as OOM (the machine is
never pushed into swap or the kernel's OOM killer); one that would take longer than the time budget after its
shorter input already exceeded it is reported as skipped with the time that ruled it out, never dropped.
Frames are the encoder's (50 per second of audio) at the head's width (`model.proj_dim`), one context layer.
Softmax is the Transformer context (PyTorch's TransformerEncoderLayer: SDPA with the padding mask).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any, Dict, List, Optional, Sequence

FRAMES_PER_SECOND = 50
CONTEXT_KINDS = ("transformer", "retention", "gla", "linear", "conv")
DEFAULT_LENGTHS_S = (4, 30, 120, 600)
DEFAULT_BATCHES = (1, 16)


def _measure(kind: str, frames: int, batch: int, dim: int, device: str, memory_gb: float, repeats: int, queue: Any) -> None:
    """Child process: forward (eval, no grad) and forward+backward (train) times and peak memory."""
    import resource

    import torch

    from ser_lightning.models.context import build_context
    from ser_lightning.run.bench.memory import PeakMemory

    if device == "cpu" and memory_gb > 0:
        limit = int(memory_gb * 2**30) + PeakMemory.rss() + 2 * 2**30  # what the section may add, over the process as it is
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out: Dict[str, Any] = {}
    try:
        torch.manual_seed(0)
        context = build_context(kind, dim, layers=1, dropout=0.0).to(device)
        x = torch.randn(batch, frames, dim, device=device)
        mask = torch.ones(batch, frames, dtype=torch.bool, device=device)
        mask[0, frames - frames // 10 :] = False  # one clip padded: the masked path, as in training

        def sync() -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        for name, train in (("forward", False), ("forward_backward", True)):
            context.train(train)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            base = PeakMemory.rss()
            times = []
            for i in range(repeats + 1):  # the first run warms up (lazy init, allocator), not counted
                xi = x.detach().requires_grad_(train)
                sync()
                start = time.perf_counter()
                if train:
                    context(xi, mask).float().pow(2).mean().backward()
                else:
                    with torch.no_grad():
                        context(xi, mask)
                sync()
                if i:
                    times.append(time.perf_counter() - start)
            peak = (int(torch.cuda.max_memory_allocated()) if device.startswith("cuda")
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)  # fmt: skip
            out[name] = {"seconds": min(times), "peak_bytes": max(peak, 0)}
        out["status"] = "ok"
    except (MemoryError, RuntimeError) as e:  # torch raises RuntimeError / OutOfMemoryError for failed allocations
        text = str(e)
        out = {"status": "oom" if isinstance(e, MemoryError) or "memory" in text.lower() or "alloc" in text.lower()
               else "error", "error": text.splitlines()[0][:200]}  # fmt: skip
    queue.put(out)


def bench_contexts(dim: int = 256, device: str = "cpu", lengths_s: Sequence[float] = DEFAULT_LENGTHS_S,
                   batches: Sequence[int] = DEFAULT_BATCHES, kinds: Sequence[str] = CONTEXT_KINDS,
                   memory_gb: float = 12.0, budget_s: float = 60.0, repeats: int = 2) -> List[Dict[str, Any]]:  # fmt: skip
    """One row per (kind, length, batch): status ok / oom / skipped / error, seconds and peak bytes."""
    ctx = mp.get_context("spawn")
    rows: List[Dict[str, Any]] = []
    for batch in batches:
        for kind in kinds:
            slow: Optional[float] = None  # the shorter input's forward+backward time once it passed the budget
            for seconds in sorted(lengths_s):
                frames = int(seconds * FRAMES_PER_SECOND)
                row: Dict[str, Any] = {"context": kind, "seconds": seconds, "frames": frames, "batch": batch}
                if slow is not None:
                    row.update(status="skipped", error=f"a shorter input already took {slow:.0f} s > budget {budget_s:.0f} s")
                    rows.append(row)
                    continue
                queue = ctx.Queue()
                proc = ctx.Process(target=_measure, args=(kind, frames, batch, dim, device, memory_gb, repeats, queue))
                proc.start()
                proc.join()
                result = queue.get() if not queue.empty() else {"status": "oom" if proc.exitcode in (-9, 137) else "error",
                                                                 "error": f"process exit code {proc.exitcode}"}  # fmt: skip
                row.update(result)
                rows.append(row)
                if row["status"] == "ok" and row["forward_backward"]["seconds"] * repeats > budget_s:
                    slow = row["forward_backward"]["seconds"]
                print(f"[ser bench] context {kind} {seconds:g} s x {batch}: {row['status']}", flush=True)
    return rows


def _cell(row: Dict[str, Any], key: str, softmax: Optional[Dict[str, Any]]) -> str:
    if row["status"] != "ok":
        return {"oom": "OOM", "skipped": "skipped", "error": "error"}[row["status"]]
    seconds, peak = row[key]["seconds"], row[key]["peak_bytes"] / 2**20
    ratio = ""
    if softmax is not None and softmax.get("status") == "ok" and row["context"] != "transformer":
        ratio = (f"; softmax / this: time {softmax[key]['seconds'] / seconds:.2f}x, "
                 f"memory {softmax[key]['peak_bytes'] / max(row[key]['peak_bytes'], 1):.1f}x")  # fmt: skip
    return f"{1000 * seconds:.1f} ms, {peak:.0f} MiB{ratio}"


def context_markdown(rows: List[Dict[str, Any]], dim: int, memory_gb: float, budget_s: float) -> str:
    """The table: absolute figures and ratios to softmax (transformer) at the same length and batch."""
    lines = [
        f"Temporal context layers at head width {dim} (one layer, {FRAMES_PER_SECOND} frames per second of audio); "
        f"per cell: best of the runs, peak memory the section added; ratios against softmax self-attention "
        f"(transformer) at the same length and batch. OOM = a real allocation failure under a {memory_gb:g} GB "
        f"address-space (virtual memory) limit on the CPU, which counts more than the resident memory; skipped = a "
        f"shorter input already took longer than {budget_s:g} s.",
        "",
        "| context | audio | batch | forward | forward + backward |",
        "|---|---|---|---|---|",
    ]
    softmax = {(r["seconds"], r["batch"]): r for r in rows if r["context"] == "transformer"}
    for r in rows:
        ref = softmax.get((r["seconds"], r["batch"]))
        note = f" ({r['error']})" if r["status"] in ("skipped", "error", "oom") and r.get("error") else ""
        lines.append(f"| {r['context']} | {r['seconds']:g} s ({r['frames']} frames) | {r['batch']} | "
                     f"{_cell(r, 'forward', ref)}{note} | {_cell(r, 'forward_backward', ref)} |")  # fmt: skip
    return "\n".join(lines) + "\n"
