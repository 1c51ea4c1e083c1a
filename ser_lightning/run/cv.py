"""`ser cv`: every fold of one configuration (each a `ser train` run in output_dir/fold_K), then
summary.json (mean +- std over folds, pooled confusion matrix) and summary.md (the papers' table format).

Resumable: finished folds (same configuration) are skipped, an interrupted fold continues from its last
checkpoint, and a folder that holds another configuration is refused, never overwritten.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from ser_lightning.config import ConfigError, compose, require
from ser_lightning.run.rundir import RESULTS, SUMMARY, SUMMARY_MD, check_output_dir, fold_dir
from ser_lightning.utils.io import atomic_write_json, atomic_write_text, fault_point, read_json, remove_stale_temps

SCALARS = ("test/wa", "test/ua", "test/f1_macro", "test/f1_weighted")


def corpus_folds(cfg: DictConfig) -> List[int]:
    from ser_lightning.data.folds import fold_speakers
    from ser_lightning.data.table import load_corpus

    table = load_corpus(OmegaConf.to_container(cfg.data, resolve=True))  # type: ignore[arg-type]
    return sorted(fold_speakers(table, cfg.data.num_folds, cfg.seed))


def fold_config(cfg: DictConfig, fold: int) -> DictConfig:
    out = Path(cfg.output_dir)
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.data.fold = fold
        c.output_dir = str(fold_dir(out, fold))
        c.wandb.group = cfg.wandb.group or out.name
        c.wandb.job_type = "fold"
        c.wandb.name = f"{cfg.wandb.name or out.name}-fold{fold}"
    return c


def mean_std(values: List[float]) -> Dict[str, Any]:
    """Mean and sample standard deviation (ddof=1, 0 for one fold) over folds."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "folds": values,
    }


def summarize(results: List[Dict[str, Any]], cfg: Optional[DictConfig] = None) -> Dict[str, Any]:
    if not results:
        raise ValueError("no fold results to summarise")
    class_names = results[0]["class_names"]
    keys = list(SCALARS) + [f"test/recall_{c}" for c in class_names]
    summary: Dict[str, Any] = {k: mean_std([float(r[k]) for r in results]) for k in keys}
    monitor = results[0].get("monitor")
    if monitor and all(r.get("best_val") is not None and r.get("monitor") == monitor for r in results):
        # the validation score that chose each fold's checkpoint (validation speakers only): what a sweep
        # that selects configurations should maximise (`cv/val/ua_best_mean`), never the test metrics
        summary[f"{monitor}_best"] = mean_std([float(r["best_val"]) for r in results])
    n = len(class_names)
    pooled = [[sum(r["confusion_matrix"][i][j] for r in results) for j in range(n)] for i in range(n)]
    from ser_lightning.models.metrics import confusion_metrics
    from ser_lightning.run.compute import cv_compute

    scores = confusion_metrics(pooled)
    # the metrics of all folds' test predictions concatenated: defined even when a test fold lacks a class
    # (leave-one-speaker-out, small corpora), where a fold's own UA averages only the classes it holds
    summary["pooled"] = {f"test/{k}": scores[k] for k in ("wa", "ua", "f1_macro", "f1_weighted")}
    summary["pooled"]["absent_classes"] = [class_names[i] for i in scores["absent"]]
    summary.update(
        {
            "folds": [r["fold"] for r in results],
            "n_test": sum(r["n_test"] for r in results),
            "class_names": class_names,
            "confusion_matrix": pooled,
            "std": "sample standard deviation over folds (ddof=1)",
            "encoder": results[0]["encoder"],
            "pooling": results[0]["pooling"],
            "feature_norm": results[0].get("feature_norm", "none"),
            "ensemble_members": int(results[0].get("ensemble", {}).get("members", 1)),
            "layers": results[0]["layers"],
            "corpus": results[0].get("corpus"),
            "config_hash": results[0]["config_hash"],
            "wall_time_s": round(sum(r["wall_time_s"] for r in results), 1),
            # FLOPs (run/compute.py): the mean over folds, and cv_total_gflops (corpus encoded once + every fold's training)
            "compute": cv_compute([r.get("compute") for r in results]),
        }
    )
    return summary


