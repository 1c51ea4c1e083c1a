"""`early_terminate: {type: hyperband, ...}` in sweep YAMLs (ser_lightning/run/sweep/hyperband.py).

1. Validation: the W&B forms are accepted (and stay valid for the `sweeps` package, i.e. for `wandb sweep`),
   malformed sections are refused with a message that lists what is allowed.
2. The brackets, the per-epoch value of a trial and the cut, as pure functions on made-up histories (and the cut
   and brackets checked against W&B's own `hyperband_stop_runs`).
3. The local controller stops a hopeless trial: fake trial processes that write history.jsonl (one worker and
   three parallel workers), a controller stopped between the decision and the trial's end, and a real `ser cv`
   trial (random tiny encoder, tiny RAVDESS subset) terminated cleanly at its first bracket.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from ser_lightning.config import ConfigError
from ser_lightning.run import sweep as S
from ser_lightning.run.sweep import hyperband as H

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.filterwarnings("ignore:Valid config keys have changed in V2"),  # sweeps 0.2 uses pydantic v1 names
    pytest.mark.filterwarnings("ignore:Support for class-based `config` is deprecated"),
]


def _base(**et: Any) -> Dict[str, Any]:
    config = S.load_sweep_config(ROOT / "sweeps" / "ravdess_pooling_layer.yaml")
    return dict(config, early_terminate=et) if et else config


# ---------------------------------------------------------------------------------------------- 1. validation
@pytest.mark.parametrize("et", [
    {"type": "hyperband", "min_iter": 3, "eta": 3},
    {"type": "hyperband", "min_iter": 1},  # eta defaults to 3
    {"type": "hyperband", "min_iter": 2, "eta": 2.5, "s": 2},  # s is ignored in the min_iter form (as by W&B)
    {"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3},
], ids=["min_iter+eta", "min_iter", "float-eta", "max_iter+s"])  # fmt: skip
def test_hyperband_sections_are_accepted_here_and_by_wandb(et):
    import sweeps
    from sweeps.hyperband_stopping import hyperband_stop_runs

    config = _base(**et)
    assert S.validate_sweep_config(config) == []
    sweeps.SweepConfig(config)  # the sweeps package's schema: what `wandb sweep` checks
    hyperband_stop_runs([], config)  # and W&B's own hyperband takes it (bands >= 1)
    assert H.Hyperband(config).brackets[0] >= 1


def test_the_hyperband_yaml_is_valid_and_loaded(tmp_path):
    config = S.load_sweep_config(ROOT / "sweeps" / "ravdess_hyperband.yaml")
    assert config["early_terminate"] == {"type": "hyperband", "min_iter": 3, "eta": 3}
    hb = H.Hyperband(config)
    assert hb.brackets[:3] == [3, 9, 27] and hb.eta == 3 and (hb.key, hb.maximize) == ("val/ua", True)
    assert S.LocalSweep(config, tmp_path / "s", gpus="none", count=0).hyperband is not None
    assert S.LocalSweep(_base(), tmp_path / "t", gpus="none", count=0).hyperband is None


@pytest.mark.parametrize("et, says", [
    ({"type": "asha", "min_iter": 3}, "type 'asha' is not supported"),
    ({"type": "hyperband", "min_iter": 3, "eta": 1.5}, "eta must be a number >= 2 (got 1.5)"),
    ({"type": "hyperband", "min_iter": 3, "eta": 1}, "eta must be a number >= 2 (got 1)"),
    ({"type": "hyperband", "min_iter": 0}, "min_iter must be an integer >= 1 (got 0)"),
    ({"type": "hyperband", "min_iter": 2.5}, "min_iter must be an integer >= 1 (got 2.5)"),
    ({"type": "hyperband", "eta": 3}, "needs min_iter (or max_iter and s)"),
    ({"type": "hyperband", "max_iter": 27}, "max_iter needs s"),
    ({"type": "hyperband", "max_iter": 2, "s": 1, "eta": 3}, "gives no bracket"),
    ({"type": "hyperband", "min_iter": 3, "patience": 2}, "unknown key(s) patience"),
    ("hyperband", "must be a mapping"),
], ids=["type", "eta<2", "eta=1", "min_iter<1", "float-min_iter", "no-iter", "max_iter-no-s", "no-bracket",
        "unknown-key", "not-a-mapping"])  # fmt: skip
def test_malformed_early_terminate_is_refused_with_what_is_allowed(tmp_path, et, says):
    config = dict(_base(), early_terminate=et)
    problems = S.validate_sweep_config(config)
    assert any(says in p for p in problems), problems
    assert all(H.ALLOWED in p for p in problems if "early_terminate" in p)
    assert "type: hyperband, min_iter: integer >= 1, eta: number >= 2" in H.ALLOWED
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="invalid sweep config") as e:
        S.load_sweep_config(path)
    assert says in str(e.value) and "allowed: early_terminate" in str(e.value)


# ---------------------------------------------------------------------------------------------- 2. pure logic
def _history(values: List[float], key: str = "val/ua") -> List[Dict[str, Any]]:
    return [{"epoch": i, key: v, "train/loss": 1.0} for i, v in enumerate(values)]


def test_brackets_are_wandbs_bands():
    import sweeps
    from sweeps.hyperband_stopping import hyperband_stop_runs

    assert H.brackets({"type": "hyperband", "min_iter": 3, "eta": 3})[:4] == [3, 9, 27, 81]
    assert H.brackets({"type": "hyperband", "min_iter": 1})[:4] == [1, 3, 9, 27]  # eta 3 by default
    assert H.brackets({"type": "hyperband", "min_iter": 2, "eta": 2.5})[:3] == [2, 5, 12]
    assert H.brackets({"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3}) == [3, 9]
    assert H.brackets({"type": "hyperband", "max_iter": 81, "s": 9, "eta": 3}) == [1, 3, 9, 27]
    assert H.brackets({"type": "hyperband", "min_iter": 50000}) == [50000]  # always its first bracket
    for et in ({"type": "hyperband", "min_iter": 2, "eta": 2}, {"type": "hyperband", "max_iter": 100, "s": 3, "eta": 3}):
        run = sweeps.SweepRun(name="r", state=sweeps.RunState.running, sampledHistory=[{"m": 1.0}])
        config = {"method": "grid", "metric": {"name": "m", "goal": "maximize"}, "early_terminate": et,
                  "parameters": {"a": {"values": [1]}}}  # fmt: skip
        hyperband_stop_runs([run], config)
        bands = [b for b in run.early_terminate_info["bands"] if b <= 10**4]
        assert H.brackets(et) == bands


def test_the_epoch_metric_follows_the_sweep_metric():
    assert H.epoch_metric("cv/val/ua_best_mean", "maximize") == ("val/ua", True)
    assert H.epoch_metric("val/ua_best", "maximize") == ("val/ua", True)  # a `ser train` trial
    assert H.epoch_metric("cv/val/loss_mean", "minimize") == ("val/loss", False)
    assert H.epoch_metric("cv/test/ua_mean", "maximize") == ("val/ua", True)  # test metrics: the default monitor
    assert H.epoch_metric("cv/test/ua_std", "minimize") == ("val/ua", True)


def test_a_runs_value_at_a_bracket_is_its_best_so_far():
    h = _history([0.2, 0.5, 0.4, 0.45])
    assert H.best_at(h, "val/ua", 1, True) == 0.2
    assert H.best_at(h, "val/ua", 3, True) == 0.5  # the best of epochs 1..3, not epoch 3's 0.4
    assert H.best_at(h, "val/ua", 5, True) is None  # not reached yet
    assert H.best_at(h, "val/loss", 1, True) is None  # no such key
    loss = _history([2.0, 1.5, 1.7], key="val/loss")
    assert H.best_at(loss, "val/loss", 3, False) == 1.5
    # a trial's value: the mean over its runs (folds, members) that reached the bracket
    fold1, fold2 = _history([0.2, 0.6, 0.5]), _history([0.4])
    assert H.bracket_value([fold1, fold2], "val/ua", 1, True) == pytest.approx(0.3)
    assert H.bracket_value([fold1, fold2], "val/ua", 3, True) == pytest.approx(0.6)  # fold 2 is not there yet
    assert H.bracket_value([fold2, []], "val/ua", 3, True) is None


def test_history_files_below_a_trial_folder(tmp_path):
    (tmp_path / "fold_1").mkdir()
    (tmp_path / "fold_2" / "member_1").mkdir(parents=True)
    (tmp_path / "fold_1" / H.HISTORY).write_text("".join(json.dumps(e) + "\n" for e in _history([0.1, 0.3])))
    # a torn last line (a kill mid-write) and foreign lines are skipped
    (tmp_path / "fold_2" / "member_1" / H.HISTORY).write_text(json.dumps({"epoch": 0, "val/ua": 0.5}) + '\n[1]\n{"epo')
    assert H.trial_histories(tmp_path) == [_history([0.1, 0.3]), [{"epoch": 0, "val/ua": 0.5}]]
    from ser_lightning.run.callbacks import HISTORY

    assert H.HISTORY == HISTORY  # the file EpochHistory writes


def test_the_cut_is_wandbs_threshold_and_needs_eta_trials():
    import sweeps
    from sweeps.hyperband_stopping import hyperband_stop_runs

    assert H.bracket_cut([0.9, 0.8], 3, True) is None  # fewer than eta trials at the bracket: no cut
    assert H.bracket_cut([0.9, 0.8, 0.1], 3, True) == 0.8  # index int(3/3) = 1 of the best-first order
    assert H.bracket_cut([0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], 3, True) == 0.6  # int(9/3) = 3
    assert H.bracket_cut([1.0, 2.0, 3.0], 3, False) == 2.0  # minimise: best first is smallest
    assert H.worse(0.1, 0.8, True) and not H.worse(0.8, 0.8, True) and H.worse(2.5, 2.0, False)
    # W&B's own threshold on the same values (its band b reads history[b]: epoch b+1 here; histories that only
    # rise make W&B's raw value and the best-so-far used here the same)
    rising = {"a": [0.1, 0.5, 0.6, 0.9], "b": [0.1, 0.3, 0.4, 0.5], "c": [0.2, 0.2, 0.7, 0.8], "d": [0.0, 0.1, 0.1, 0.2]}
    runs = [sweeps.SweepRun(name=n, state=sweeps.RunState.finished, sampledHistory=[{"m": v} for v in h])
            for n, h in rising.items()]  # (sampledHistory: the alias; pydantic 2 ignores sweeps' `history=`)
    config = {"method": "grid", "metric": {"name": "m", "goal": "maximize"}, "parameters": {"a": {"values": [1]}},
              "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2}}  # fmt: skip
    probe = sweeps.SweepRun(name="p", state=sweeps.RunState.running, sampledHistory=[{"m": 0.0}])
    hyperband_stop_runs(runs + [probe], config)
    for band, threshold in zip(probe.early_terminate_info["bands"][:2], probe.early_terminate_info["thresholds"]):
        values = [H.bracket_value([_history(h)], "val/ua", band + 1, True) for h in rising.values()]
        assert H.bracket_cut(values, 2, True) == pytest.approx(-threshold)  # W&B negates maximised metrics


def _trial(name: str, status: str = "finished", **values: float) -> Dict[str, Any]:
    return {"name": name, "status": status, "hyperband": {k.lstrip("e"): v for k, v in values.items()}}


def test_judging_a_trial_at_its_last_bracket():
    config = {"metric": {"name": "cv/val/ua_best_mean", "goal": "maximize"},
              "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3}}  # fmt: skip
    hb = H.Hyperband(config)
    a, b = _trial("a", e1=0.9, e3=0.95), _trial("b", e1=0.8, e3=0.85)
    c = _trial("c", "running", e1=0.1)
    assert hb.judge(c, [c]) is None and hb.judge(c, [a, c]) is None  # fewer than eta trials reached epoch 1
    decision = hb.judge(c, [a, b, c])
    assert decision is not None and decision["bracket_epoch"] == 1 and decision["cut"] == 0.8
    assert decision["value"] == 0.1 and decision["trials_at_bracket"] == 3 and decision["metric"] == "val/ua"
    said = "after 1 epoch its best val/ua was 0.1000, below the cut 0.8000 (the value ranked 2 of the 3 trials"
    assert said in decision["reason"]
    # at least as good as the cut: goes on; early-stopped and failed trials' values count as well
    assert hb.judge(_trial("d", "running", e1=0.8), [a, b, _trial("d", "running", e1=0.8)]) is None
    e = _trial("e", "running", e1=0.85)
    assert hb.judge(e, [a, _trial("x", H.EARLY_STOPPED, e1=0.9), _trial("y", "failed", e1=0.9), e]) is not None
    # judged at its LAST bracket: good at epoch 1, behind at epoch 3 (where a and b are)
    f = _trial("f", "running", e1=0.95, e3=0.5)
    later = hb.judge(f, [a, b, f])
    assert later is not None and later["bracket_epoch"] == 3 and later["cut"] == 0.85
    # minimised metrics: above the cut is worse
    low = H.Hyperband(dict(config, metric={"name": "val/loss", "goal": "minimize"}))
    g = _trial("g", "running", e1=3.0)
    assert low.judge(g, [_trial("a", e1=1.0), _trial("b", e1=2.0), g])["cut"] == 2.0
    assert low.judge(g, [_trial("a", e1=4.0), _trial("b", e1=5.0), g]) is None


def test_observe_records_each_bracket_once(tmp_path):
    config = {"metric": {"name": "cv/val/ua_best_mean", "goal": "maximize"},
              "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2}}  # fmt: skip
    hb = H.Hyperband(config)
    trial: Dict[str, Any] = {"name": "t", "status": "running"}
    (tmp_path / "fold_1").mkdir()
    path = tmp_path / "fold_1" / H.HISTORY
    assert hb.observe(trial, tmp_path) == [] and trial["hyperband"] == {}
    path.write_text("".join(json.dumps(e) + "\n" for e in _history([0.3, 0.2])))
    assert hb.observe(trial, tmp_path) == [1, 2] and trial["hyperband"] == {"1": 0.3, "2": 0.3}
    # fold 2 reaching epoch 1 later does not change the recorded value (first sight is kept)
    (tmp_path / "fold_2").mkdir()
    (tmp_path / "fold_2" / H.HISTORY).write_text(json.dumps({"epoch": 0, "val/ua": 0.9}) + "\n")
    path.write_text("".join(json.dumps(e) + "\n" for e in _history([0.3, 0.2, 0.4, 0.5])))
    assert hb.observe(trial, tmp_path) == [4] and trial["hyperband"] == {"1": 0.3, "2": 0.3, "4": 0.5}


# ---------------------------------------------------------------------------------------------- 3. the controller
FAKE_TRIAL = '''
"""A stand-in `ser cv` trial: fold_1/history.jsonl gets val/ua = x/10 * epoch/epochs per epoch; a hopeless
trial (x < 5) waits after its first epoch until it is stopped. Like ser it exits 143 on SIGTERM, and like
`ser cv` with cv.workers it has a child process (in its process group)."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
out = Path(args["output_dir"])
run = out / "fold_1"
run.mkdir(parents=True, exist_ok=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
(out / "child.pid").write_text(str(child.pid))
x, epochs = float(args["x"]), int(args["epochs"])
history = []
for epoch in range(epochs):
    history.append({"epoch": epoch, "val/ua": x / 10 * (epoch + 1) / epochs})
    (run / "history.tmp").write_text("".join(json.dumps(e) + "\\n" for e in history))
    os.replace(run / "history.tmp", run / "history.jsonl")
    if x < 5 and epoch == 0:
        deadline = time.time() + 120  # the controller's SIGTERM ends this wait (the test fails otherwise)
        while time.time() < deadline:
            time.sleep(0.02)
child.terminate()
results = {"test/ua": x / 10, "best_val": max(e["val/ua"] for e in history), "monitor": "val/ua", "n_test": 10}
(out / "results.json").write_text(json.dumps(results))
'''


def _fake_sweep(tmp_path: Path, values: List[int]) -> Dict[str, Any]:
    script = tmp_path / "fake_cv.py"
    script.write_text(textwrap.dedent(FAKE_TRIAL))
    return {"method": "grid", "program": str(script), "metric": {"name": "val/ua_best", "goal": "maximize"},
            "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
            "parameters": {"x": {"values": values}, "epochs": {"value": 3}},
            "command": ["${env}", "python", "${program}", "${args_no_hyphens}"]}  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _check_stopped(sweep_dir: Path, state: Dict[str, Any], name: str, cut: float, n: int = 3) -> Dict[str, Any]:
    trials = {t["name"]: t for t in state["trials"]}
    t = trials[name]
    assert t["status"] == S.EARLY_STOPPED and t["metric"] is None and t["error"] is None
    assert t["returncode"] == 143  # stopped by SIGTERM, exited the way ser does
    marker = json.loads((sweep_dir / name / S.MARKER).read_text())
    assert marker["bracket_epoch"] == 1 and marker["cut"] == pytest.approx(cut) and marker["trials_at_bracket"] == n
    assert marker["status"] == S.EARLY_STOPPED and marker["trial"] == name and "below the cut" in marker["reason"]
    assert marker["value"] == pytest.approx(t["hyperband"]["1"]) and marker["value"] < marker["cut"]
    board = (sweep_dir / S.LEADERBOARD).read_text()
    assert f"| - | {name} |" in board and "early_stopped (epoch 1:" in board and "## Early-stopped trials" in board
    assert "## Failed trials" not in board and "early_stopped" in board.splitlines()[2]
    return marker


def test_one_worker_polls_the_running_trial_and_stops_the_hopeless_one(tmp_path, capsys):
    config = _fake_sweep(tmp_path, [9, 8, 1])  # one after another: x-1 comes third, when 3 trials can be compared
    assert S.validate_sweep_config(config) == []
    sweep_dir = tmp_path / "s"
    assert S.LocalSweep(config, sweep_dir, gpus="none", workers=1, poll_s=0.05).run() == 0
    state = json.loads((sweep_dir / S.STATE).read_text())
    trials = {t["name"]: t for t in state["trials"]}
    assert [trials[n]["status"] for n in ("x-9", "x-8")] == ["finished", "finished"]
    assert trials["x-9"]["hyperband"] == {"1": pytest.approx(0.3), "3": pytest.approx(0.9)}
    assert trials["x-8"]["metric"] == pytest.approx(0.8)
    _check_stopped(sweep_dir, state, "x-1", cut=8 / 30)
    assert not _alive(int((sweep_dir / "x-1" / "child.pid").read_text()))  # the whole process group was stopped
    assert not (sweep_dir / "x-1" / "results.json").exists()
    out = capsys.readouterr().out
    assert "stop   x-1: hyperband: after 1 epoch its best val/ua was 0.0333, below the cut 0.2667" in out
    assert "(1 early-stopped by hyperband)" in out
    # run again: nothing to do; the early-stopped trial is neither resumed nor retried
    assert S.LocalSweep(config, sweep_dir, gpus="none", workers=1, poll_s=0.05, retry_failed=True).run() == 0
    again = {t["name"]: (t["status"], t["attempts"]) for t in json.loads((sweep_dir / S.STATE).read_text())["trials"]}
    assert again == {"x-9": ("finished", 1), "x-8": ("finished", 1), "x-1": (S.EARLY_STOPPED, 1)}
    assert "sweep complete" in capsys.readouterr().out


def test_parallel_workers_cut_a_trial_once_enough_trials_reached_its_bracket(tmp_path):
    # x-1 reaches epoch 1 at about the time the others do (often first, with fewer than eta values there): it
    # is judged again at every poll and stopped once the three values are in
    config = _fake_sweep(tmp_path, [1, 9, 8])
    sweep_dir = tmp_path / "p"
    assert S.LocalSweep(config, sweep_dir, gpus="none", workers=3, poll_s=0.05).run() == 0
    state = json.loads((sweep_dir / S.STATE).read_text())
    _check_stopped(sweep_dir, state, "x-1", cut=8 / 30)
    assert sorted(t["status"] for t in state["trials"]) == [S.EARLY_STOPPED, "finished", "finished"]


def test_a_decision_survives_a_controller_stopped_before_the_trial_ended(tmp_path):
    config = _fake_sweep(tmp_path, [9, 8, 1])
    sweep_dir = tmp_path / "r"
    ctl = S.LocalSweep(config, sweep_dir, gpus="none", count=0)
    ctl._load_state()
    for _ in range(3):
        ctl.propose()
    decision = {"bracket_epoch": 1, "value": 0.03, "cut": 0.27, "trials_at_bracket": 3, "reason": "hyperband: ..."}
    for t, status in zip(ctl.trials, ("finished", "finished", "running")):
        t.update(status=status, metric=0.5 if status == "finished" else None, attempts=1)
    ctl.trials[2]["early_stopped"] = decision
    ctl.save()
    assert S.LocalSweep(config, sweep_dir, gpus="none", poll_s=0.05).run() == 0
    state = json.loads((sweep_dir / S.STATE).read_text())
    assert [(t["status"], t["attempts"]) for t in state["trials"]] == [("finished", 1), ("finished", 1), (S.EARLY_STOPPED, 1)]
    assert json.loads((sweep_dir / "x-1" / S.MARKER).read_text())["cut"] == 0.27


def test_a_real_cv_trial_is_stopped_cleanly_at_its_first_bracket(tmp_path, tmp_path_factory, ravdess_root, capsys):
    """A real `ser cv` trial with optim.lr=0 (it cannot learn) on the tiny RAVDESS subset with the random encoder:
    the two other grid points finished earlier (recorded in sweep_state.json as a resumed sweep has them, with
    their validation UA after epoch 1), so at its first epoch it is the third trial at the bracket and below the
    cut. It gets SIGTERM mid-training and exits 143 after saving; it is early_stopped, not failed."""
    shared = tmp_path_factory.getbasetemp() / "experiments-cache"  # the feature cache tests/test_sweep.py uses
    spec = {
        "name": "tiny-hyperband", "program": "ser", "method": "grid",
        "metric": {"name": "cv/val/ua_best_mean", "goal": "maximize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
        "parameters": {
            "optim.lr": {"values": [0.003, 0.001, 0.0]},
            "data": {"value": "ravdess"}, "model.encoder": {"value": "random:test"}, "model.layer": {"value": 2},
            "data.limit_per_class": {"value": 40}, "cv.folds": {"value": [1]}, "trainer.max_epochs": {"value": 30},
        },
        "command": ["${env}", "${program}", "cv", "${args_no_hyphens}"],
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    config = S.load_sweep_config(path)
    overrides = [f"data.root={ravdess_root}", "trainer.accelerator=cpu", "wandb.mode=disabled",
                 f"cache.dir={shared / 'features'}", f"data.table_cache_dir={shared / 'tables'}"]  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    ctl = S.LocalSweep(config, sweep_dir, overrides, gpus="none", count=0)
    ctl._load_state()
    for value in (0.95, 0.9):  # validation UAs no 8-class head on random features reaches after one epoch
        trial = ctl.propose()
        trial.update(status="finished", metric=value, attempts=1, hyperband={"1": value})
    ctl.save()
    sweep = S.LocalSweep(config, sweep_dir, overrides, gpus="none", workers=1, poll_s=0.1)
    assert sweep.run() == 0
    state = json.loads((sweep_dir / S.STATE).read_text())
    name = state["trials"][2]["name"]
    assert state["trials"][2]["params"]["optim.lr"] == 0.0
    marker = _check_stopped(sweep_dir, state, name, cut=0.9)
    assert marker["metric"] == "val/ua" and marker["sweep_metric"] == "cv/val/ua_best_mean"
    history = H.read_history(sweep_dir / name / "fold_1" / H.HISTORY)
    assert 1 <= len(history) < 30 and marker["value"] == pytest.approx(history[0]["val/ua"])
    assert not (sweep_dir / name / "summary.json").exists()
    log = (sweep_dir / name / "trial.log").read_text()
    assert "stopped by SIGTERM (exit 143)" in log and "Traceback" not in log
    assert state["trials"][2]["argv"][:4] == [sys.executable, "-m", "ser_lightning.cli", "cv"]
    assert os.path.isdir(sweep_dir / name / "fold_1" / "checkpoints")
