"""Faults: kills (SIGKILL / SIGTERM at named points), full disks, corrupt and truncated files. After each, the
same command completes and ends with the results of an uninterrupted run; nothing valid is lost.

Fault injection: SER_FAULT_AT=<point>[:<n>] / SER_FAULT_ACTION=kill|term|exit|enospc|raise (utils/io.py).
The default tests use the tiny random encoder; the acceptance check (`ser cv`, whisper-base, two kills at
random moments) is marked slow.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import fault_helpers as fh  # noqa: E402

from ser_lightning.utils import io as sio  # noqa: E402


@pytest.fixture(autouse=True)
def _no_fault_env(monkeypatch):
    for k in ("SER_FAULT_AT", "SER_FAULT_ACTION"):
        monkeypatch.delenv(k, raising=False)
    sio.reset_faults()
    yield
    sio.reset_faults()


def _leftovers(folder: Path):
    return sorted(p.name for p in Path(folder).rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-"))


# ------------------------------------------------------------------------------------------ fault points
def test_fault_point_fires_on_the_requested_pass_only(monkeypatch):
    monkeypatch.setenv("SER_FAULT_AT", "epoch_end:3, write:results.json")
    monkeypatch.setenv("SER_FAULT_ACTION", "raise")
    sio.fault_point("epoch_end")
    sio.fault_point("epoch_end")
    sio.fault_point("other")
    with pytest.raises(sio.FaultInjected, match="epoch_end"):
        sio.fault_point("epoch_end")
    sio.fault_point("epoch_end")  # the 4th pass: no longer
    with pytest.raises(sio.FaultInjected, match="write:results.json"):  # a name with a colon, default pass 1
        sio.fault_point("write:results.json")
    monkeypatch.setenv("SER_FAULT_ACTION", "enospc")
    monkeypatch.setenv("SER_FAULT_AT", "x")
    with pytest.raises(OSError) as e:
        sio.fault_point("x")
    assert e.value.errno == errno.ENOSPC


# ------------------------------------------------------------------------------------------ atomic files
def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    sio.atomic_write_json(target, {"test/ua": 0.5})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        sio.atomic_write_json(target, {"test/ua": 0.9, "pad": "x" * 100_000})
    assert e.value.errno == errno.ENOSPC and "results.json" in str(e.value)
    assert sio.read_json(target) == {"test/ua": 0.5}
    assert _leftovers(tmp_path) == []


def test_kill_mid_write_never_leaves_a_half_file(tmp_path):
    """A subprocess SIGKILLed half-way through writing: the target keeps its old content; only a temp is left."""
    target = tmp_path / "summary.json"
    sio.atomic_write_json(target, {"old": True})
    code = (
        "from ser_lightning.utils.io import atomic_write_json\n"
        f"atomic_write_json({str(target)!r}, {{'new': 'x' * 200000}})\n"
    )
    env = {**os.environ, "SER_FAULT_AT": "write:summary.json", "SER_FAULT_ACTION": "kill"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sio.read_json(target) == {"old": True}
    temps = list(tmp_path.glob(".summary.json.*.tmp"))
    assert len(temps) == 1 and 0 < temps[0].stat().st_size < 200000  # the half-written temp, never read


def test_truncated_results_are_never_trusted(tmp_path):
    from omegaconf import OmegaConf

    from ser_lightning.config import compose
    from ser_lightning.run.rundir import config_hash, finished_results

    cfg = compose(fh.tiny_overrides(tmp_path / "run", tmp_path))
    OmegaConf.set_readonly(cfg, True)
    good = {"test/ua": 0.5, "config_hash": config_hash(cfg)}
    sio.atomic_write_json(tmp_path / "run" / "results.json", good)
    assert finished_results(tmp_path / "run", cfg) == good
    text = (tmp_path / "run" / "results.json").read_text()
    (tmp_path / "run" / "results.json").write_text(text[: len(text) // 2])
    assert sio.read_json(tmp_path / "run" / "results.json") is None
    assert finished_results(tmp_path / "run", cfg) is None


def test_unwritable_or_full_output_dir_fails_before_any_work(tmp_path, monkeypatch, capsys):
    import collections

    from ser_lightning.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["train", *fh.tiny_overrides(blocker / "run", tmp_path)]) == 1
    assert "is not writable" in capsys.readouterr().err
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
    assert main(["train", *fh.tiny_overrides(tmp_path / "run", tmp_path)]) == 1
    assert "only 1 MiB free" in capsys.readouterr().err
    assert not (tmp_path / "tables").exists() and not (tmp_path / "cache").exists()  # no work was started


# ------------------------------------------------------------------------------------------ feature cache
def _clips(n=6):
    root = fh.RAVDESS
    if not root.is_dir():
        pytest.skip("RAVDESS not found")
    from ser_lightning.audio import decode

    files = sorted(str(p) for p in (root / "Actor_01").glob("*.flac"))[:n]
    infos = [decode(f)[1] for f in files]
    return {i.sha256: f for i, f in zip(infos, files)}, {i.sha256: i.duration for i in infos}


def _fill(cache, encoder, paths, durations):
    from ser_lightning.features.extract import fill_cache
    from ser_lightning.features.frontend import LengthPolicy

    return fill_cache(cache, encoder, paths, durations, [1], LengthPolicy.parse("clip"), batch_size=4, progress=False)


def _cache(root):
    from ser_lightning.features.cache import cache_for

    return cache_for(str(root), "fp-test", {"n_mels": 80}, "clip", 30.0, "center")


def test_cache_full_disk_leaves_no_partial_shard_and_rerun_completes(tmp_path, random_encoder, monkeypatch):
    paths, durations = _clips()
    cache = _cache(tmp_path)
    real_save = np.save

    def save_then_fail(f, arr, *a, **k):
        f.write(b"\x93NUMPY" + b"\0" * 64)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(OSError) as e:
        _fill(cache, random_encoder, paths, durations)
    assert e.value.errno == errno.ENOSPC and "feature-cache shard" in str(e.value)
    assert list(cache.dir.glob("shard-*")) == [] and _leftovers(cache.dir) == []
    monkeypatch.setattr(np, "save", real_save)
    fresh = _cache(tmp_path)
    assert fresh.missing(list(paths), [1]) == list(paths)
    assert _fill(fresh, random_encoder, paths, durations).encoded == len(paths)
    assert _cache(tmp_path).missing(list(paths), [1]) == []


def test_cache_refuses_to_start_when_the_disk_is_too_small(tmp_path, random_encoder, monkeypatch):
    import collections

    paths, durations = _clips(2)
    cache = _cache(tmp_path)
    calls = []
    monkeypatch.setattr(type(random_encoder), "forward", lambda *a, **k: calls.append(1))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(OSError, match="needs about .* MiB .* only 1 MiB are free"):
        _fill(cache, random_encoder, paths, durations)
    assert calls == []  # refused before any encoding


def test_corrupt_or_abandoned_shards_are_rebuilt_with_the_same_features(tmp_path, random_encoder):
    paths, durations = _clips()
    cache = _cache(tmp_path)
    _fill(cache, random_encoder, paths, durations)
    before = {h: np.array(cache.get(h, 1)) for h in paths}
    (shard,) = cache.dir.glob("shard-*")
    layer = shard / "layer_1.npy"
    data = bytearray(layer.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the features
    layer.write_bytes(bytes(data))
    (cache.dir / ".tmp-shard-killed").mkdir()  # what a writer killed mid-shard leaves behind
    reopened = _cache(tmp_path)
    assert list((cache.dir / "corrupt").iterdir()), "the corrupt shard was not moved aside"
    assert reopened.missing(list(paths), [1]) == list(paths)
    _fill(reopened, random_encoder, paths, durations)
    assert not (cache.dir / ".tmp-shard-killed").exists()
    after = _cache(tmp_path)
    for h in paths:
        np.testing.assert_array_equal(np.array(after.get(h, 1)), before[h])


# ------------------------------------------------------------------------------------------ checkpoints
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_unloadable_last_checkpoint_falls_back_to_best_then_to_a_fresh_start(tmp_path_factory, tmp_path):
    from ser_lightning.run.callbacks import choose_resume, usable_checkpoint

    run = fh.trained_run(tmp_path_factory)
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", ckpts)
    assert usable_checkpoint(ckpts / "last.ckpt") is None
    assert choose_resume(ckpts) == str(ckpts / "last.ckpt")
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated (a non-atomic writer killed)
    assert choose_resume(ckpts) == str(ckpts / "best.ckpt")
    assert not (ckpts / "last.ckpt").exists() and list(ckpts.glob("last.ckpt.corrupt-*"))
    import torch

    torch.save({"state_dict": {}, "optimizer_states": [], "loops": {}, "epoch": 0, "x": _Payload(tmp_path / "pwned")},
               ckpts / "best.ckpt")  # fmt: skip
    assert choose_resume(ckpts) is None  # refused (weights_only), moved aside: start over
    assert not (tmp_path / "pwned").exists() and list(ckpts.glob("best.ckpt.corrupt-*"))


def test_checkpoint_writer_is_atomic(tmp_path, monkeypatch):
    import torch

    from ser_lightning.run.callbacks import AtomicCheckpointIO

    io_ = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    monkeypatch.setenv("SER_FAULT_AT", "write:last.ckpt")
    monkeypatch.setenv("SER_FAULT_ACTION", "raise")
    with pytest.raises(sio.FaultInjected):
        io_.save_checkpoint({"epoch": 2, "w": torch.zeros(10_000)}, path)
    assert io_.load_checkpoint(path)["epoch"] == 1 and _leftovers(tmp_path) == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_sigterm_raises_terminated_with_exit_status_143():
    from ser_lightning.run.callbacks import SIGTERM_EXIT, Terminated, sigterm_exits

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as e:
        with sigterm_exits():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert e.value.code == SIGTERM_EXIT == 143
    assert signal.getsignal(signal.SIGTERM) is before


# ------------------------------------------------------------------------------------------ whole runs
def test_killed_mid_epoch_and_terminated_runs_resume_to_the_uninterrupted_result(tmp_path_factory, tmp_path, monkeypatch):
    """`ser train` SIGKILLed in epoch 2 (a subprocess), then SIGTERMed in epoch 2 again (in-process: the SIGTERM
    handler raises Terminated, exit status 143): each rerun resumes from epoch 1's last.ckpt, and the final
    results, checkpoints and exported head equal an uninterrupted run's."""
    import torch

    from ser_lightning.config import compose
    from ser_lightning.run.callbacks import Terminated
    from ser_lightning.run.train import train

    base = fh.trained_run(tmp_path_factory)
    out = tmp_path / "run"
    overrides = fh.tiny_overrides(out, fh.shared_work(tmp_path_factory))
    batches = -(-json.loads((base / "results.json").read_text())["n_train"] // fh.BATCH)  # batches per epoch
    proc = fh.run_ser(["train", *overrides], fault=f"train_batch:{batches + 3}", action="kill")  # epoch 2, batch 3
    assert proc.returncode == -signal.SIGKILL, fh.describe(proc)
    assert not (out / "results.json").exists()
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # epoch 1's

    monkeypatch.setenv("SER_FAULT_AT", "train_batch:2")
    monkeypatch.setenv("SER_FAULT_ACTION", "term")
    with pytest.raises(Terminated) as e:
        train(compose(overrides))
    assert e.value.code == 143 and not (out / "results.json").exists()
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    monkeypatch.delenv("SER_FAULT_AT")

    got = train(compose(overrides))
    want = json.loads((base / "results.json").read_text())
    assert fh.metrics(got) == fh.metrics(want) == fh.metrics(json.loads((out / "results.json").read_text()))
    for name in ("last.ckpt", "best.ckpt"):
        assert fh.same_tensors(fh.state_dict(out / "checkpoints" / name), fh.state_dict(base / "checkpoints" / name))
    assert (out / "export" / "head.safetensors").read_bytes() == (base / "export" / "head.safetensors").read_bytes()
    assert _leftovers(out) == []


def test_results_write_failures_rerun_to_the_same_results(tmp_path_factory, tmp_path, monkeypatch):
    """A full disk while writing results.json, then a truncated results.json: no invalid results are ever read,
    and each rerun re-tests the finished training (no epoch is repeated) and writes the same results."""
    from ser_lightning.config import compose
    from ser_lightning.run.train import train

    base = fh.trained_run(tmp_path_factory)
    out = tmp_path / "run"
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("results.json", "export"))
    cfg = compose(fh.tiny_overrides(out, fh.shared_work(tmp_path_factory)))
    monkeypatch.setenv("SER_FAULT_AT", "write:results.json")
    monkeypatch.setenv("SER_FAULT_ACTION", "enospc")
    with pytest.raises(OSError) as e:
        train(cfg)
    assert e.value.errno == errno.ENOSPC
    assert not (out / "results.json").exists() and _leftovers(out) == []
    monkeypatch.delenv("SER_FAULT_AT")
    last = fh.state_dict(out / "checkpoints" / "last.ckpt")
    want = fh.metrics(json.loads((base / "results.json").read_text()))
    assert fh.metrics(train(cfg)) == want
    text = (out / "results.json").read_text()
    (out / "results.json").write_text(text[:-40])
    assert fh.metrics(train(cfg)) == want
    assert fh.metrics(json.loads((out / "results.json").read_text())) == want
    assert fh.same_tensors(fh.state_dict(out / "checkpoints" / "last.ckpt"), last)  # nothing was retrained