def pct(stat: Dict[str, Any]) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def summary_markdown(summary: Dict[str, Any], results: List[Dict[str, Any]], title: str) -> str:
    enc = summary["encoder"]
    layers = ",".join(map(str, summary["layers"]))
    protocol = "speaker-independent"
    if summary.get("feature_norm") == "speaker":
        protocol = ("speaker-independent folds, SPEAKER-ADAPTIVE features: model.feature_norm=speaker normalised every "
                    "clip with its own speaker's statistics, test speakers' unlabelled clips included")  # fmt: skip
    if summary.get("ensemble_members", 1) > 1:
        protocol += (f"; an ENSEMBLE of {summary['ensemble_members']} heads per fold (seeds seed..seed+"
                     f"{summary['ensemble_members'] - 1}, each with its own validation speakers; mean softmax)")  # fmt: skip
    lines = [
        f"# {title}",
        "",
        f"Corpus {summary['corpus']}, folds {summary['folds']} ({protocol}; checkpoint chosen on validation "
        f"speakers drawn from the training speakers), encoder `{enc['source']}` layer(s) {layers}, "
        f"input {enc['input_seconds']}, pooling {summary['pooling']}. Mean ± std (ddof=1) over folds, percent.",
        "",
        "| encoder | layer | pooling | WA | UA | macro F1 | weighted F1 | validation UA (selection) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {Path(enc['source']).name} | {layers} | {summary['pooling']} | {pct(summary['test/wa'])} | "
        f"{pct(summary['test/ua'])} | {pct(summary['test/f1_macro'])} | {pct(summary['test/f1_weighted'])} | "
        f"{pct(summary['val/ua_best']) if 'val/ua_best' in summary else '-'} |",
        "",
        "| fold | test speakers | n | WA | UA | macro F1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['fold']} | {' '.join(r['test_speakers'])} | {r['n_test']} | {100 * r['test/wa']:.2f} | "
            f"{100 * r['test/ua']:.2f} | {100 * r['test/f1_macro']:.2f} |"
        )
    pooled = summary.get("pooled")
    if pooled:
        lines += ["", f"Pooled over the folds (every fold's test predictions concatenated, {summary['n_test']} clips): "
                  f"WA {100 * pooled['test/wa']:.2f}, UA {100 * pooled['test/ua']:.2f}, macro F1 "
                  f"{100 * pooled['test/f1_macro']:.2f}, weighted F1 {100 * pooled['test/f1_weighted']:.2f}."]  # fmt: skip
    data = summary.get("data")
    if data and (data.get("skipped") or data.get("cropped")):
        lines += ["", f"Input: {data['skipped']} clip(s) skipped as unusable (data.on_bad_audio=skip) and {data['cropped']} "
                  f"cropped to data.max_seconds; every file and reason: {data['report']}."]  # fmt: skip
        lines += [f"- skipped {b.get('path', '?')}: {b.get('reason', '?')}" for b in data.get("skipped_files", [])[:20]]
    lines += ["", "| class | recall |", "|---|---|"]
    lines += [f"| {c} | {pct(summary[f'test/recall_{c}'])} |" for c in summary["class_names"]]
    return "\n".join(lines) + "\n"


def _train_fold_process(cfg: DictConfig, threads: int) -> str:
    """One fold in a worker process (spawned: no state shared with the parent but the files)."""
    import torch

    from ser_lightning.run.callbacks import SIGTERM_EXIT, Terminated
    from ser_lightning.run.train import train

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        train(cfg)
    except Terminated:
        # SIGTERM: the fold stopped at its last epoch-end checkpoint. Leave the pool now: returning would let this
        # worker take the next queued fold.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(SIGTERM_EXIT)
    return str(cfg.output_dir)


def train_in_parallel(cfg: DictConfig, folds: List[int], workers: int, encoder: Any) -> None:
    """Train the folds `workers` at a time in spawned processes. The feature cache is filled first, here, so
    the workers only read it. Every fold is a resumable `ser train` run: a fold that fails does not stop the
    others, and the caller's sequential pass then returns the finished folds' results.json and reruns (so
    reports) the failed one in this process."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if int(cfg.trainer.devices if str(cfg.trainer.devices).isdigit() else 1) > 1:
        raise ConfigError("cv.workers > 1 runs one fold per process; it cannot be combined with trainer.devices > 1 (DDP)")
    if cfg.cache.enabled:
        from ser_lightning.run.cache import cache_command

        cache_command(cfg, encoder=encoder)
    pending = [k for k in folds if not (fold_dir(cfg.output_dir, k) / RESULTS).is_file()]
    if len(pending) < 2:
        return
    workers = min(workers, len(pending))
    on_gpu = encoder is not None and next(encoder.parameters()).device.type == "cuda"
    threads = 0 if on_gpu else max(1, (os.cpu_count() or 1) // workers)
    print(f"[ser cv] folds {pending}: {workers} at a time in worker processes"
          + ("" if on_gpu else f", {threads} CPU thread(s) each"))  # fmt: skip
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    try:
        jobs = {pool.submit(_train_fold_process, fold_config(cfg, k), threads): k for k in pending}
        for job in as_completed(jobs):
            k = jobs[job]
            try:
                job.result()
                print(f"[ser cv] fold {k} done (worker process)")
            except Exception as e:  # noqa: BLE001 - reported, then rerun in this process below
                print(f"[ser cv] fold {k} failed in its worker process: {type(e).__name__}: {e}")
    except BaseException:
        # SIGTERM (Terminated), Ctrl-C or a crash here: stop the workers too, at once. A plain `with pool:` would
        # wait for the running folds AND start the queued ones. Each worker's own SIGTERM handling stops its fold
        # at the last epoch-end checkpoint, so the same command resumes every fold.
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def stop_workers(pool: Any, grace_s: float = 60.0) -> None:
    """SIGTERM every live worker process of a ProcessPoolExecutor, drop its queued jobs, wait for the workers
    (SIGKILL after `grace_s`)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # private, but the only handle there is
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(grace_s)
        if proc.is_alive():
            proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def run_cv(cfg: DictConfig, encoder: Any = None) -> Dict[str, Any]:
    """Every fold, then the summary. Interrupted (SIGTERM: exit 143, SIGKILL, a crash), the same call skips the
    finished folds, resumes the interrupted one from its last checkpoint and writes the same summary."""
    from ser_lightning.run.callbacks import sigterm_exits

    with sigterm_exits():
        return _run_cv(cfg, encoder)


