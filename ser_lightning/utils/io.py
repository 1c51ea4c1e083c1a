"""Atomic file writes (a reader sees the old file or the complete new one, never a half-written one) and the
deterministic fault-injection points used by the fault tests.

Fault injection: `SER_FAULT_AT=<point>[:<n>][,<point>[:<n>]...]` makes the process stop itself the n-th time
(default 1st) it passes the named point. `SER_FAULT_ACTION` picks how: `kill` (default: SIGKILL, no cleanup
at all), `term` (SIGTERM to itself), `exit` (os._exit(99), no cleanup), `enospc` (raise
OSError(ENOSPC) there, as a full disk would) or `raise` (raise FaultInjected). Points (see README
"Resuming and faults"): `write:<file name>` (half-way through writing that file's temp copy),
`shard` (a feature-cache shard's arrays written, not yet published), `encode_batch` (after an encoder batch),
`ckpt_write` (half-way through writing a checkpoint's temp file), `train_batch` (after a training batch),
`epoch_end` (after an epoch's checkpoints are on disk), `before_test`, `before_results`, `fold_done`.
Unset (the normal case) a point costs one environment lookup.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

_FAULT_HITS: Dict[str, int] = {}
_UMASK = os.umask(0)
os.umask(_UMASK)


class FaultInjected(RuntimeError):
    """Raised at a fault point under SER_FAULT_ACTION=raise."""


def reset_faults() -> None:
    """Forget how often each fault point was passed (for in-process tests)."""
    _FAULT_HITS.clear()


def fault_point(name: str) -> None:
    """Stop here if SER_FAULT_AT names this point (and this is the requested pass)."""
    spec = os.environ.get("SER_FAULT_AT")
    if not spec:
        return
    wanted = set()
    for item in spec.split(","):
        point, nth = item.strip(), 1
        head, sep, tail = point.rpartition(":")
        if sep and tail.isdigit():  # `write:results.json` has a colon too; only a trailing number is a count
            point, nth = head, int(tail)
        if point == name:
            wanted.add(nth)
    if not wanted:
        return
    hits = _FAULT_HITS[name] = _FAULT_HITS.get(name, 0) + 1
    if hits not in wanted:
        return
    action = os.environ.get("SER_FAULT_ACTION", "kill").lower()
    print(f"[ser fault] {action} at {name} (pass {hits})", flush=True)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "exit":
        os._exit(99)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (injected at {name})")
    else:
        raise FaultInjected(f"fault injected at {name}")


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder, fsync, then rename over `path`.

    On any failure (a full disk, a signal) the temp file is removed and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            fault_point(f"write:{path.name}")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path} (the old file, if any, "
                          "is unchanged; free some space and rerun)") from e  # fmt: skip
        raise


def remove_stale_temps(folder: Path | str) -> int:
    """Delete the temp files of atomic writes that were killed half-way (`.<name>.<random>.tmp`) in `folder`.

    Call it only where no other process is writing (a run folder its own run has claimed)."""
    removed = 0
    for p in Path(folder).glob(".*.tmp"):
        try:
            if p.is_file():
                p.unlink()
                removed += 1
        except OSError:
            pass
    return removed


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def read_json(path: Path | str) -> Optional[Any]:
    """The parsed file, or None when it is missing or not valid JSON (a truncated file is never trusted)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def append_markdown(path: Path | str, text: str) -> None:
    """Append a measurement (a markdown section) to a results log such as docs/benchmarks.md."""
    path = Path(path)
    head = path.read_text() if path.exists() else "# Benchmarks\n"
    if "<!-- ser bench results -->" not in head:
        head = head.rstrip("\n") + "\n\n## Results appended by `ser bench`\n\n<!-- ser bench results -->\n"
    atomic_write_text(path, head.rstrip("\n") + "\n\n" + text)


def sha256_file(path: Path | str) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def json_digest(obj: Mapping[str, Any], without: str) -> str:
    """sha256 of a JSON object's canonical form (sorted keys, no spaces), leaving out the key `without` (where the
    digest itself is stored)."""
    body = {k: v for k, v in obj.items() if k != without}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