def test_cv_skips_finished_folds_after_a_crash_and_writes_the_same_summary(tmp_path_factory, tmp_path, monkeypatch, capsys):
    from ser_lightning.config import compose
    from ser_lightning.run import cv as cvmod

    out = tmp_path / "cv"
    cfg = compose(fh.tiny_overrides(out, fh.shared_work(tmp_path_factory), "cv.folds=[1,2]", "trainer.max_epochs=1"))
    monkeypatch.setenv("SER_FAULT_AT", "fold_done:1")
    monkeypatch.setenv("SER_FAULT_ACTION", "raise")
    with pytest.raises(sio.FaultInjected):
        cvmod.run_cv(cfg)
    fold1 = (out / "fold_1" / "results.json").read_bytes()
    assert not (out / "fold_2").exists() and not (out / "summary.json").exists()
    monkeypatch.setenv("SER_FAULT_AT", "write:summary.json")
    monkeypatch.setenv("SER_FAULT_ACTION", "enospc")
    sio.reset_faults()
    with pytest.raises(OSError):
        cvmod.run_cv(cfg)
    assert not (out / "summary.json").exists() and _leftovers(out) == []
    monkeypatch.delenv("SER_FAULT_AT")
    capsys.readouterr()
    summary = cvmod.run_cv(cfg)
    assert capsys.readouterr().out.count("already finished with this configuration") == 2  # no fold retrained
    assert (out / "fold_1" / "results.json").read_bytes() == fold1
    results = [json.loads((out / f"fold_{k}" / "results.json").read_text()) for k in (1, 2)]
    expected = cvmod.summarize(results)
    stored = json.loads((out / "summary.json").read_text())
    for key in cvmod.SCALARS:
        assert stored[key] == summary[key] == expected[key]
    assert stored["confusion_matrix"] == expected["confusion_matrix"]


