"""`run_bench`: the chosen parts in one run, one report."""

from __future__ import annotations

import copy
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ser_lightning.run.bench.cache_size import bench_cache
from ser_lightning.run.bench.cv import paper_cv_estimate, run_ours_cv, time_fp32_file_read, time_head_paper
from ser_lightning.run.bench.encode import bench_encode, bench_policies, time_paper
from ser_lightning.run.bench.report import cache_rows, cv_rows, encode_rows, format_report
from ser_lightning.run.bench.synthetic import SAMPLE_RATE, SHEMO_CLASSES, SyntheticClips, shemo_like_lengths, write_synthetic_corpus
from ser_lightning.utils.machine import machine_info


DEFAULT_WRITE = "docs/benchmarks.md"
PARTS = ("encode", "policies", "cv", "cache", "context", "adapt", "overhead")


def corpus_waves(cfg: Any, clips: Optional[int], seed: int) -> tuple:
    """(waves, description) of up to `clips` clips of cfg's corpus (seeded sample), decoded and cropped."""
    from omegaconf import OmegaConf

    from ser_lightning.data.table import build_table
    from ser_lightning.features.extract import load_clip

    data = OmegaConf.to_container(cfg.data, resolve=True)
    ds = build_table(data).dataset
    n = len(ds)
    idx = list(range(n))
    if clips and clips < n:
        idx = sorted(np.random.default_rng(seed).choice(n, size=clips, replace=False).tolist())
    paths = ds.select(idx)["path"]
    waves = [load_clip(p, int(data["sample_rate"]), float(data["max_seconds"]), data["crop"]) for p in paths]
    mean = np.mean([len(w) for w in waves]) / SAMPLE_RATE
    return waves, f"{cfg.data.name} ({len(waves)} of {n} clips, mean {mean:.2f} s)"


