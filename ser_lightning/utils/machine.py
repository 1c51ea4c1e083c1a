"""What machine and software a measurement or a run came from (one probe for `ser bench` and provenance)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any, Dict

# the packages whose versions a run records
PACKAGES = ("torch", "torchaudio", "lightning", "transformers", "torchmetrics", "datasets", "wandb", "omegaconf",
            "numpy", "safetensors", "soundfile", "ser_lightning")  # fmt: skip


def versions() -> Dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> Dict[str, Any]:
    """CPU, usable cores, threads, GPU, versions, date and load: the line printed next to every measurement."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = []
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "usable_cores": usable, "torch_threads": torch.get_num_threads(),
        "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_avg_1_5_15": load,
        "host": platform.node(),
    }  # fmt: skip


def machine_line(m: Dict[str, Any]) -> str:
    """One sentence for a benchmark table: date, CPU, cores, GPU, versions, load."""
    cuda = f", CUDA {m['cuda']}" if m.get("gpu", "none") != "none" else ""
    load = m.get("load_avg_1_5_15") or []
    load_txt = f"; load average at start {load[0]} (1 min)" if load else ""
    return (
        f"{m['date']}: CPU {m['cpu']} ({m['usable_cores']} usable cores, torch threads {m['torch_threads']}), "
        f"GPU {m['gpu']}{cuda}, torch {m['torch']}, Python {m['python']}{load_txt}"
    )


def machine_summary(m: Dict[str, Any] | None = None) -> str:
    """`host (cpu, N CPUs, gpu)`: the short form a run's provenance records."""
    m = m or machine_info()
    gpu = m["gpu"] if m.get("gpu", "none") != "none" else "no GPU"
    return f"{m['host']} ({m['cpu']}, {m['cores']} CPUs, {gpu})"
