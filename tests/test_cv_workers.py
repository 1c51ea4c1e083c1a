"""`cv.workers`: folds trained in parallel worker processes give exactly the sequential results."""

import json
import sys
from pathlib import Path

import pytest

from ser_lightning.config import ConfigError, compose
from ser_lightning.run.cv import run_cv

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import fault_helpers as fh  # noqa: E402


def _cfg(tmp, ravdess_root, out, *extra):
    return compose([
        "data=ravdess", f"data.root={ravdess_root}", "data.limit_per_class=30", "cv.folds=[1,2]",
        "model.encoder=random:test", "model.layer=2", "model.pooling=qkv", "model.heads=2", "model.input_seconds=clip",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "wandb.mode=disabled",
        f"cache.dir={tmp / 'cache'}", f"data.table_cache_dir={tmp / 'tables'}", f"output_dir={tmp / out}", *extra,
    ])  # fmt: skip


def test_parallel_folds_match_sequential_folds(tmp_path, ravdess_root, capsys):
    sequential = run_cv(_cfg(tmp_path, ravdess_root, "seq"))
    parallel = run_cv(_cfg(tmp_path, ravdess_root, "par", "cv.workers=2"))
    assert "2 at a time in worker processes" in capsys.readouterr().out
    for key in ("test/ua", "test/wa", "test/f1_macro", "val/ua_best"):
        assert parallel[key]["folds"] == sequential[key]["folds"], key
    assert parallel["confusion_matrix"] == sequential["confusion_matrix"]
    for k in (1, 2):  # each fold is an ordinary `ser train` run folder
        assert json.loads((tmp_path / "par" / f"fold_{k}" / "results.json").read_text())["fold"] == k
    # rerun: every fold is finished, nothing is trained again
    again = run_cv(_cfg(tmp_path, ravdess_root, "par", "cv.workers=2"))
    assert "worker processes" not in capsys.readouterr().out
    assert again["test/ua"]["folds"] == parallel["test/ua"]["folds"]


def test_workers_and_ddp_do_not_mix(tmp_path, ravdess_root):
    with pytest.raises(ConfigError, match="trainer.devices"):
        run_cv(_cfg(tmp_path, ravdess_root, "x", "cv.workers=2", "trainer.devices=2"))


def test_sigterm_stops_parallel_folds_at_once_and_the_same_command_resumes(tmp_path, ravdess_root):
    """SIGTERM to `ser cv` (what kill, Slurm and Kubernetes send to the main process): exit 143 promptly, no
    worker left running, the queued fold never started; the same command then finishes every fold."""
    import signal
    import subprocess
    import time

    args = ["cv", "data=ravdess", f"data.root={ravdess_root}", "data.limit_per_class=30", "cv.folds=[1,2,3]",
            "cv.workers=2", "model.encoder=random:test", "model.layer=2", "model.pooling=mean",
            "model.input_seconds=clip", "trainer.max_epochs=8", "trainer.enable_progress_bar=false",
            "wandb.mode=disabled", f"cache.dir={tmp_path / 'cache'}", f"data.table_cache_dir={tmp_path / 'tables'}",
            f"output_dir={tmp_path / 'cv'}"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "ser_lightning.cli", *args], cwd=fh.ROOT, env=fh.ser_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    first_epoch = tmp_path / "cv" / "fold_1" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not first_epoch.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the CV ended before a fold finished its first epoch:\n" + proc.stdout.read()[-3000:]
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "no worker processes"
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert time.time() - sent < 60, "not stopped at once"

    def running(pid: int):
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        except OSError:
            return None
        state = status.get("State", "").strip()
        # a zombie / dead entry has exited (only its reaping by init is pending)
        return None if state[:1] in ("Z", "X") else f"{status.get('Name', '').strip()} {state}"

    time.sleep(2)  # exits in progress finish
    alive = {pid: state for pid, state in ((int(p), running(int(p))) for p in children) if state}
    assert not alive, alive  # every worker (and multiprocessing's resource tracker) has exited
    assert not (tmp_path / "cv" / "fold_3" / "checkpoints").exists(), "the queued fold was started"
    assert not (tmp_path / "cv" / "summary.json").exists()
    # the same command resumes and finishes all three folds
    done = fh.run_ser(args, timeout=900)
    assert done.returncode == 0, fh.describe(done)
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["folds"] == [1, 2, 3]
