"""Sweep YAMLs (sweeps/*.yaml) and the local controller (`ser sweep`).

1. Every YAML is a valid W&B sweep config, and for every grid point (a sample for random / bayes) the command
   `wandb agent` would run is accepted by ser's config composition with the parameters landing where meant.
2. `ser sweep` end to end on a tiny 2x2 grid (random encoder, offline): parallel workers, a deliberately
   crashing trial recorded as failed, resume after an interruption, the leaderboard."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from omegaconf import OmegaConf

from ser_lightning.config import ConfigError, compose
from ser_lightning.run import sweep as S

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.filterwarnings("ignore:Valid config keys have changed in V2"),  # sweeps 0.2 uses pydantic v1 names
    pytest.mark.filterwarnings("ignore:Support for class-based `config` is deprecated"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),  # bayes GP fits on few points
]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def _shared(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "experiments-cache"


def wandb_agent_command(config: Dict[str, Any], params: Dict[str, Any]) -> List[str]:
    """What `wandb agent` (wandb/wandb_agent.py, Agent._command_run) runs, built with wandb's own helpers."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(config.get("command") or S.DEFAULT_COMMAND))
    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [config["program"]]
    sweep_vars["env"] = ["/usr/bin/env"]
    out: List[str] = []
    for c in map(str, command):
        out += (sweep_vars.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    return out


def proposals(config: Dict[str, Any], n_random: int = 12) -> List[Dict[str, Any]]:
    """Every grid point (asking sweeps.next_run until it says done), or n_random proposals otherwise."""
    import sweeps

    runs: List[Any] = []
    out = []
    limit = 10_000 if config["method"] == "grid" else n_random
    while len(out) < limit:
        run = sweeps.next_run(config, runs)
        if run is None:
            break
        out.append({k: S._py(v["value"]) for k, v in run.config.items()})
        run.state = sweeps.RunState.finished
        run.summary_metrics = {config["metric"]["name"]: 0.5 + 0.01 * len(out)}
        runs.append(run)
    return out


def test_there_are_sweeps():
    names = {p.stem for p in SWEEPS}
    assert {"ravdess_pooling_layer", "ravdess_heads_headdim", "paper_shemo", "paper_iemocap", "ravdess_bayes"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_yaml_is_valid_and_every_agent_command_composes(path):
    import sweeps

    raw = yaml.safe_load(path.read_text())
    config = S.load_sweep_config(path)  # the sweeps package's JSON schema + ser's checks
    schema_only = {k: v for k, v in raw.items() if k not in S.SERVER_KEYS}
    sweeps.SweepConfig(schema_only)  # raises on a schema violation
    assert sweeps.next_run(schema_only, [], validate=True) is not None

    # the objective is a key the trial's W&B run logs (and `ser sweep` reads back)
    from ser_lightning.tracking import cv_metrics, trial_metrics

    sub = S.ser_overrides(S.agent_command(config, {}))
    is_cv = S.agent_command(config, {})[2] == "cv"
    from ser_lightning.run.cv import summarize

    fake_results = {"test/ua": 0.5, "test/wa": 0.5, "test/f1_macro": 0.5, "test/f1_weighted": 0.5, "best_val": 0.4,
                    "monitor": "val/ua", "n_test": 10, "class_names": ["a", "b"], "confusion_matrix": [[5, 0], [5, 0]],
                    "test/recall_a": 1.0, "test/recall_b": 0.0, "fold": 1, "encoder": {}, "pooling": "qkv",
                    "layers": [1], "config_hash": "x", "wall_time_s": 1.0}  # fmt: skip
    fake_summary = summarize([fake_results, {**fake_results, "fold": 2}])  # what `ser cv` writes
    logged = cv_metrics(fake_summary) if is_cv else trial_metrics(fake_results)
    assert config["metric"]["name"] in logged, (config["metric"]["name"], sorted(logged))
    assert sub is not None

    points = proposals(config)
    if config["method"] == "grid":
        sizes = [len(spec["values"]) for spec in config["parameters"].values() if "values" in spec]
        expected = 1
        for n in sizes:
            expected *= n
        assert len(points) == expected
    else:
        assert len(points) == 12
    outdirs, names = set(), set()
    for params in points:
        argv = S.agent_command(config, params)
        assert argv == wandb_agent_command(config, params)  # exactly what the agent would start
        assert argv[:2] == ["/usr/bin/env", "ser"]
        overrides = S.ser_overrides(argv)
        cfg = compose(overrides)  # accepted by ser's typed config
        for key, value in params.items():
            if key in ("data", "model", "trainer"):  # group selections
                assert cfg[key].name == value if key == "data" else True
            elif key == "experiment":
                assert cfg.experiment == value
            else:
                got = OmegaConf.select(cfg, key)
                assert got == pytest.approx(value) if isinstance(value, float) else got == value, (key, got, value)
        outdirs.add(cfg.output_dir)
        names.add(S.trial_name(params, S.varying_keys(config), exact=config["method"] == "grid"))
    assert len(outdirs) == len(points)  # one output folder per trial under `wandb agent` too
    assert len(names) == len(points)  # and under `ser sweep`


def test_paper_experiments_compose():
    for corpus, heads, layer in (("shemo", 6, 8), ("iemocap", 12, 11)):
        for pooling in ("mean", "attentive", "qkv"):
            cfg = compose([f"experiment=paper_{corpus}_{pooling}", "data.root=/data/x"])
            assert cfg.data.name == corpus and cfg.model.pooling == pooling
            assert cfg.model.encoder == "openai/whisper-small" and cfg.model.layer == layer
            assert (cfg.model.heads, cfg.model.head_dim, cfg.model.proj_dim) == (heads, 4, 256)
            assert cfg.model.input_seconds == "30" and cfg.data.batch_size == 16 and cfg.trainer.max_epochs == 30
            assert cfg.optim.lr == pytest.approx(1e-3) and cfg.optim.warmup_ratio == pytest.approx(0.1)


def test_ravdess_presets_compose_to_the_runs_they_report():
    """configs/experiment/ravdess_*.yaml: the configurations chosen on validation speakers (README results)."""
    expected = {  # pooling, layers, feature_norm, temporal context, heads per fold, speed perturbation, epochs
        "ravdess_mean": ("mean", [4], "standardize", "none", 5, [], 10),
        "ravdess_attentive": ("attentive", [3], "standardize", "none", 5, [], 10),
        "ravdess_qkv": ("qkv", [3], "standardize", "none", 5, [], 10),
        "ravdess_best": ("mean", [3, 4, 5, 6], "standardize", "none", 5, [0.9, 1.1], 20),
        # the speaker-adaptive protocol (model.feature_norm=speaker), chosen the same way
        "ravdess_speaker_mean": ("mean", [4], "speaker", "none", 1, [], 10),
        "ravdess_speaker_attentive": ("attentive", [4], "speaker", "none", 1, [], 10),
        "ravdess_speaker_qkv": ("qkv", [4], "speaker", "none", 1, [], 10),
        "ravdess_speaker_best": ("mean", [3, 4, 5, 6], "speaker", "none", 1, [], 10),
        # the best cross-layer-attention and linear-cost-context heads (docs/results/ravdess_seed_heads.md)
        "ravdess_cma": ("mean", [3, 4, 5, 6], "standardize", "none", 1, [], 10),
        "ravdess_retention": ("mean", [3, 4, 5, 6], "standardize", "retention", 1, [], 10),
    }
    from ser_lightning.features.pipeline import layer_list

    for name, (pooling, layers, norm, context, members, speeds, epochs) in expected.items():
        cfg = compose([f"experiment={name}"])
        assert cfg.experiment == name and cfg.data.name == "ravdess" and cfg.data.num_folds is None
        assert cfg.model.pooling == pooling and layer_list(cfg.model.layers, cfg.model.layer) == layers
        assert cfg.model.context == context and cfg.ensemble.members == members
        assert norm is None or cfg.model.feature_norm == norm
        assert list(cfg.data.speed_perturb) == speeds and cfg.trainer.max_epochs == epochs
        assert cfg.model.input_seconds == "10"
        assert (cfg.model.heads, cfg.model.head_dim, cfg.model.proj_dim) == (6, 4, 256)
        # the regularisers that raised every preset's validation UA
        assert cfg.model.feature_dropout == pytest.approx(0.2) and cfg.optim.label_smoothing == pytest.approx(0.1)


def test_seed_head_presets_are_the_sweep_trials_they_report():
    """ravdess_cma / ravdess_retention compose to exactly the sweep trials whose rows they quote, except the name."""
    from omegaconf import OmegaConf

    def sections(cfg):
        return {k: OmegaConf.to_container(cfg[k]) for k in ("data", "model", "optim", "trainer", "ensemble")}

    trials = {
        "ravdess_cma": ("ravdess_cma.yaml", ["model.layers=[3,4,5,6]"]),
        "ravdess_retention": ("ravdess_contexts.yaml", ["model.context=retention"]),
    }
    for preset, (sweep, varying) in trials.items():
        config = S.load_sweep_config(ROOT / "sweeps" / sweep)
        fixed = [f"{k}={v['value'] if isinstance(v['value'], str) else json.dumps(v['value'])}"
                 for k, v in config["parameters"].items() if "value" in v and k != "cv.workers"]
        trial = compose(fixed + varying)
        assert sections(compose([f"experiment={preset}", "model.encoder=openai/whisper-base"])) == sections(trial), preset


def test_the_adapted_preset_is_the_study_run_it_reports():
    """configs/experiment/ravdess_adapted.yaml == the `ser cv` of docs/results/ravdess_adaptation.md's LoRA row."""
    from omegaconf import OmegaConf

    def sections(cfg):
        return {k: OmegaConf.to_container(cfg[k]) for k in ("data", "model", "optim", "trainer", "ensemble")}

    study = compose(["experiment=ravdess_best", "data.speed_perturb=[]", "ensemble.members=1", "model.input_seconds=clip",
                     "model.adapt=lora", "model.adapt_blocks=2", "model.lora.rank=16", "optim.encoder_lr=5e-4",
                     "trainer.max_epochs=6"])  # fmt: skip
    assert sections(compose(["experiment=ravdess_adapted"])) == sections(study)


def test_local_command_trial_names_and_refusals(tmp_path):
    config = S.load_sweep_config(ROOT / "sweeps" / "ravdess_pooling_layer.yaml")
    params = {"data": "ravdess", "model.encoder": "openai/whisper-base", "model.pooling": "qkv", "model.layer": 3,
              "model.heads": 6, "model.head_dim": 4}  # fmt: skip
    name = S.trial_name(params, S.varying_keys(config))
    assert name == "layer-3_pooling-qkv" == S.trial_name(dict(reversed(list(params.items()))), S.varying_keys(config))
    argv = S.local_argv(config, params, tmp_path / name, ["data.root=/x"])
    assert argv[:4] == [sys.executable, "-m", "ser_lightning.cli", "cv"]
    assert argv[-1] == f"output_dir={tmp_path / name}"
    assert sum(a.startswith("output_dir=") for a in argv) == 1 and "data.root=/x" in argv
    assert "model.layer=3" in argv and "model.pooling=qkv" in argv
    # lossy names (floats of a bayes search) get a hash of all parameters: distinct points, distinct folders
    a = S.trial_name({"optim.lr": 0.00012345, "model.heads": 4}, ["model.heads", "optim.lr"], exact=False)
    b = S.trial_name({"optim.lr": 0.00012346, "model.heads": 4}, ["model.heads", "optim.lr"], exact=False)
    assert a != b and a.startswith("heads-4_lr-0.000123-")
    with pytest.raises(ConfigError, match="varies"):
        S.LocalSweep(config, tmp_path / "s", ["model.layer=2"], gpus="none")
    bad = dict(config, command=["${env}", "ser", "cv"])
    assert any("args_no_hyphens" in p for p in S.validate_sweep_config(bad))
    # a folder of another sweep is refused; a busy folder too
    S.LocalSweep(config, tmp_path / "s", ["data.root=/x"], gpus="none", count=0).run()
    with pytest.raises(S.SweepError, match="another sweep"):
        S.LocalSweep(config, tmp_path / "s", ["data.root=/y"], gpus="none", count=0).run()
    ctl = S.LocalSweep(config, tmp_path / "s", ["data.root=/x"], gpus="none", count=0)
    lock = ctl._lock()
    with pytest.raises(S.SweepError, match="running"):
        S.LocalSweep(config, tmp_path / "s", ["data.root=/x"], gpus="none", count=0).run()
    lock.close()


def test_bayes_proposals_use_results_and_are_plain_python(tmp_path):
    config = S.load_sweep_config(ROOT / "sweeps" / "ravdess_bayes.yaml")
    ctl = S.LocalSweep(config, tmp_path / "b", [], gpus="none", count=0)
    ctl._load_state()
    for i in range(3):
        t = ctl.propose()
        assert t is not None and t["status"] == "pending"
        assert all(type(v) in (int, float, str) for v in t["params"].values()), t["params"]
        t.update(status="finished", metric=0.3 + 0.1 * i)
    assert len({t["name"] for t in ctl.trials}) == 3
    assert json.loads((tmp_path / "b" / S.STATE).read_text())["trials"][0]["params"] == ctl.trials[0]["params"]


def test_ser_sweep_end_to_end_resume_and_crash(tmp_path, tmp_path_factory, ravdess_root, capsys):
    from ser_lightning.cli import main

    shared = _shared(tmp_path_factory)
    spec = {
        "name": "tiny", "program": "ser", "method": "grid",
        "metric": {"name": "cv/test/ua_mean", "goal": "maximize"},
        "parameters": {
            # heads=0 and pooling=bogus are refused by ser: 3 of the 4 trials crash, deliberately (and cheaply)
            "model.heads": {"values": [2, 0]},
            "model.pooling": {"values": ["attentive", "bogus"]},
            "data": {"value": "ravdess"}, "model.encoder": {"value": "random:test"}, "model.layer": {"value": 2},
            "data.limit_per_class": {"value": 40}, "cv.folds": {"value": [1]}, "trainer.max_epochs": {"value": 1},
        },
        "command": ["${env}", "${program}", "cv", "${args_no_hyphens}"],
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    common = [f"data.root={ravdess_root}", "trainer.accelerator=cpu", "wandb.mode=disabled", f"cache.dir={shared / 'features'}",
              f"data.table_cache_dir={shared / 'tables'}", f"output_dir={out}"]  # fmt: skip

    # first invocation: only 2 trials (as if stopped early)
    main(["sweep", str(path), "--count", "2", "--workers", "2", "--gpus", "none", *common])
    state = json.loads((out / S.STATE).read_text())
    assert len(state["trials"]) == 2
    first = {t["name"]: t for t in state["trials"]}
    assert all(t["status"] in ("finished", "failed") and t["attempts"] == 1 for t in first.values()), first
    # simulate a controller killed while a trial ran: that trial is left "running" in the state (the cheap,
    # crashing one when there is one among the first two)
    victim = next((t for t in state["trials"] if t["status"] == "failed"), state["trials"][0])
    interrupted = victim["name"]
    victim["status"] = "running"
    (out / S.STATE).write_text(json.dumps(state))
    capsys.readouterr()

    # second invocation: the interrupted trial runs again, the 2 remaining ones run, nothing else
    rc = main(["sweep", str(path), "--workers", "2", "--gpus", "none", *common])
    assert rc == 0
    printed = capsys.readouterr().out
    state = json.loads((out / S.STATE).read_text())
    trials = {t["name"]: t for t in state["trials"]}
    assert set(trials) == {"heads-2_pooling-attentive", "heads-2_pooling-bogus", "heads-0_pooling-attentive", "heads-0_pooling-bogus"}
    for name, t in trials.items():
        expected_attempts = 2 if name == interrupted else 1
        assert t["attempts"] == expected_attempts, (name, t["attempts"])
        assert t["argv"][:4] == [sys.executable, "-m", "ser_lightning.cli", "cv"]
        assert t["argv"][-1] == f"output_dir={out / name}"
        assert (out / name / "trial.log").read_text().count("==== ") == expected_attempts
        if name != "heads-2_pooling-attentive":  # the crashing trials: recorded as failed, with the error text
            assert t["status"] == "failed" and t["returncode"] == 2
            bad = "model.pooling='bogus' is not one of" if t["params"]["model.pooling"] == "bogus" else "model.heads must be >= 1"
            assert "ser: config error" in t["error"] and bad in t["error"]
            assert t.get("metric") is None
        else:
            summary = json.loads((out / name / "summary.json").read_text())
            assert t["status"] == "finished"
            assert t["metric"] == pytest.approx(summary["test/ua"]["mean"])
            assert t["metric_std"] == 0.0  # one fold
            assert summary["folds"] == [1]
    # the leaderboard: the finished trial ranked first, failures listed after it (ranking order is checked in
    # test_one_worker_per_gpu_and_leaderboard)
    best = trials["heads-2_pooling-attentive"]
    board = (out / S.LEADERBOARD).read_text()
    rows = [line for line in board.splitlines() if line.startswith("| ") and "trial" not in line]
    assert rows[0].split("|")[1:3] == [" 1 ", " heads-2_pooling-attentive "]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["-", "-", "-"]
    assert "## Failed trials" in board and "model.pooling='bogus'" in board and "model.heads must be >= 1" in board
    assert "leaderboard" in printed and f"{best['metric']:.4f} ± 0.0000" in printed

    # third invocation: nothing left to do, nothing runs again
    main(["sweep", str(path), "--gpus", "none", *common])
    again = {t["name"]: t["attempts"] for t in json.loads((out / S.STATE).read_text())["trials"]}
    assert again == {n: t["attempts"] for n, t in trials.items()}
    assert "sweep complete" in capsys.readouterr().out


FAKE = ROOT / "tests" / "scripts" / "fake_trial.py"


def _fake_sweep(**parameters) -> Dict[str, Any]:
    """A grid whose trials run tests/scripts/fake_trial.py (any program works: `python` is this Python)."""
    return {"method": "grid", "program": str(FAKE), "metric": {"name": "test/ua", "goal": "maximize"},
            "parameters": parameters, "command": ["${env}", "python", "${program}", "${args_no_hyphens}"]}  # fmt: skip


def test_one_worker_per_gpu_and_leaderboard(tmp_path, capsys):
    config = _fake_sweep(x={"values": [1, 3, 2, 4]})
    assert S.validate_sweep_config(config) == []
    ctl = S.LocalSweep(config, tmp_path / "g", gpus="0,1", poll_s=0.05)
    assert ctl.workers == 2 and ctl.devices == ["0", "1"]
    assert ctl.run() == 0
    state = json.loads((tmp_path / "g" / S.STATE).read_text())
    seen = {}
    for t in state["trials"]:
        res = json.loads((tmp_path / "g" / t["name"] / "results.json").read_text())
        assert res["cuda_visible_devices"] == t["device"] == str(t["worker"])  # each worker on its own GPU
        assert res["argv"][0] == f"x={t['params']['x']}"  # ${args_no_hyphens}
        seen[t["name"]] = t["metric"]
    assert seen == {"x-1": 0.1, "x-2": 0.2, "x-3": 0.3, "x-4": 0.4}
    out = capsys.readouterr().out
    board = out[out.index("leaderboard") :]
    assert [board.index(n) for n in ("x-4", "x-3", "x-2", "x-1")] == sorted(board.index(n) for n in ("x-4", "x-3", "x-2", "x-1"))
    # two GPUs per trial (trainer.devices=2 trials): one worker holding both
    pair = S.LocalSweep(config, tmp_path / "g2", gpus="0,1,2,3", gpus_per_trial=2)
    assert pair.devices == ["0,1", "2,3"] and pair.workers == 2


def test_several_workers_share_one_gpu(tmp_path):
    """`--workers 3 --gpus 0`: three head-only trials at a time, all on GPU 0 (issue #20)."""
    config = _fake_sweep(x={"values": [1, 2, 3, 4, 5, 6]})
    ctl = S.LocalSweep(config, tmp_path / "g", gpus="0", workers=3, poll_s=0.05)
    assert ctl.workers == 3 and ctl.devices == ["0"]
    assert ctl.run() == 0
    state = json.loads((tmp_path / "g" / S.STATE).read_text())
    assert sorted(t["worker"] for t in state["trials"][:3]) == [0, 1, 2]
    for t in state["trials"]:
        res = json.loads((tmp_path / "g" / t["name"] / "results.json").read_text())
        assert res["cuda_visible_devices"] == t["device"] == "0"


def test_cpu_workers_split_the_cores_between_them(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    ctl = S.LocalSweep(_fake_sweep(x={"values": [1, 2]}), tmp_path / "c", gpus="none", workers=2, poll_s=0.05)
    assert ctl.run() == 0
    for name in ("x-1", "x-2"):
        res = json.loads((tmp_path / "c" / name / "results.json").read_text())
        assert res["cuda_visible_devices"] == "" and res["omp_num_threads"] == "2"  # 4 cores / 2 workers
    # a user's own setting wins
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    ctl = S.LocalSweep(_fake_sweep(x={"values": [1]}), tmp_path / "d", gpus="none", workers=2, poll_s=0.05)
    assert ctl.run() == 0
    assert json.loads((tmp_path / "d" / "x-1" / "results.json").read_text())["omp_num_threads"] == "3"


def test_interrupted_sweep_stops_its_trials_and_resumes_them(tmp_path):
    import os
    import signal
    import threading
    import time

    config = _fake_sweep(x={"values": [1, 2]}, crash={"values": [False]})
    sweep_dir = tmp_path / "i"
    sweep_dir.mkdir()
    (sweep_dir / "hold").write_text("")  # trials wait until this disappears

    def interrupt_when_both_run():
        deadline = time.time() + 60
        while time.time() < deadline:
            state = json.loads((sweep_dir / S.STATE).read_text()) if (sweep_dir / S.STATE).exists() else {}
            if sum(t["status"] == "running" for t in state.get("trials", [])) == 2:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C to the controller

    # a shell's background job (`make test &`) starts with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: restore the default handler so that Ctrl-C reaches the controller here too
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=interrupt_when_both_run)
    thread.start()
    try:
        rc = S.LocalSweep(config, sweep_dir, workers=2, gpus="none", poll_s=0.05).run()
    finally:
        thread.join()
        signal.signal(signal.SIGINT, previous)
    assert rc == 130
    state = json.loads((sweep_dir / S.STATE).read_text())
    assert [t["status"] for t in state["trials"]] == ["interrupted", "interrupted"]
    assert all(t["returncode"] == -signal.SIGTERM for t in state["trials"])  # stopped with SIGTERM (ser: saves, exits 143)
    assert not any((sweep_dir / t["name"] / "results.json").exists() for t in state["trials"])

    (sweep_dir / "hold").unlink()
    assert S.LocalSweep(config, sweep_dir, workers=2, gpus="none", poll_s=0.05).run() == 0
    state = json.loads((sweep_dir / S.STATE).read_text())
    assert [(t["status"], t["attempts"]) for t in state["trials"]] == [("finished", 2), ("finished", 2)]


def test_a_crashing_trial_keeps_its_traceback_and_the_sweep_goes_on(tmp_path):
    config = _fake_sweep(crash={"values": [True, False]}, x={"value": 5})
    assert S.LocalSweep(config, tmp_path / "c", gpus="none", poll_s=0.05).run() == 0
    trials = {t["params"]["crash"]: t for t in json.loads((tmp_path / "c" / S.STATE).read_text())["trials"]}
    assert trials[True]["status"] == "failed" and trials[True]["returncode"] == 3
    assert trials[True]["error"].startswith("Traceback (most recent call last)")
    assert "RuntimeError: deliberate crash" in trials[True]["error"]
    assert trials[False]["status"] == "finished" and trials[False]["metric"] == 0.5
    # --retry-failed runs it again (and it fails again); without it, nothing runs
    assert S.LocalSweep(config, tmp_path / "c", gpus="none", poll_s=0.05, retry_failed=True).run() == 0
    again = {t["params"]["crash"]: t["attempts"] for t in json.loads((tmp_path / "c" / S.STATE).read_text())["trials"]}
    assert again == {True: 2, False: 1}


def test_a_broken_setup_stops_after_the_first_failures(tmp_path):
    config = _fake_sweep(x={"values": list(range(8))}, crash={"value": True})
    assert S.LocalSweep(config, tmp_path / "b", gpus="none", poll_s=0.02).run() == 1
    trials = json.loads((tmp_path / "b" / S.STATE).read_text())["trials"]
    assert len(trials) == S.MAX_INITIAL_FAILURES and all(t["status"] == "failed" for t in trials)
