"""What makes a run survive faults and resume to the same result as an uninterrupted one.

- `AtomicCheckpointIO`: checkpoints are written to a temp file in the checkpoint folder, fsynced and renamed
  (Lightning's own writer goes through fsspec, whose temp file lives in the system temp dir: on another file
  system the final move is a copy, and a kill mid-copy leaves a truncated `last.ckpt`). Loading always uses
  `torch.load(weights_only=True)`.
- `ReproducibleSteps`: calls the training batch sampler's `set_epoch` at every epoch start (Lightning does not
  for a custom batch sampler) and re-seeds python / numpy / torch before every training step from
  (seed, epoch, step, rank). Checkpoints are written at epoch ends only, so a resumed run restarts at an epoch
  start; that epoch then sees the same batches and the same dropout / augmentation masks as in the
  uninterrupted run, whatever consumed random numbers before it (a resumed run loads checkpoints and creates
  its data iterator in another order).
- `RunCheckpoint`: ModelCheckpoint that keeps its best-so-far state when the run folder was moved.
- `FaultPoints`: the deterministic fault-injection points of the training loop (`SER_FAULT_AT`, see
  utils/io.py).
- `usable_checkpoint` / `choose_resume`: a `last.ckpt` that cannot be loaded (truncated, foreign) is moved
  aside; the run resumes from `best.ckpt` (a full training state too) or starts over, never crashes forever.
- `EpochHistory`: every epoch's validation metrics in `history.jsonl`; a resumed run replays the epochs its
  checkpoint holds into its W&B run (`replay_history`), so an offline run folder made after a kill still shows the
  whole history.
- `sigterm_exits`: SIGTERM stops the run at once with exit status 143 (a `Terminated` SystemExit); every
  file is written atomically, so the rerun resumes from the last epoch-end checkpoint.
"""

from __future__ import annotations

import io
import os
import random
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ser_lightning.utils.io import atomic_write_bytes, fault_point

SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process killed by SIGTERM
CHECKPOINT_KEYS = ("state_dict", "optimizer_states", "loops", "epoch")


class Terminated(SystemExit):
    """The process received SIGTERM; the run stopped and can be resumed by running the same command."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose state survives a moved / copied run folder.

    Lightning reloads best_model_score, best_k_models, ... only when the stored dirpath equals the current
    one; a run resumed from another path would forget its best score and could replace best.ckpt by a worse
    epoch. Here paths inside the stored dirpath are mapped into the current one. The state key is the plain
    ModelCheckpoint's, so checkpoints written by either class restore into the other."""

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        stored, here = state_dict.get("dirpath"), self.dirpath
        if stored and here and stored != here:

            def move(p: Any) -> Any:
                return os.path.join(here, os.path.basename(p)) if isinstance(p, str) and os.path.dirname(p) == stored else p

            state_dict = dict(state_dict, dirpath=here)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state_dict:
                    state_dict[key] = move(state_dict[key])
            if "best_k_models" in state_dict:
                state_dict["best_k_models"] = {move(k): v for k, v in state_dict["best_k_models"].items()}
        super().load_state_dict(state_dict)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())  # fault point `write:<name>.ckpt` half-way
        name = Path(str(path)).name
        fault_point(f"saved:{name}")
        if name == "last.ckpt":
            fault_point("epoch_end")  # ModelCheckpoint writes best.ckpt, then last.ckpt, as an epoch ends

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
        # never unpickle arbitrary objects from a checkpoint file, whatever the caller asks for
        return torch.load(str(path), map_location=map_location or "cpu", weights_only=True)


PROGRESS_REDRAWS_PER_SECOND = 4


def progress_bar() -> Optional[Any]:
    """Lightning's rich progress bar, redrawn at most PROGRESS_REDRAWS_PER_SECOND times a second. Lightning's default
    one asks its drawing thread for a redraw after every step, drawn up to 100 times a second: after every step of a
    small head, ~2 ms of CPU per ~28 ms step (issue #18, `ser bench --parts overhead`). The thread still polls 100
    times a second (a lower refresh_rate would make every stop wait for its sleep); only the redraw requests are
    throttled, and the final state is drawn when the bar stops. None without rich (Lightning's tqdm bar throttles
    itself)."""
    import time

    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    if not _RICH_AVAILABLE:
        return None
    from lightning.pytorch.callbacks import RichProgressBar

    class ThrottledRichProgressBar(RichProgressBar):
        _last_redraw = 0.0

        def refresh(self, hard: bool = False) -> None:
            now = time.monotonic()
            if hard or now - self._last_redraw >= 1.0 / PROGRESS_REDRAWS_PER_SECOND:
                self._last_redraw = now
                super().refresh(hard)

    return ThrottledRichProgressBar()


