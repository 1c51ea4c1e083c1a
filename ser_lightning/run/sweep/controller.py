"""The local sweep controller: proposes trials with wandb's sweep logic, runs them on worker slots (one per GPU
or --workers), records them in sweep_state.json, and resumes an interrupted sweep."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ser_lightning.config import ConfigError
from ser_lightning.run.sweep import hyperband, leaderboard
from ser_lightning.run.sweep.agent import local_argv
from ser_lightning.run.sweep.config import _py, varying_keys
from ser_lightning.run.sweep.trials import (STATE, TRIAL_LOG, fmt_metric, log_tail, outputs_metrics, signal_trial, std_key,
                                            trial_name, utc_now)  # fmt: skip
from ser_lightning.utils.io import atomic_write_json, read_json

MAX_INITIAL_FAILURES = 5  # like `wandb agent`: when the first 5 trials of a run all fail, stop (a broken setup)


class SweepError(RuntimeError):
    """The sweep cannot run (folder busy, folder of another sweep)."""


# ---------------------------------------------------------------------------------------------- devices
def parse_gpus(spec: Optional[str]) -> List[str]:
    """`--gpus`: 'auto' (every visible GPU, none on a CPU machine), 'none' / 'cpu', or '0,1'."""
    if spec in (None, "auto"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
                return [line.strip() for line in out.splitlines() if line.strip()]
            except (OSError, subprocess.SubprocessError):
                return []
        return []
    if spec in ("none", "cpu", ""):
        return []
    return [d.strip() for d in spec.split(",") if d.strip()]


# ---------------------------------------------------------------------------------------------- controller
class LocalSweep:
    def __init__(self, config: Dict[str, Any], sweep_dir: Path, overrides: Sequence[str] = (), workers: Optional[int] = None,
                 gpus: Optional[str] = "auto", count: Optional[int] = None, retry_failed: bool = False,
                 poll_s: float = 0.5, source: Optional[str] = None, gpus_per_trial: int = 1) -> None:  # fmt: skip
        self.config = config
        self.dir = Path(sweep_dir)
        self.overrides = list(overrides)
        devices = parse_gpus(gpus)
        if gpus_per_trial < 1:
            raise ConfigError("--gpus-per-trial must be >= 1")
        if devices and len(devices) < gpus_per_trial:
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial} but only {len(devices)} GPU(s): {','.join(devices)}")
        # one device group per worker slot: "0", "1", ... or "0,1", "2,3" with --gpus-per-trial 2 (trainer.devices=2)
        self.devices = [",".join(devices[i : i + gpus_per_trial]) for i in range(0, len(devices) - gpus_per_trial + 1, gpus_per_trial)]
        self.cpu_only = gpus in ("none", "cpu", "")
        self.workers = int(workers) if workers is not None else max(1, len(self.devices))
        if self.workers < 1:
            raise ConfigError("--workers must be >= 1")
        self.count = count
        self.retry_failed = retry_failed
        self.poll_s = poll_s
        self.metric = config["metric"]["name"]
        self.goal = config["metric"].get("goal", "minimize")
        self.varying = varying_keys(config)
        self.exact_names = config["method"] == "grid"
        self.source = source
        self.hyperband = hyperband.Hyperband.from_config(config)  # early_terminate (hyperband.py), None without one
        self._check_overrides()
        self.state: Dict[str, Any] = {}
        self.active: Dict[str, Dict[str, Any]] = {}  # trial name -> {proc, slot, log}
        self._stopping = False
        self._outcomes: List[str] = []  # statuses of the trials that ended in this invocation

    # ------------------------------------------------------------------ identity, state, lock
    def identity(self) -> str:
        keys = ("method", "metric", "parameters", "command", "program")
        blob = {k: self.config.get(k) for k in keys}
        blob["overrides"] = sorted(self.overrides)
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _check_overrides(self) -> None:
        for item in self.overrides:
            key = item.split("=", 1)[0].lstrip("-")
            if key in self.varying:
                raise ConfigError(f"override '{item}' sets '{key}', which this sweep varies; remove it or edit the YAML")
            if key == "output_dir":
                raise ConfigError("output_dir is the sweep folder here; trial folders are chosen by ser sweep")

    def _load_state(self) -> None:
        state = read_json(self.dir / STATE)
        if state is None:
            self.state = {"identity": self.identity(), "source": self.source, "config": self.config,
                          "overrides": self.overrides, "created_at": utc_now(), "trials": []}  # fmt: skip
            return
        if state.get("identity") != self.identity():
            raise SweepError(
                f"{self.dir} holds another sweep (different YAML parameters/metric/command or overrides: identity "
                f"{state.get('identity')} != {self.identity()}); choose another output_dir (nothing was changed)"
            )
        self.state = state

    def save(self) -> None:
        self.state["updated_at"] = utc_now()
        atomic_write_json(self.dir / STATE, self.state)

    def _lock(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.dir / ".sweep.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise SweepError(f"another `ser sweep` is running on {self.dir}") from None
        return handle

    @property
    def trials(self) -> List[Dict[str, Any]]:
        return self.state["trials"]

    def _trial(self, name: str) -> Dict[str, Any]:
        return next(t for t in self.trials if t["name"] == name)

    # ------------------------------------------------------------------ proposals
    def _sweep_runs(self, extra: Sequence[Dict[str, Any]] = ()) -> list:
        from sweeps import RunState, SweepRun

        states = {"finished": RunState.finished, "failed": RunState.failed, hyperband.EARLY_STOPPED: RunState.killed}
        runs = []
        for t in list(self.trials) + list(extra):
            state = states.get(t["status"], RunState.running)
            summary = {self.metric: t["metric"]} if t.get("metric") is not None else {}
            runs.append(SweepRun(config={k: {"value": v} for k, v in t["params"].items()}, state=state, summary_metrics=summary))
        return runs

    def propose(self) -> Optional[Dict[str, Any]]:
        """A new trial from the sweep algorithm, or None when the sweep is exhausted / at its run_cap."""
        with warnings.catch_warnings():  # pydantic-v1 names in sweeps 0.2, GP convergence notes of bayes
            warnings.simplefilter("ignore")
            return self._propose()

    def _propose(self) -> Optional[Dict[str, Any]]:
        import sweeps

        cap = self.config.get("run_cap")
        if cap is not None and len(self.trials) >= int(cap):
            return None
        names = {t["name"] for t in self.trials}
        seen: List[Dict[str, Any]] = []
        for _ in range(100):  # random / bayes may propose a point that already ran: ask again
            run = sweeps.next_run(self.config, self._sweep_runs(seen))
            if run is None:
                return None
            params = {k: _py(v["value"]) for k, v in run.config.items()}
            name = trial_name(params, self.varying, exact=self.exact_names)
            if name not in names:
                trial = {"name": name, "params": params, "status": "pending", "attempts": 0}
                self.trials.append(trial)
                self.save()
                return trial
            seen.append({"params": params, "status": "finished", "metric": None})
        return None

    # ------------------------------------------------------------------ running trials
    def _launch(self, trial: Dict[str, Any], slot: int) -> None:
        trial_dir = self.dir / trial["name"]
        trial_dir.mkdir(parents=True, exist_ok=True)
        argv = local_argv(self.config, trial["params"], trial_dir, self.overrides)
        env = dict(os.environ)
        device = self.devices[slot % len(self.devices)] if self.devices else None
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        elif self.cpu_only:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if device is None and "OMP_NUM_THREADS" not in os.environ:
            # CPU trials share the cores: W workers with torch's default thread pools oversubscribe them, and
            # OpenMP threads that wait on each other made head steps 5x slower on a busy 2-core machine
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        env["SER_SWEEP_TRIAL"] = trial["name"]
        (trial_dir / hyperband.MARKER).unlink(missing_ok=True)
        log_path = trial_dir / TRIAL_LOG
        log = open(log_path, "ab")
        trial["attempts"] = int(trial.get("attempts", 0)) + 1
        log.write(f"==== {utc_now()} attempt {trial['attempts']}: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        trial.update({"status": "running", "argv": argv, "device": device if device is not None else "cpu",
                      "worker": slot, "started_at": utc_now(), "log": str(log_path.relative_to(self.dir)),
                      "returncode": None, "error": None, "metric": None, "metric_std": None, "metrics": None,
                      "early_stopped": None})  # fmt: skip
        self.active[trial["name"]] = {"proc": proc, "slot": slot, "log": log, "start": time.time()}
        self.save()
        where = f"GPU {device}" if device is not None else "CPU"
        print(f"[ser sweep] start  {trial['name']} (worker {slot}, {where}, attempt {trial['attempts']})", flush=True)

    def _reap(self) -> None:
        for name, info in list(self.active.items()):
            rc = info["proc"].poll()
            if rc is None:
                continue
            info["log"].close()
            del self.active[name]
            self._record(self._trial(name), rc, time.time() - info["start"])

    def _early_terminate(self) -> None:
        """Hyperband (hyperband.py): SIGTERM the trials it stops (their process group), SIGKILL after a grace period."""
        changed, stop = self.hyperband.poll(self.dir, self.trials, list(self.active))
        for name in stop:
            signal_trial(self.active[name]["proc"], signal.SIGTERM)
            self.active[name]["kill_at"] = time.time() + hyperband.EARLY_STOP_GRACE_S
        for info in [i for i in self.active.values() if time.time() > i.get("kill_at", float("inf"))]:
            signal_trial(info["proc"], signal.SIGKILL)
        if changed:
            self.save()

    def _record(self, trial: Dict[str, Any], rc: int, wall_s: float) -> None:
        trial_dir = self.dir / trial["name"]
        trial.update({"returncode": rc, "ended_at": utc_now(), "wall_s": round(wall_s, 1)})
        if self.hyperband:
            self.hyperband.observe(trial, trial_dir)  # the brackets it reached since the last poll count too
        if trial.get("early_stopped") and not (rc == 0 and self.metric in outputs_metrics(trial_dir)):
            hyperband.mark_early_stopped(self.dir, trial)
        elif self._stopping and rc != 0:
            trial["status"] = "interrupted"
            print(f"[ser sweep] stopped {trial['name']} (exit {rc}); it resumes when the sweep runs again", flush=True)
        elif rc != 0:
            trial.update({"status": "failed", "error": log_tail(trial_dir / TRIAL_LOG)})
            last = (trial["error"] or "").strip().splitlines()[-1:] or ["(no output)"]
            print(f"[ser sweep] FAILED {trial['name']} (exit {rc}): {last[0][:200]}  -> {trial_dir / TRIAL_LOG}", flush=True)
        else:
            metrics = outputs_metrics(trial_dir)
            trial["metrics"] = metrics
            if self.metric not in metrics:
                trial.update({"status": "failed", "metric": None,
                              "error": f"exited 0 but wrote no '{self.metric}' (found: {', '.join(sorted(metrics)) or 'nothing'}) in {trial_dir}"})  # fmt: skip
                print(f"[ser sweep] FAILED {trial['name']}: {trial['error']}", flush=True)
            else:
                sk = std_key(self.metric)
                trial.update({"status": "finished", "metric": metrics[self.metric],
                              "metric_std": metrics.get(sk) if sk else None, "error": None})  # fmt: skip
                print(f"[ser sweep] done   {trial['name']}: {self.metric} = {fmt_metric(trial['metric'], trial.get('metric_std'))} "
                      f"({wall_s:.0f} s)", flush=True)  # fmt: skip
        self._outcomes.append(trial["status"])
        self.save()

    def _broken(self) -> bool:
        """The first MAX_INITIAL_FAILURES trials of this invocation all failed: the setup is broken."""
        return len(self._outcomes) >= MAX_INITIAL_FAILURES and "finished" not in self._outcomes and all(
            o == "failed" for o in self._outcomes[:MAX_INITIAL_FAILURES]
        )

    def _stop_all(self) -> None:
        """SIGTERM every running trial (ser saves and exits 143), SIGKILL after a grace period."""
        self._stopping = True
        for info in self.active.values():
            signal_trial(info["proc"], signal.SIGTERM)
        deadline = time.time() + 60
        try:
            while self.active and time.time() < deadline:
                self._reap()
                time.sleep(0.2)
        except KeyboardInterrupt:  # a second Ctrl-C: do not wait for the trials to save
            pass
        for name, info in list(self.active.items()):
            signal_trial(info["proc"], signal.SIGKILL)
            info["proc"].wait()
        self._reap()

    def run(self) -> int:
        lock = self._lock()
        try:
            self._load_state()
            hyperband.settle_early_stopped(self.dir, self.trials)
            self.save()
            if self.hyperband:
                print(f"[ser sweep] {self.hyperband.describe()}", flush=True)
            resume = [t for t in self.trials if t["status"] in ("running", "interrupted", "pending")]
            if self.retry_failed:
                resume += [t for t in self.trials if t["status"] == "failed"]
            if resume:
                print(f"[ser sweep] resuming: {len(resume)} unfinished trial(s) run again: "
                      f"{', '.join(t['name'] for t in resume)}", flush=True)  # fmt: skip
            for t in resume:
                t["status"] = "pending"
            launched = 0
            free = list(range(self.workers))
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                while True:
                    while free and (self.count is None or launched < self.count) and not self._broken():
                        trial = resume.pop(0) if resume else self.propose()
                        if trial is None:
                            break
                        self._launch(trial, free.pop(0))
                        launched += 1
                    if not self.active:
                        break
                    time.sleep(self.poll_s)
                    if self.hyperband:
                        self._early_terminate()
                    before = {n: i["slot"] for n, i in self.active.items()}
                    self._reap()
                    free += sorted(s for n, s in before.items() if n not in self.active)
            except KeyboardInterrupt:
                print("[ser sweep] interrupted: stopping running trials (run the same command to resume)", flush=True)
                self._stop_all()
                self.print_leaderboard()
                return 130
            finally:
                signal.signal(signal.SIGTERM, previous)
            self.print_leaderboard()
            if self._broken():
                print(f"[ser sweep] stopped: the first {MAX_INITIAL_FAILURES} trials all failed; fix the cause (see "
                      "their trial.log) and run the same command with --retry-failed", file=sys.stderr)  # fmt: skip
                return 1
            statuses = [t["status"] for t in self.trials]
            return 1 if statuses and "finished" not in statuses and "failed" in statuses else 0
        finally:
            lock.close()

    # ------------------------------------------------------------------ leaderboard
    def ranked(self) -> List[Dict[str, Any]]:
        return leaderboard.ranked(self.trials, self.goal)

    def leaderboard_markdown(self) -> str:
        return leaderboard.leaderboard_markdown(self)

    def remaining(self) -> Optional[int]:
        """Trials the sweep has not run yet (None: unbounded random / bayes search without run_cap)."""
        return leaderboard.remaining(self.config, self.trials)

    def print_leaderboard(self) -> None:
        leaderboard.print_leaderboard(self)


def _raise_interrupt(signum, frame):  # SIGTERM to the controller: stop like Ctrl-C
    raise KeyboardInterrupt