def run_bench(cfg: Any, parts: Sequence[str], clips: Optional[int] = None, paper_clips: int = 8,
              batch_size: Optional[int] = None, policies: Sequence[str] = ("clip", "5", "10", "15", "30"),
              cv_folds: Optional[int] = None, cv_epochs: Optional[int] = None, cold: bool = True,
              workdir: Optional[Path] = None, command: str = "ser bench", encoder: Any = None,
              speakers: int = 87, num_folds: int = 10, corpus_dir: Optional[Path] = None) -> Dict[str, Any]:  # fmt: skip
    """Run the chosen parts and return the report (rows with both sides and ratios, machine, details)."""
    import torch
    from omegaconf import OmegaConf, open_dict

    from ser_lightning.features.encoder import load_encoder
    from ser_lightning.features.frontend import encoder_frames, mel_frames
    from ser_lightning.features.pipeline import feature_spec, load_config_encoder

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown bench part(s) {unknown}; choose from {', '.join(PARTS)}")
    machine = machine_info()
    encoder = load_config_encoder(cfg, encoder)  # the device rule and model.compile of every job
    device = next(encoder.parameters()).device
    spec = feature_spec(cfg, encoder)
    layers, policy = spec.layers, spec.policy
    dtype = str(next(encoder.parameters()).dtype).replace("torch.", "")
    if batch_size is None:
        batch_size = 256 if device.type == "cuda" else 16
    max_batch_samples = batch_size * 10 * SAMPLE_RATE  # at most ~10 s of padded audio per clip slot
    synthetic = OmegaConf.is_missing(cfg.data, "root")
    if synthetic:
        n = clips or 200
        lengths = shemo_like_lengths(n, cfg.seed)
        synth = SyntheticClips(lengths, cfg.seed)
        waves = synth.waves()
        clips_desc = f"synthetic ShEMO-like, {n} clips, mean {lengths.mean():.2f} s, {lengths.min():.1f}-{lengths.max():.1f} s (seed {cfg.seed})"
    else:
        waves, clips_desc = corpus_waves(cfg, clips, cfg.seed)
    own_tmp = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ser-bench-")) if own_tmp else Path(workdir)
    report: Dict[str, Any] = {
        "machine": machine, "command": command, "parts": list(parts), "rows": [],
        "setup": {"encoder": encoder.source, "num_layers": encoder.num_layers, "dim": encoder.output_dim,
                  "layers": layers, "policy": policy.name, "dtype": dtype, "batch_size": batch_size,
                  "compile": bool(getattr(encoder, "compiled", False)), "clips_desc": clips_desc, "device": str(device)},
    }  # fmt: skip
    try:
        paper_encoder = None
        paper_timing = None

        def get_paper_encoder():
            nonlocal paper_encoder
            if paper_encoder is None:
                same = next(encoder.parameters()).dtype == torch.float32 and not getattr(encoder, "compiled", False)
                paper_encoder = encoder if same else load_encoder(cfg.model.encoder, device=device, dtype="fp32", seed=cfg.seed)
            return paper_encoder

        if "encode" in parts or "cv" in parts:
            rng = np.random.default_rng(cfg.seed)
            sample = sorted(rng.choice(len(waves), size=min(paper_clips, len(waves)), replace=False).tolist())
            print(f"[ser bench] paper recipe: timing {len(sample)} clips (30 s, fp32, batch 1, all blocks)", file=sys.stderr)
            paper_timing = time_paper(get_paper_encoder(), [waves[i] for i in sample], max(layers))
        if "encode" in parts:
            print(f"[ser bench] ours: encoding {len(waves)} clips", file=sys.stderr)
            report["encode"] = bench_encode(encoder, None, waves, policy, layers, batch_size, paper_clips,
                                            max_batch_samples, cfg.seed, paper=paper_timing)  # fmt: skip
            report["rows"] += encode_rows(report["encode"])
        if "policies" in parts:
            print(f"[ser bench] ours: policies {list(policies)}", file=sys.stderr)
            report["policies"] = bench_policies(encoder, waves, policies, layers, batch_size, max_batch_samples)
        if "cv" in parts:
            c = copy.deepcopy(cfg)
            if synthetic:
                print(f"[ser bench] cv: writing {len(waves)} synthetic clips", file=sys.stderr)
                manifest = write_synthetic_corpus(Path(corpus_dir) if corpus_dir else workdir / "corpus", synth,
                                                  min(speakers, len(waves)), num_folds, SHEMO_CLASSES, cfg.seed)  # fmt: skip
                with open_dict(c):
                    c.data.name = "manifest"
                    c.data.root = str(manifest)
                    c.data.manifest = str(manifest)
                    c.data.num_folds = None
                    c.data.classes = None
            folds = None
            if cv_folds:
                from ser_lightning.run.cv import corpus_folds

                folds = corpus_folds(c)[:cv_folds]
            epochs = int(cv_epochs or cfg.trainer.max_epochs)
            print(f"[ser bench] cv: ours, `ser cv` for real ({'all' if not folds else folds} folds x {epochs} epochs)", file=sys.stderr)
            ours = run_ours_cv(c, encoder, workdir, folds, epochs, cold)
            n_classes = len(set(SHEMO_CLASSES)) if synthetic else None
            if n_classes is None:
                from ser_lightning.data.table import load_corpus

                n_classes = len(load_corpus(OmegaConf.to_container(c.data, resolve=True)).class_names)
            head = time_head_paper(cfg, encoder.output_dim, n_classes, device)
            read = time_fp32_file_read(encoder.output_dim, workdir / "paper_files")
            assert paper_timing is not None
            # the paper's train set is every non-test speaker (it had no validation split); folds not run are
            # assumed the size of the mean fold that was
            nf = [{"n_train": f["n_train"] + f["n_val"], "n_test": f["n_test"]} for f in ours["per_fold"]]
            scale = len(ours["folds_all"]) / len(nf)
            est = paper_cv_estimate(ours["clips"], paper_timing["per_clip_s"], nf, epochs, head["train_step_s"],
                                    head["eval_clip_s"], read)  # fmt: skip
            for key in ("train_s", "eval_s", "read_s"):
                est[key] *= scale
            est["total_s"] = est["encode_s"] + est["train_s"] + est["eval_s"] + est["read_s"]
            report["cv"] = {"ours": ours, "paper": est, "pieces": {"per_clip_encode_s": paper_timing["per_clip_s"],
                                                                     **head, "read_file_s": read}}  # fmt: skip
            report["rows"] += cv_rows(report["cv"])
        if "cache" in parts:
            frames = [encoder_frames(mel_frames(len(w))) for w in waves]
            report["cache"] = bench_cache(frames, encoder.output_dim, layers, workdir / "cache_size", cfg.cache.dtype)
            report["rows"] += cache_rows(report["cache"])
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    report["markdown"] = format_report(report)
    return report