def step_seed(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 100_003 + int(batch) * 7_919 + int(rank) * 13) % (2**32)


def _loaders(obj: Any) -> List[Any]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _loaders(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _loaders(v)]
    return [obj] if obj is not None else []


class ReproducibleSteps(Callback):
    """Per-epoch sampler order and per-step random state, both pure functions of (seed, epoch, step)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning calls set_epoch only on `dataloader.sampler` / `batch_sampler.sampler`, never on a custom
        # batch sampler such as the datamodule's LengthBucketBatchSampler: without this every epoch would see
        # the same order. (The sampler draws its order lazily, at the epoch's first batch.)
        for loader in _loaders(trainer.train_dataloader):
            batch_sampler = getattr(loader, "batch_sampler", None)
            if callable(getattr(batch_sampler, "set_epoch", None)):
                batch_sampler.set_epoch(trainer.current_epoch)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # re-seeded every step: dropout / augmentation masks do not depend on what ran before (a resumed run
        # creates its data iterator, loads checkpoints, ... in another order than an uninterrupted one)
        s = step_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # also seeds every CUDA device


class FaultPoints(Callback):
    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        fault_point("train_batch")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        fault_point("train_epoch_end")  # runs before ModelCheckpoint writes this epoch's checkpoints


HISTORY = "history.jsonl"


class EpochHistory(Callback):
    """One JSON line per finished validation epoch (epoch, trainer/global_step and every scalar val/ and train/
    metric Lightning holds then), rewritten atomically: the local record a resumed W&B run replays."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        entry: Dict[str, Any] = {"epoch": int(trainer.current_epoch), "trainer/global_step": int(trainer.global_step)}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("val/", "train/")) and torch.is_tensor(value) and value.numel() == 1:
                entry[key] = float(value)
        kept = [e for e in read_history(self.path) if e["epoch"] != entry["epoch"]]
        write_history(self.path, kept + [entry])


def read_history(path: Path) -> List[Dict[str, Any]]:
    """The entries of a history.jsonl; a torn last line (a kill mid-write of an older version) is ignored."""
    import json

    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("epoch"), int):
            out.append(entry)
    return out


def write_history(path: Path, entries: List[Dict[str, Any]]) -> None:
    import json

    atomic_write_bytes(Path(path), "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode())


def replay_history(path: Path, resume_ckpt: Optional[str], experiment: Any) -> int:
    """On resume: keep the history entries of the epochs the checkpoint holds (later ones are trained again) and
    log them into `experiment` (a wandb run) in order. Returns how many were replayed."""
    if not resume_ckpt:
        return 0
    done_epoch = int(torch.load(resume_ckpt, map_location="cpu", weights_only=True)["epoch"])  # last finished epoch
    kept = [e for e in read_history(path) if e["epoch"] <= done_epoch]
    write_history(path, kept)
    if experiment is None:
        return 0
    for entry in sorted(kept, key=lambda e: e["epoch"]):
        experiment.log(entry)
    return len(kept)


def usable_checkpoint(path: Path) -> Optional[str]:
    """None when `path` is a complete training checkpoint; otherwise why it is not."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, non-allowlisted global, ...
        return f"cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
    if not isinstance(ckpt, dict):
        return "is not a checkpoint dict"
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        return f"lacks {', '.join(missing)} (not a resumable training checkpoint)"
    return None


def choose_resume(ckpt_dir: Path) -> Optional[str]:
    """The checkpoint to resume from: last.ckpt, else best.ckpt, else None (start over).

    Unusable files are renamed `<name>.corrupt-<time>` (kept for inspection, never loaded again)."""
    for name in ("last.ckpt", "best.ckpt"):
        path = Path(ckpt_dir) / name
        if not path.is_file():
            continue
        problem = usable_checkpoint(path)
        if problem is None:
            return str(path)
        if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
            continue  # DDP: rank 0 moves it aside
        aside = path.with_name(f"{name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            path.replace(aside)
            print(f"[ser] {path} {problem}; moved aside to {aside.name}")
        except OSError as e:
            print(f"[ser] {path} {problem}; not used (could not move it aside: {e})")
    return None


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (exit status 143) at once in the main thread.

    Nested use is a no-op. Lightning's own SIGTERM handler (installed during fit/test) calls this one too."""
    if threading.current_thread() is not threading.main_thread() or getattr(signal.getsignal(signal.SIGTERM), "_ser", False):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    handler._ser = True  # type: ignore[attr-defined]
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
