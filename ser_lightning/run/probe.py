"""`ser probe`: a linear probe on cached features, to map accuracy per input policy and layer in seconds.

    ser probe data=ravdess model.encoder=../shared/models/whisper-base-encoder 'model.layers=[1,2,3,4,5,6]' \
        --policies clip,5,10,15,30

Per policy (`model.input_seconds` values) and layer: every clip -> the mean of its cached frames (the cache
holds exactly the frames of the clip's own audio, so this is the masked mean) -> per fold: standardise on the
training speakers, logistic regression for each C in `--C`, C chosen by UA on the validation speakers (drawn
from the training speakers exactly as `ser train` draws them; never the test fold), test UA / WA of that model
on the held-out fold. Reports mean ± std (ddof=1) over the folds, and per layer the cheapest policy within
`--tolerance` UA points of the reference policy (default 30 s). `model.feature_norm=speaker` standardises each
clip's frames with its own speaker's statistics first (the speaker-adaptive protocol of the head's option).
Features come from the FeatureCache through SERDataModule (the same cache `ser cache` / `ser cv` fill):
missing clips are encoded first unless --no-fill.
Writes output_dir/probe.json and probe.md; `--write FILE` also appends the table to FILE.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

DEFAULT_C = (0.001, 0.01, 0.1, 1.0)


def clip_means(cache: Any, hashes: Sequence[str], layers: Sequence[int],
               speakers: Optional[Sequence[str]] = None, with_std: bool = False) -> Dict[int, np.ndarray]:  # fmt: skip
    """layer -> (N, D) float32: the mean over each clip's cached frames (its own audio only); with_std: (N, 2D),
    the mean and then the std over the clip's frames (statistics pooling). With `speakers`
    (model.feature_norm=speaker): frames standardised first with the mean / std over all frames of the clip's
    speaker, as the head does; the mean of standardised frames is (clip mean - speaker mean) / speaker std, their
    std is clip std / speaker std."""
    out = {}
    for k in layers:
        clips = [np.asarray(cache.get(h, k), dtype=np.float64) for h in hashes]
        means = np.stack([c.mean(0) for c in clips])
        stds = np.stack([c.std(0) for c in clips]) if with_std else None
        if speakers is not None:
            spk = np.asarray(speakers)
            for s in np.unique(spk):
                frames = np.concatenate([clips[i] for i in np.flatnonzero(spk == s)])
                scale = np.maximum(frames.std(0), 1e-5)
                means[spk == s] = (means[spk == s] - frames.mean(0)) / scale
                if stds is not None:
                    stds[spk == s] = stds[spk == s] / scale
        out[k] = (means if stds is None else np.concatenate([means, stds], 1)).astype(np.float32)
    return out


def layers_key(layers: Sequence[int]) -> str:
    """The name of the concatenation of several layers in probe results (`--concat`): '3+4+5+6'."""
    return "+".join(str(k) for k in layers)


def probe_fold(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray,
               c_grid: Sequence[float], seed: int = 0) -> Dict[str, Any]:  # fmt: skip
    """Standardise on train; pick C by validation UA (ties: the smaller C); test UA / WA with that C."""
    import copy
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, recall_score

    mu = x[train].mean(0)
    sd = x[train].std(0) + 1e-6
    z = (x - mu) / sd

    def ua(truth: np.ndarray, pred: np.ndarray) -> float:
        present = sorted(set(truth.tolist()))  # classes absent from a split do not enter its average
        return float(recall_score(truth, pred, labels=present, average="macro", zero_division=0))

    best = None
    clf = LogisticRegression(max_iter=2000, tol=1e-5, warm_start=True, random_state=seed)
    for c in sorted(c_grid):  # ascending C with warm starts: each fit starts from the previous solution
        clf.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(z[train], y[train])
        score = ua(y[val], clf.predict(z[val]))
        if best is None or score > best[0]:
            best = (score, c, copy.deepcopy(clf))
    assert best is not None
    val_ua, c, model = best
    pred = model.predict(z[test])
    return {"C": c, "val_ua": val_ua, "test_ua": ua(y[test], pred), "test_wa": float(accuracy_score(y[test], pred)),
            "n_train": int(len(train)), "n_val": int(len(val)), "n_test": int(len(test))}  # fmt: skip


def mean_std(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_probe(cfg: Any, policies: Sequence[str], c_grid: Sequence[float] = DEFAULT_C, fill: bool = True,
              encoder: Any = None, folds: Optional[Sequence[int]] = None, reference: str = "30",
              tolerance: float = 0.5, stats: str = "mean", concat: bool = False) -> Dict[str, Any]:  # fmt: skip
    """UA / WA (mean ± std over folds) per policy and layer, plus the policy frontier per layer.
    stats: 'mean' (a clip = the mean of its frames) or 'meanstd' (mean and std). concat: also probe every
    requested layer's clip features concatenated into one vector (a row named by layers_key, e.g. '3+4+5+6')."""
    if stats not in ("mean", "meanstd"):
        raise ValueError(f"probe stats={stats!r}: use mean or meanstd")
    from threadpoolctl import threadpool_limits

    from ser_lightning.data.table import dataset_rows
    from ser_lightning.data.folds import fold_speakers, make_split
    from ser_lightning.features.frontend import LengthPolicy
    from ser_lightning.features.pipeline import feature_spec, load_config_encoder
    from ser_lightning.run.build import build_datamodule

    encoder = load_config_encoder(cfg, encoder)
    speaker_norm = cfg.model.feature_norm == "speaker"
    layers = feature_spec(cfg, encoder).layers
    rows: List[Any] = list(layers) + ([layers_key(layers)] if concat and len(layers) > 1 else [])
    results: Dict[str, Any] = {"encoder": encoder.source, "fingerprint": encoder.fingerprint, "layers": rows,
                               "C_grid": list(c_grid), "policies": {}, "seed": cfg.seed, "stats": stats,
                               "feature_norm": "speaker" if speaker_norm else "standardize"}  # fmt: skip
    table = None
    splits = None
    for name in policies:
        policy = LengthPolicy.parse(name)
        _, dm = build_datamodule(cfg, encoder, policy=name, cached=True)
        if table is None:
            table = dm.load_table()
            ds = table.dataset
            hashes, y = list(ds["sha256"]), np.asarray(ds["label"])
            speakers = np.asarray(ds["speaker"])
            durations = np.asarray(ds["duration"], dtype=float)
            all_folds = sorted(fold_speakers(table.corpus, cfg.data.num_folds, cfg.seed))
            splits = {}
            for k in folds or all_folds:
                s = make_split(table.corpus, k, cfg.data.num_folds, int(cfg.data.val_speakers),
                               cfg.data.val_speaker_ids, cfg.seed, val_fraction=cfg.data.val_fraction,
                               rows=dataset_rows(ds))  # fmt: skip
                splits[k] = tuple(np.flatnonzero(np.isin(speakers, part)) for part in
                                  (s.train_speakers, s.val_speakers, s.test_speakers))  # fmt: skip
        else:
            dm.table = table
        cache = dm.open_cache()
        cache.refresh()
        missing = cache.missing(hashes, layers)
        if missing:
            if not fill:
                raise ValueError(f"policy {policy.name}: {len(missing)} of {len(hashes)} clips are not in the cache "
                                 f"{cache.dir} for layers {layers}; run `ser cache` (or drop --no-fill)")  # fmt: skip
            dm.fill(dict(zip(hashes, ds["path"])), dict(zip(hashes, ds["duration"])))
            cache.refresh()
        start = time.perf_counter()
        means: Dict[Any, np.ndarray] = clip_means(cache, hashes, layers, speakers if speaker_norm else None,
                                                  with_std=stats == "meanstd")  # fmt: skip
        if len(rows) > len(layers):
            means[rows[-1]] = np.concatenate([means[k] for k in layers], 1)  # (N, L * D) or (N, L * 2D)
        per_layer = {}
        for k in rows:
            # one BLAS / OpenMP thread: these fits are tiny, and on a busy machine the default thread pools
            # spin against each other (measured 15-30x slower on the shared 2-core CPU)
            with threadpool_limits(1):
                fold_res = {f: probe_fold(means[k], y, *idx, c_grid, cfg.seed) for f, idx in splits.items()}
            per_layer[k] = {
                "ua": mean_std([r["test_ua"] for r in fold_res.values()]),
                "wa": mean_std([r["test_wa"] for r in fold_res.values()]),
                "folds": fold_res,
            }
        mean_input_s = float(np.mean([policy.input_samples(int(min(d, cfg.data.max_seconds) * 16000)) for d in durations])) / 16000
        results["policies"][policy.name] = {"layers": per_layer, "cache": str(cache.dir), "probe_s": time.perf_counter() - start,
                                            "mean_input_s": mean_input_s}  # fmt: skip
        print(f"[ser probe] {policy.name}: " + "  ".join(f"L{k} {100 * per_layer[k]['ua']['mean']:.1f}" for k in rows)
              + f"  ({results['policies'][policy.name]['probe_s']:.1f} s)", file=sys.stderr)  # fmt: skip
    results["corpus"] = table.corpus.name if table else None
    results["folds"] = list(splits) if splits else []
    results["reference"] = LengthPolicy.parse(reference).name
    results["tolerance"] = tolerance
    results["paired"] = paired_differences(results, reference)
    results["frontier"] = frontier(results, reference, tolerance)
    return results


