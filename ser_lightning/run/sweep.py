"""`ser sweep SWEEP.yaml`: run a standard W&B sweep YAML locally, with no W&B server.

    ser sweep sweeps/ravdess_pooling_layer.yaml --gpus 0,1 output_dir=runs/sweeps/pl
    ser sweep sweeps/ravdess_bayes.yaml --count 20 --workers 2 data.root=/data/ravdess

- Trials are proposed by wandb's open-source sweep logic (`sweeps.next_run`: grid, random, bayes) from the
  same YAML that `wandb sweep` takes. Each trial is the YAML's `command` expanded exactly as `wandb agent`
  expands it (`${env}`, `${program}`, `${args_no_hyphens}`, ...), run as a subprocess (never through a shell),
  with the extra `key=value` overrides given here and `output_dir=<sweep dir>/<trial name>` appended.
  `ser` is run with this Python (`python -m ser_lightning.cli`), so the same environment is used.
- Workers: one per GPU (`CUDA_VISIBLE_DEVICES` set per worker) or `--workers W` (several per GPU, or on CPU).
  Trials share the feature cache (`cache.dir`, lock-safe).
- State: `<sweep dir>/sweep_state.json` (written atomically after every change) records every trial's
  parameters, command, status (running / finished / failed / interrupted), metric and, for a failed trial, the
  tail of its log (the traceback). Each trial's log is `<sweep dir>/<trial>/trial.log`.
- Resume: run the same command again. Finished (and failed, unless --retry-failed) trials are kept; trials
  that were running when the controller stopped run again and resume themselves (train / cv are resumable).
- The objective is the YAML's `metric`, read from the trial's outputs under the name its W&B run logs:
  `cv/<key>_mean` from summary.json for `ser cv` trials, `test/...` / `val/ua_best` from results.json for
  `ser train` trials (tracking.cv_metrics / tracking.trial_metrics define both).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ser_lightning.config import ConfigError
from ser_lightning.utils.io import atomic_write_json, atomic_write_text, read_json

STATE = "sweep_state.json"
LEADERBOARD = "leaderboard.md"
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # wandb agent's default
_ENVVAR = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")
ERROR_TAIL_LINES = 60
MAX_INITIAL_FAILURES = 5  # like `wandb agent`: when the first 5 trials of a run all fail, stop (a broken setup)
SERVER_KEYS = ("run_cap",)  # W&B server sweep keys missing from the sweeps 0.2 JSON schema


class SweepError(RuntimeError):
    """The sweep cannot run (folder busy, folder of another sweep)."""


# ---------------------------------------------------------------------------------------------- the YAML
def load_sweep_config(path: Path | str) -> Dict[str, Any]:
    """Read and validate a W&B sweep YAML (the `sweeps` package's JSON schema + what ser needs)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    config = yaml.safe_load(path.read_text())
    problems = validate_sweep_config(config)
    if problems:
        raise ConfigError(f"{path}: invalid sweep config:\n  " + "\n  ".join(problems))
    return config


def validate_sweep_config(config: Any) -> List[str]:
    """Problems of a sweep config (empty list = valid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sweeps import schema_violations_from_proposed_config

    if not isinstance(config, dict):
        return ["a sweep config is a mapping (method, metric, parameters, command, ...)"]
    try:  # keys the W&B server knows but sweeps 0.2's schema predates are checked here instead
        problems = list(schema_violations_from_proposed_config({k: v for k, v in config.items() if k not in SERVER_KEYS}))
    except ValueError as e:
        return [str(e)]
    cap = config.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        problems.append(f"run_cap must be a positive integer (got {cap!r})")
    if config.get("method") not in ("grid", "random", "bayes"):
        problems.append(f"method must be grid, random or bayes (got {config.get('method')!r})")
    if not isinstance(config.get("metric"), dict) or "name" not in config["metric"]:
        problems.append("a metric (name, goal) is needed to rank trials")
    if not isinstance(config.get("parameters"), dict) or not config["parameters"]:
        problems.append("parameters must list at least one parameter")
    command = [str(c) for c in (config.get("command") or DEFAULT_COMMAND)]
    if not {"${args_no_hyphens}", "${args}"} & set(command):
        problems.append("command must pass the parameters with ${args_no_hyphens} (ser takes key=value overrides)")
    if "${args_json_file}" in command:
        problems.append("${args_json_file} is not supported by ser (use ${args_no_hyphens})")
    if "${program}" in command and not config.get("program"):
        problems.append("command uses ${program} but the config has no program")
    return problems


def _py(value: Any) -> Any:
    """numpy scalars / arrays from the sweeps package -> plain Python (OmegaConf rejects numpy types)."""
    if isinstance(value, dict):
        return {k: _py(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_py(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def varying_keys(config: Mapping[str, Any]) -> List[str]:
    """Parameters the sweep varies (everything but `value:` constants), sorted."""
    return sorted(k for k, spec in config["parameters"].items() if not (isinstance(spec, dict) and "value" in spec))


# ---------------------------------------------------------------------------------------------- commands
def agent_args(params: Mapping[str, Any]) -> Dict[str, List[str]]:
    """The argument formats `wandb agent` builds from a trial's parameters (same formatting: `f"{k}={v}"`)."""
    flags, no_hyphens, no_booleans, no_equals = [], [], [], []
    for key, value in params.items():
        flag = f"{key}={value}"
        flags.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{key}", str(value)]
        if isinstance(value, bool):
            if value:
                no_booleans.append("--" + key)
        else:
            no_booleans.append("--" + flag)
    return {
        "args": flags,
        "args_no_equals": no_equals,
        "args_no_hyphens": no_hyphens,
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(dict(params))],
        "args_append_hydra": ["+" + f for f in no_hyphens],
        "args_override_hydra": ["++" + f for f in no_hyphens],
    }