# ------------------------------------------------------------------------------------------ slow: full chains
CHAIN = [  # (SER_FAULT_AT, action, expected exit status, expected in the output), in order, one folder, cold caches
    ("write:COMPLETE.json", "kill", -9, None),  # the utterance table's completion marker, mid-write
    ("encode_batch:3", "kill", -9, None),  # feature encoding, before the (only) shard is written
    ("shard", "exit", 99, None),  # the shard's arrays on disk, not yet published
    ("saved:best.ckpt", "kill", -9, None),  # epoch 1: best.ckpt written, last.ckpt not yet
    ("train_batch:4", "term", 143, "best.ckpt"),  # resumed from best.ckpt; SIGTERM mid-epoch 2
    ("write:last.ckpt", "kill", -9, "best.ckpt"),  # half-way through writing epoch 2's last.ckpt
    ("before_results", "kill", -9, "resuming"),  # training and testing done, nothing written
    ("write:results.json", "kill", -9, "resuming"),  # half-way through writing results.json
]


@pytest.mark.slow
def test_train_survives_a_chain_of_kills_at_every_stage(tmp_path_factory, tmp_path):
    base = fh.trained_run(tmp_path_factory)
    out = tmp_path / "run"
    work = tmp_path / "work"  # cold caches: the table build and the encoding are killed too
    args = ["train", *fh.tiny_overrides(out, work)]
    for fault, action, status, expect in CHAIN:
        proc = fh.run_ser(args, fault=fault, action=action)
        assert proc.returncode == status, f"{fault}: {fh.describe(proc)}"
        assert expect is None or expect in proc.stdout, f"{fault}: {fh.describe(proc)}"
        assert not (out / "results.json").exists()
    ckpt = next(p for p in (out / "checkpoints" / "last.ckpt", out / "checkpoints" / "best.ckpt") if p.is_file())
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # a truncated checkpoint (say, written by a non-atomic tool)
    proc = fh.run_ser(args)
    assert proc.returncode == 0, fh.describe(proc)
    assert "moved aside" in proc.stdout
    assert _leftovers(out) == []  # the temp files of the writes killed half-way are gone
    got, want = json.loads((out / "results.json").read_text()), json.loads((base / "results.json").read_text())
    assert fh.metrics(got) == fh.metrics(want)
    assert fh.same_tensors(fh.state_dict(out / "checkpoints" / "best.ckpt"), fh.state_dict(base / "checkpoints" / "best.ckpt"))
    assert (out / "export" / "head.safetensors").read_bytes() == (base / "export" / "head.safetensors").read_bytes()