def paired_differences(results: Dict[str, Any], reference: str = "30") -> Dict[str, Dict[int, Dict[str, float]]]:
    """Per policy and layer: test UA minus the reference policy's, fold by fold (same test speakers), as mean,
    sample std and standard error over the folds: how much of a gap is noise."""
    from ser_lightning.features.frontend import LengthPolicy

    ref = LengthPolicy.parse(reference).name
    pols = results["policies"]
    out: Dict[str, Dict[int, Dict[str, float]]] = {}
    if ref not in pols:
        return out
    for name, r in pols.items():
        if name == ref:
            continue
        out[name] = {}
        for k in results["layers"]:
            a, b = r["layers"][k]["folds"], pols[ref]["layers"][k]["folds"]
            d = [a[f]["test_ua"] - b[f]["test_ua"] for f in a if f in b]
            sd = statistics.stdev(d) if len(d) > 1 else 0.0
            out[name][k] = {"mean": statistics.fmean(d), "std": sd, "se": sd / len(d) ** 0.5}
    return out


def frontier(results: Dict[str, Any], reference: str = "30", tolerance: float = 0.5) -> Dict[int, Optional[str]]:
    """Per layer: the policy with the shortest mean encoder input whose UA is within `tolerance` points of the
    reference policy's (None when the reference was not probed)."""
    from ser_lightning.features.frontend import LengthPolicy

    ref = LengthPolicy.parse(reference).name
    pols = results["policies"]
    if ref not in pols:
        return {}
    out: Dict[int, Optional[str]] = {}
    for k in results["layers"]:
        target = 100 * pols[ref]["layers"][k]["ua"]["mean"] - tolerance
        ok = [p for p in pols if 100 * pols[p]["layers"][k]["ua"]["mean"] >= target]
        out[k] = min(ok, key=lambda p: pols[p]["mean_input_s"]) if ok else ref
    return out


