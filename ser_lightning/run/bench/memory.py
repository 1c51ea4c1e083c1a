"""Peak memory of a measured section (CUDA allocator or sampled RSS) and device synchronisation."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from typing import Any


class PeakMemory(contextlib.AbstractContextManager):
    """Peak memory of a section: torch.cuda.max_memory_allocated on CUDA (weights included); on the CPU the
    peak resident set size sampled every few ms, minus the RSS at the start (what the section added)."""

    def __init__(self, device: Any) -> None:
        self.cuda = str(device).startswith("cuda")
        self.peak_bytes = 0
        self.kind = "cuda max_memory_allocated" if self.cuda else "peak RSS increase (sampled)"
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):  # pragma: no cover - not Linux: the process-lifetime peak
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        _trim_heap()  # hand freed heap memory back to the OS, so what this section allocates shows in the RSS
        self._start = self._peak = self.rss()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._peak = max(self._peak, self.rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = int(torch.cuda.max_memory_allocated())
            return None
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.rss())
        self.peak_bytes = int(self._peak - self._start)
        return None


def _trim_heap() -> None:
    """glibc keeps freed memory mapped (the RSS would hide a section's allocations); malloc_trim returns it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _sync(device: Any) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