SUMMARY_KEYS = ("test/wa", "test/ua", "test/f1_macro", "test/f1_weighted", "confusion_matrix", "n_test", "folds", "config_hash")


def _progress(out: Path, cache: Path) -> str:
    """Where a killed `ser cv` was: shards in its cache, and per fold the newest checkpoint epoch / results."""
    import torch

    shards = len(list(cache.glob("*/shard-*")))
    parts = [f"{shards} cache shard(s)"]
    for fold in sorted(out.glob("fold_*")):
        last = fold / "checkpoints" / "last.ckpt"
        epoch = torch.load(last, weights_only=True)["epoch"] + 1 if last.is_file() else 0
        parts.append(f"{fold.name}: {'results.json' if (fold / 'results.json').exists() else f'{epoch} epoch(s) checkpointed'}")
    return ", ".join(parts)


def _run(args, kill_after=None, once=None):
    """Run `ser ARGS` in a subprocess. With `kill_after` seconds, SIGKILL it then (counted from the moment
    `once()` first holds, when given). Returns (exit status, seconds run, seconds until `once()` held)."""
    e = {**os.environ, "WANDB_MODE": "disabled"}
    e.pop("SER_FAULT_AT", None)
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "ser_lightning.cli", *args], cwd=fh.ROOT, env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    reached = None
    while proc.poll() is None and once is not None and reached is None:
        if once():
            reached = time.time() - start
        else:
            time.sleep(0.5)
    try:
        proc.wait(timeout=None if kill_after is None else kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode, time.time() - start, reached


class _Events:
    """Callable: True once `target` new events happened in a `ser cv` folder since the first call (an event: a
    fold's last.ckpt written, i.e. an epoch ended, or a fold's results.json written)."""

    def __init__(self, out: Path, target: int) -> None:
        self.out, self.target, self.seen, self.count = out, target, None, 0

    def _state(self):
        state = {str(p): p.stat().st_mtime_ns for p in self.out.glob("fold_*/checkpoints/last.ckpt") if p.is_file()}
        state.update({str(p): 0 for p in self.out.glob("fold_*/results.json")})
        return state

    def __call__(self) -> bool:
        state = self._state()
        if self.seen is not None:
            self.count += sum(1 for k, v in state.items() if self.seen.get(k) != v)
        self.seen = state
        return self.count >= self.target


@pytest.mark.slow
def test_cv_whisper_base_killed_twice_at_random_moments_gives_the_clean_summary(base_path, ravdess_root, tmp_path):
    """The issue's acceptance check: `ser cv` on RAVDESS with whisper-base (2 folds x 4 epochs), SIGKILLed twice
    at seeded random moments, rerun to the end: the same summary.json metrics as a clean run. Kill 1 comes at a
    random moment of the clean run's duration (cold caches: the table, the encoding, ...); kill 2 in the resumed
    run, a random time into a randomly drawn epoch (so it lands in training, testing or writing, never after
    the end)."""

    def args(out, cache):
        return ["cv", "data=ravdess", f"data.root={ravdess_root}", f"model.encoder={base_path}", "model.layer=6",
                "model.input_seconds=clip", "model.pooling=qkv", "data.limit_per_class=40", "cv.folds=[1,2]",
                "trainer.max_epochs=4", "trainer.enable_progress_bar=false", "wandb.mode=disabled",
                f"cache.dir={cache}", f"data.table_cache_dir={cache}/tables", f"output_dir={out}"]  # fmt: skip

    t0 = time.time()
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    status, duration, first_epoch = _run(args(clean, tmp_path / "cache_clean"), once=_Events(clean, 1))
    assert status == 0 and (clean / "summary.json").is_file()
    epoch_s = (duration - first_epoch) / 9  # 10 events (8 epochs, 2 results) after the first checkpoint
    rng = random.Random(20261128)
    delay1 = rng.uniform(0.05, 0.95) * duration
    target, delay2 = rng.randint(1, 6), rng.uniform(0.0, 0.8) * epoch_s
    report = []
    status, _, _ = _run(args(killed, tmp_path / "cache_killed"), kill_after=delay1)
    assert status == -signal.SIGKILL
    report.append(f"kill 1 at {delay1:.0f} s: {_progress(killed, tmp_path / 'cache_killed')}")
    status, _, at = _run(args(killed, tmp_path / "cache_killed"), kill_after=delay2, once=_Events(killed, target))
    assert status == -signal.SIGKILL
    report.append(f"kill 2 at {at + delay2:.0f} s, {delay2:.1f} s after the {target}th epoch/fold end: "
                  f"{_progress(killed, tmp_path / 'cache_killed')}")  # fmt: skip
    status, _, _ = _run(args(killed, tmp_path / "cache_killed"))
    assert status == 0
    print(f"\nclean run {duration:.0f} s (first checkpoint at {first_epoch:.0f} s); " + "; ".join(report)
          + f"; total {time.time() - t0:.0f} s")  # fmt: skip
    a = json.loads((clean / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert {k: a[k] for k in SUMMARY_KEYS} == {k: b[k] for k in SUMMARY_KEYS}