def agent_command(config: Mapping[str, Any], params: Mapping[str, Any], env: Optional[Mapping[str, str]] = None) -> List[str]:
    """The command line `wandb agent` would start for these parameters (POSIX)."""
    env = os.environ if env is None else env
    command = []
    for chunk in config.get("command") or DEFAULT_COMMAND:
        chunk = str(chunk)
        for m in list(_ENVVAR.finditer(chunk))[::-1]:
            chunk = chunk[: m.start()] + env.get(m.group(1), m.group(1)) + chunk[m.end() :]
        command.append(chunk)
    sweep_vars: Dict[str, List[str]] = dict(agent_args(params))
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [str(config["program"])] if config.get("program") is not None else []
    sweep_vars["env"] = ["/usr/bin/env"]
    out: List[str] = []
    for c in command:
        if c.startswith("${") and c.endswith("}"):
            out += sweep_vars.get(c[2:-1]) or []
        else:
            out.append(c)
    return out


def ser_overrides(argv: Sequence[str]) -> Optional[List[str]]:
    """For an agent command that runs `ser <subcommand> ...`: the overrides that reach `compose()`
    (drops `${env}`, the program and the subcommand). None when the command does not run ser."""
    argv = list(argv)
    if argv and argv[0] == "/usr/bin/env":
        argv = argv[1:]
    if len(argv) >= 2 and Path(argv[0]).name == "ser":
        return argv[2:]
    if len(argv) >= 4 and argv[1] == "-m" and argv[2] == "ser_lightning.cli":
        return argv[4:]
    return None


def local_argv(config: Mapping[str, Any], params: Mapping[str, Any], trial_dir: Path, overrides: Sequence[str]) -> List[str]:
    """The trial's command for the local controller: the agent's command, with `ser` run by this Python,
    the YAML's own output_dir replaced by the trial folder, and the sweep's extra overrides appended."""
    argv = agent_command(config, params)
    if argv and argv[0] == "/usr/bin/env":
        argv = argv[1:]
    is_ser = bool(argv) and Path(argv[0]).name == "ser"
    if is_ser:
        argv = [sys.executable, "-m", "ser_lightning.cli"] + argv[1:]
    elif argv and argv[0] in ("python", "python3"):
        argv = [sys.executable] + argv[1:]
    argv = [a for a in argv if not a.startswith("output_dir=")]
    extra = ["trainer.enable_progress_bar=false"] if is_ser else []  # progress bars only clutter trial logs
    return argv + extra + list(overrides) + [f"output_dir={trial_dir}"]