def format_probe(results: Dict[str, Any], throughput: Optional[Dict[str, float]] = None) -> str:
    layers = results["layers"]
    pols = results["policies"]
    head = "| policy | mean input (s) | " + " | ".join(f"L{k} UA" for k in layers)
    norm = ("frames standardised per SPEAKER (model.feature_norm=speaker; speaker-adaptive)"
            if results.get("feature_norm") == "speaker" else "standardised")  # fmt: skip
    pooled = "mean and std" if results.get("stats") == "meanstd" else "mean"
    joined = [k for k in layers if isinstance(k, str)]
    concat = f"; L{joined[0]}: those layers' features side by side" if joined else ""
    head += " | clips/s |" if throughput else " |"
    lines = [
        f"Linear probe (masked {pooled} of one layer{concat}, {norm}, logistic regression, C in {results['C_grid']} chosen on "
        f"validation speakers), `{results['encoder']}` on {results['corpus']}, folds {results['folds']}: test UA "
        "mean ± std (ddof=1) over folds, percent.",
        "",
        head,
        "|---|---|" + "---|" * len(layers) + ("---|" if throughput else ""),
    ]
    for name, r in pols.items():
        cells = [f"{100 * r['layers'][k]['ua']['mean']:.2f} ± {100 * r['layers'][k]['ua']['std']:.2f}" for k in layers]
        tp = f" {throughput[name]:.2f} |" if throughput and name in throughput else (" - |" if throughput else "")
        lines.append(f"| {name} | {r['mean_input_s']:.2f} | " + " | ".join(cells) + " |" + tp)
    lines += ["", "| policy | " + " | ".join(f"L{k} WA" for k in layers) + " |", "|---|" + "---|" * len(layers)]
    for name, r in pols.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r['layers'][k]['wa']['mean']:.2f} ± {100 * r['layers'][k]['wa']['std']:.2f}" for k in layers) + " |")
    if results.get("paired"):
        ref = results.get("reference", "30s")
        lines += ["", f"Paired UA difference to {ref} (same test folds), points: mean ± std over folds (standard error)",
                  "", "| policy | " + " | ".join(f"L{k}" for k in layers) + " |", "|---|" + "---|" * len(layers)]  # fmt: skip
        for name, per in results["paired"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{100 * per[k]['mean']:+.2f} ± {100 * per[k]['std']:.2f} ({100 * per[k]['se']:.2f})" for k in layers) + " |")  # fmt: skip
    if results.get("frontier"):
        lines += ["", f"Frontier (cheapest policy within {results.get('tolerance', 0.5):g} UA of {results.get('reference', '30s')}): "
                  + ", ".join(f"L{k}: {p}" for k, p in results["frontier"].items())]  # fmt: skip
    return "\n".join(lines) + "\n"


def _add_options(p: argparse.ArgumentParser, late: bool = False) -> None:
    """The options (`late`: for options written after the overrides, which set only what they name)."""
    d = (lambda v: argparse.SUPPRESS) if late else (lambda v: v)
    p.add_argument("--policies", default=d(None), help="comma-separated input policies (default: model.input_seconds)")
    p.add_argument("--C", default=d(",".join(map(str, DEFAULT_C))), help="inverse regularisation strengths tried on validation")
    p.add_argument("--reference", default=d("30"), help="policy the frontier is measured against (default 30)")
    p.add_argument("--tolerance", type=float, default=d(0.5), help="UA points a cheaper policy may lose (default 0.5)")
    p.add_argument("--no-fill", action="store_true", default=d(False), help="fail instead of encoding clips missing from the cache")
    p.add_argument("--write", default=d(None), help="also append the table to this markdown file")
    p.add_argument("--stats", default=d("mean"), choices=("mean", "meanstd"),
                   help="clip features: the mean of its frames (default) or their mean and std")
    p.add_argument("--concat", action="store_true", default=d(False),
                   help="also probe all requested layers concatenated into one feature vector")


def add_subcommand(sub: argparse._SubParsersAction):
    p = sub.add_parser("probe", help="linear probe (masked mean + logistic regression) per input policy and layer on cached features")
    _add_options(p)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="group selections and key=value overrides (options may follow them)")

    def run(args: argparse.Namespace) -> int:
        from ser_lightning.config import compose, require
        from ser_lightning.run.options import merge_late_options
        from ser_lightning.utils.io import append_markdown, atomic_write_json, atomic_write_text

        args = merge_late_options(args, _add_options)

        cfg = compose(args.overrides)
        require(cfg, "data.root", "model.encoder")
        policies = [x.strip() for x in (args.policies or str(cfg.model.input_seconds)).split(",") if x.strip()]
        c_grid = [float(x) for x in args.C.split(",") if x.strip()]
        results = run_probe(cfg, policies, c_grid, fill=not args.no_fill, reference=args.reference,
                            tolerance=args.tolerance, stats=args.stats, concat=args.concat)  # fmt: skip
        text = format_probe(results)
        out = Path(cfg.output_dir)
        atomic_write_json(out / "probe.json", results)
        atomic_write_text(out / "probe.md", text)
        print(text)
        print(f"[ser probe] written {out / 'probe.json'} and {out / 'probe.md'}")
        if args.write:
            append_markdown(Path(args.write), f"### `ser probe` {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{text}")
        return 0

    return run