def _run_cv(cfg: DictConfig, encoder: Any = None) -> Dict[str, Any]:
    from ser_lightning.features.pipeline import load_config_encoder
    from ser_lightning.run.train import train

    require(cfg, "data.root", "model.encoder")
    out = Path(cfg.output_dir)
    check_output_dir(out)
    remove_stale_temps(out)  # of a summary write killed half-way
    folds = list(cfg.cv.folds) if cfg.cv.folds else corpus_folds(cfg)
    start = time.time()
    encoder = load_config_encoder(cfg, encoder)  # loaded once, shared by every fold
    workers = int(cfg.cv.workers)
    if workers > 1 and len(folds) > 1:
        train_in_parallel(cfg, folds, workers, encoder)
    results = []
    for k in folds:
        print(f"[ser cv] fold {k} of {folds} -> {fold_dir(out, k)}")
        results.append(train(fold_config(cfg, k), encoder=encoder))  # a finished fold returns its results.json
        fault_point("fold_done")
    summary = summarize(results, cfg)
    summary["cv_wall_time_s"] = round(time.time() - start, 1)
    summary["data"] = input_report(out, folds)
    from ser_lightning.tracking import is_global_zero

    if not is_global_zero():  # DDP: every rank computed the same summary; rank 0 writes and logs it
        return summary
    atomic_write_json(out / SUMMARY, summary)
    atomic_write_text(out / SUMMARY_MD, summary_markdown(summary, results, f"Cross-validation: {out.name}"))
    try:
        from ser_lightning.run.plots import confusion_png

        confusion_png(summary["confusion_matrix"], summary["class_names"], out / "confusion_matrix.png",
                      title=f"{out.name}: pooled over folds (row-normalised)")  # fmt: skip
    except ImportError:
        pass
    log_cv_summary(cfg, summary)
    print(
        f"[ser cv] {out.name}: WA {pct(summary['test/wa'])}  UA {pct(summary['test/ua'])}  "
        f"F1 {pct(summary['test/f1_macro'])} over folds {folds}; pooled UA {100 * summary['pooled']['test/ua']:.2f} "
        f"-> {out / SUMMARY}"
    )
    if summary["data"]["skipped"] or summary["data"]["cropped"]:
        print(f"[ser cv] input: {summary['data']['skipped']} clip(s) skipped, {summary['data']['cropped']} cropped "
              f"(listed in {out / str(summary['data']['report'])})")  # fmt: skip
    return summary


def input_report(out: Path, folds: List[int]) -> Dict[str, Any]:
    """Skipped and cropped clips of the corpus (every fold reads the same table; its report sits in each fold
    folder), so the CV summary says them where the user looks."""
    for k in folds:
        report = read_json(fold_dir(out, k) / "table_report.json")
        if report:
            return {"skipped": int(report.get("skipped", 0)), "cropped": int(report.get("cropped", 0)),
                    "skipped_files": list(report.get("skipped_files", [])), "cropped_files": len(report.get("cropped_files", [])),
                    "report": str(Path(f"fold_{k}") / "bad_audio.json")}  # fmt: skip
    return {"skipped": 0, "cropped": 0, "skipped_files": [], "report": None}


def log_cv_summary(cfg: DictConfig, summary: Dict[str, Any]) -> None:
    """One W&B run per CV (job_type=cv-summary) carrying the fold means, so dashboards compare configurations."""
    from ser_lightning.tracking import log_cv_summary_run

    log_cv_summary_run(cfg, summary)


def load_summary(run_dir: Path) -> Optional[Dict[str, Any]]:
    return read_json(Path(run_dir) / SUMMARY)


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("cv", help="cross-validate one configuration over every fold; writes summary.json/.md")
    p.add_argument("overrides", nargs="*", help="group selections and key=value overrides (cv.folds=[1,2] for a subset)")

    def run(args: argparse.Namespace) -> int:
        run_cv(compose(args.overrides))
        return 0

    return run