def trial_name(params: Mapping[str, Any], varying: Sequence[str], exact: bool = True) -> str:
    """Deterministic folder name from the varying parameters, e.g. `layer-3_pooling-qkv`. A short hash of all
    parameters is appended when the readable part is lossy (floats of random/bayes, odd characters, length)."""
    if not varying:
        return "trial-" + _params_hash(params)
    shorts = [k.split(".")[-1] for k in varying]
    keys = shorts if len(set(shorts)) == len(shorts) else [k.replace(".", "_") for k in varying]
    parts = []
    for key, full in zip(keys, varying):
        value = params.get(full)
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, float) and not exact:
            text = f"{value:.3g}"
        elif isinstance(value, (list, tuple)):
            text = "-".join(map(str, value))
        else:
            text = str(value)
        parts.append(f"{key}-{text}")
    raw = "_".join(parts)
    safe = re.sub(r"[^A-Za-z0-9._+-]", "-", raw)
    lossy = (not exact and any(isinstance(params.get(k), float) for k in varying)) or safe != raw or len(safe) > 80
    return f"{safe[:80]}-{_params_hash(params)}" if lossy else safe


def _params_hash(params: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(dict(params), sort_keys=True, default=str).encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------- outputs
def outputs_metrics(trial_dir: Path) -> Dict[str, float]:
    """The metrics a finished trial wrote, under the names its W&B run logs them."""
    from ser_lightning.tracking import cv_metrics, trial_metrics

    summary = read_json(Path(trial_dir) / "summary.json")
    if isinstance(summary, dict):
        return cv_metrics(summary)
    results = read_json(Path(trial_dir) / "results.json")
    if isinstance(results, dict):
        return trial_metrics(results)
    return {}


def std_key(metric: str) -> Optional[str]:
    return metric[: -len("_mean")] + "_std" if metric.endswith("_mean") else None


def _tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    """The end of a trial log; from the last traceback on when there is one."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    rows = text.splitlines()
    start = max((i for i, r in enumerate(rows) if r.startswith("Traceback (most recent call last)")), default=None)
    if start is not None and len(rows) - start <= 4 * lines:
        return "\n".join(rows[start:])
    return "\n".join(rows[-lines:])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
                          "overrides": self.overrides, "created_at": _now(), "trials": []}  # fmt: skip
            return
        if state.get("identity") != self.identity():
            raise SweepError(
                f"{self.dir} holds another sweep (different YAML parameters/metric/command or overrides: identity "
                f"{state.get('identity')} != {self.identity()}); choose another output_dir (nothing was changed)"
            )
        self.state = state

    def save(self) -> None:
        self.state["updated_at"] = _now()
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

        states = {"finished": RunState.finished, "failed": RunState.failed}
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
        log_path = trial_dir / "trial.log"
        log = open(log_path, "ab")
        trial["attempts"] = int(trial.get("attempts", 0)) + 1
        log.write(f"==== {_now()} attempt {trial['attempts']}: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        trial.update({"status": "running", "argv": argv, "device": device if device is not None else "cpu",
                      "worker": slot, "started_at": _now(), "log": str(log_path.relative_to(self.dir)),
                      "returncode": None, "error": None, "metric": None, "metric_std": None, "metrics": None})  # fmt: skip
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

    def _record(self, trial: Dict[str, Any], rc: int, wall_s: float) -> None:
        trial_dir = self.dir / trial["name"]
        trial.update({"returncode": rc, "ended_at": _now(), "wall_s": round(wall_s, 1)})
        if self._stopping and rc != 0:
            trial["status"] = "interrupted"
            print(f"[ser sweep] stopped {trial['name']} (exit {rc}); it resumes when the sweep runs again", flush=True)
        elif rc != 0:
            trial.update({"status": "failed", "error": _tail(trial_dir / "trial.log")})
            last = (trial["error"] or "").strip().splitlines()[-1:] or ["(no output)"]
            print(f"[ser sweep] FAILED {trial['name']} (exit {rc}): {last[0][:200]}  -> {trial_dir / 'trial.log'}", flush=True)
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
                print(f"[ser sweep] done   {trial['name']}: {self.metric} = {_fmt(trial['metric'], trial.get('metric_std'))} "
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
            try:
                os.killpg(info["proc"].pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + 60
        try:
            while self.active and time.time() < deadline:
                self._reap()
                time.sleep(0.2)
        except KeyboardInterrupt:  # a second Ctrl-C: do not wait for the trials to save
            pass
        for name, info in list(self.active.items()):
            try:
                os.killpg(info["proc"].pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            info["proc"].wait()
        self._reap()

    def run(self) -> int:
        lock = self._lock()
        try:
            self._load_state()
            self.save()
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
        done = [t for t in self.trials if t["status"] == "finished" and t.get("metric") is not None]
        return sorted(done, key=lambda t: t["metric"], reverse=self.goal == "maximize")

    def leaderboard_markdown(self) -> str:
        ranked = self.ranked()
        others = [t for t in self.trials if t not in ranked]
        counts = {s: sum(t["status"] == s for t in self.trials) for s in ("finished", "failed", "running", "pending", "interrupted")}
        lines = [
            f"# Sweep {self.state.get('source') or self.dir.name}",
            "",
            f"{len(self.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            + f". Objective: `{self.metric}` ({self.goal}), mean ± std over folds where the trial is a CV.",
            "",
            "| rank | trial | " + " | ".join(self.varying) + f" | {self.metric} |",
            "|---|---|" + "---|" * len(self.varying) + "---|",
        ]
        for i, t in enumerate(ranked, 1):
            cells = [str(t["params"].get(k)) for k in self.varying]
            lines.append(f"| {i} | {t['name']} | " + " | ".join(cells) + f" | {_fmt(t['metric'], t.get('metric_std'))} |")
        for t in others:
            cells = [str(t["params"].get(k)) for k in self.varying]
            lines.append(f"| - | {t['name']} | " + " | ".join(cells) + f" | {t['status']} |")
        failed = [t for t in self.trials if t["status"] == "failed"]
        if failed:
            lines += ["", "## Failed trials", ""]
            for t in failed:
                last = (t.get("error") or "").strip().splitlines()[-1:] or ["?"]
                lines.append(f"- `{t['name']}` (exit {t.get('returncode')}): {last[0][:300]} — log: `{t.get('log')}`")
        return "\n".join(lines) + "\n"

    def remaining(self) -> Optional[int]:
        """Trials the sweep has not run yet (None: unbounded random / bayes search without run_cap)."""
        cap = self.config.get("run_cap")
        left = None if cap is None else int(cap) - len(self.trials)
        if self.config["method"] == "grid":
            size = 1
            for spec in self.config["parameters"].values():
                if isinstance(spec, dict) and "values" in spec:
                    size *= len(spec["values"])
                elif isinstance(spec, dict) and spec.get("distribution") == "int_uniform":
                    size *= int(spec["max"]) - int(spec["min"]) + 1
            left = size - len(self.trials) if left is None else min(left, size - len(self.trials))
        return None if left is None else max(0, left)

    def print_leaderboard(self) -> None:
        text = self.leaderboard_markdown()
        atomic_write_text(self.dir / LEADERBOARD, text)
        ranked = self.ranked()
        width = max([len(t["name"]) for t in self.trials] + [5])
        print(f"\n[ser sweep] leaderboard: {self.metric} ({self.goal}) -> {self.dir / LEADERBOARD}")
        print(f"  {'rank':>4}  {'trial':<{width}}  {self.metric}")
        for i, t in enumerate(ranked, 1):
            print(f"  {i:>4}  {t['name']:<{width}}  {_fmt(t['metric'], t.get('metric_std'))}")
        for t in self.trials:
            if t not in ranked:
                print(f"  {'-':>4}  {t['name']:<{width}}  {t['status']}")
        unfinished = sum(t["status"] in ("running", "interrupted", "pending") for t in self.trials)
        left = self.remaining()
        if unfinished == 0 and left == 0:
            more = "sweep complete"
        else:
            todo = [f"{unfinished} unfinished"] if unfinished else []
            todo += [f"{left} not started"] if left else (["no limit (random/bayes): use --count"] if left is None else [])
            more = f"{', '.join(todo)}: run the same command again to continue"
        print(f"[ser sweep] {len(ranked)}/{len(self.trials)} trials finished; {more}; state: {self.dir / STATE}", flush=True)


def _fmt(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f} ± {std:.4f}" if std is not None else f"{value:.4f}"


def _raise_interrupt(signum, frame):  # SIGTERM to the controller: stop like Ctrl-C
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------- CLI
def sweep_dir_for(yaml_path: Path, overrides: Sequence[str]) -> tuple:
    """(sweep folder, overrides for the trials): `output_dir=` names the sweep folder (default
    runs/sweeps/<yaml stem>)."""
    rest, out = [], None
    for item in overrides:
        if item.lstrip("-").startswith("output_dir="):
            out = item.split("=", 1)[1]
        else:
            rest.append(item)
    return Path(out or Path("runs") / "sweeps" / Path(yaml_path).stem), rest


def _options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=d(None), help="run at most N trials now (default: until the grid is done / run_cap)")
    parser.add_argument("--workers", type=int, default=d(None), help="parallel trials (default: one per GPU, 1 on CPU)")
    parser.add_argument("--gpus", default=d("auto"), help="GPUs for the workers: auto (all visible), none, or 0,1")
    parser.add_argument("--gpus-per-trial", type=int, default=d(1), help="GPUs per trial, for trainer.devices=K trainer.strategy=ddp trials")
    parser.add_argument("--retry-failed", action="store_true", default=d(False), help="run failed trials again")


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser(
        "sweep", help="run a W&B sweep YAML locally (grid/random/bayes, no server): parallel trials, resumable",
        description="Run a W&B sweep YAML with a local controller. Extra key=value overrides go to every trial; "
        "output_dir=DIR names the sweep folder (default runs/sweeps/<yaml name>).",
    )  # fmt: skip
    p.add_argument("sweep_yaml", help="a W&B sweep YAML (see sweeps/)")
    _options(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options and key=value overrides for every trial")

    def run(args: argparse.Namespace) -> int:
        inner = argparse.ArgumentParser(prog="ser sweep", add_help=False)
        _options(inner, defaults=False)
        inner.add_argument("overrides", nargs="*")
        extra = inner.parse_intermixed_args(args.rest)
        for key, value in vars(extra).items():
            if key != "overrides":
                setattr(args, key, value)
        config = load_sweep_config(args.sweep_yaml)
        sweep_dir, overrides = sweep_dir_for(Path(args.sweep_yaml), extra.overrides)
        if args.count is None and config["method"] != "grid" and config.get("run_cap") is None:
            raise ConfigError(f"{config['method']} search never ends by itself: pass --count N (or set run_cap in the YAML)")
        controller = LocalSweep(config, sweep_dir, overrides, workers=args.workers, gpus=args.gpus, count=args.count,
                                retry_failed=args.retry_failed, source=str(args.sweep_yaml),
                                gpus_per_trial=args.gpus_per_trial)  # fmt: skip
        try:
            return controller.run()
        except SweepError as e:
            print(f"ser sweep: {e}", file=sys.stderr)
            return 1

    return run
