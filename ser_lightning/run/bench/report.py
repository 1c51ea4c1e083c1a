"""The bench report: side-by-side rows with ratios, and the markdown table with the machine it ran on."""

from __future__ import annotations

from typing import Any, Dict, List

from ser_lightning.utils.machine import machine_line


def _row(part: str, metric: str, paper: float, ours: float, unit: str, better: str, how_paper: str,
         how_ours: str) -> Dict[str, Any]:  # fmt: skip
    """One side-by-side row; ratio = how many times ours is better, computed from the two numbers
    (better='higher': ours / paper; 'lower': paper / ours)."""
    if better == "higher":
        ratio = ours / paper if paper > 0 else float("inf")
    else:
        ratio = paper / ours if ours > 0 else float("inf")
    return {"part": part, "metric": metric, "unit": unit, "paper": paper, "ours": ours, "better": better,
            "ratio": ratio, "paper_how": how_paper, "ours_how": how_ours}  # fmt: skip


def encode_rows(e: Dict[str, Any]) -> List[Dict[str, Any]]:
    o, p, n = e["ours"], e["paper"], e["clips"]
    paper_how = (f"measured on {p['clips_timed']} clips, extrapolated to {n}" if p["extrapolated"]
                 else f"measured on all {n} clips")  # fmt: skip
    ours_how = f"measured on all {n} clips ({o['batches']} batches)"
    rows = [
        _row("encode", "throughput", n / p["seconds_all"], n / o["seconds"], "clips/s", "higher", paper_how, ours_how),
        _row("encode", "throughput", e["audio_s"] / p["seconds_all"], e["audio_s"] / o["seconds"], "audio s/s", "higher",
             paper_how, ours_how),
        _row("encode", f"time for {n} clips", p["seconds_all"], o["seconds"], "s", "lower", paper_how, ours_how),
    ]  # fmt: skip
    if p["peak_bytes"] > 0 and o["peak_bytes"] > 0:
        rows.append(_row("encode", f"peak memory ({o['memory_kind']})", p["peak_bytes"] / 2**20, o["peak_bytes"] / 2**20,
                         "MiB", "lower", f"measured ({p['clips_timed']} clips)", "measured"))  # fmt: skip
    return rows


def cv_rows(c: Dict[str, Any]) -> List[Dict[str, Any]]:
    ours, est = c["ours"], c["paper"]
    folds, epochs = len(ours["folds_all"]), ours["epochs"]
    ours_how = ("measured" if not ours["extrapolated"]
                else f"measured {len(ours['folds_run'])} of {folds} folds, training time extrapolated")  # fmt: skip
    ours_how += f"; cache {'cold' if ours['clips_missing_before'] else 'warm'} ({ours['clips_missing_before']} clips encoded)"
    return [
        _row("cv", f"one CV ({folds} folds x {epochs} epochs), audio to summary", est["total_s"], ours["total_s"], "s",
             "lower", "estimated from measured per-clip encode, head step, eval and file-read times", ours_how),
    ]  # fmt: skip


def cache_rows(c: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [
        _row("cache", "bytes per clip and layer", c["paper_bytes_per_clip_layer"] / 1e6, c["ours_bytes_per_clip_layer"] / 1e6,
             "MB", "lower", "measured (.npy of 1500 x d fp32)",
             f"measured ({c['clips']} clips x {len(c['layers'])} layers, {c['cache_dtype']}, mean {c['mean_frames']:.0f} frames)"),
    ]  # fmt: skip


def _fmt(x: float) -> str:
    if x == float("inf"):
        return "inf"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def format_report(report: Dict[str, Any]) -> str:
    s = report["setup"]
    lines = [
        f"### `ser bench` {report['machine']['date']}",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Setup: encoder `{s['encoder']}` ({s['num_layers']} layers, d={s['dim']}), requested layers {s['layers']}, "
        f"clips: {s['clips_desc']}; ours: policy {s['policy']}, {s['dtype']}, batch <= {s['batch_size']} "
        f"length-sorted, blocks 1..{max(s['layers'])} run{', torch.compile' if s['compile'] else ''}; "
        f"paper: 30 s padding, fp32, all {s['num_layers']} blocks, batch 1.",
        "",
        "| part | metric | paper recipe | ours | ours better by | paper: how | ours: how |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['part']} | {r['metric']} ({r['unit']}) | {_fmt(r['paper'])} | {_fmt(r['ours'])} | "
            f"{_fmt(r['ratio'])}x | {r['paper_how']} | {r['ours_how']} |"
        )
    if report.get("encode"):
        o = report["encode"]["ours"]
        lines += ["", f"Ours, split: front end {o['frontend_s']:.2f} s, encoder {o['encoder_s']:.2f} s "
                      f"(features left in device memory; copies to the host and cache writes are not in the encode rows)."]  # fmt: skip
    if report.get("policies"):
        lines += ["", "| policy (ours) | clips/s | audio s/s | encoder frames |", "|---|---|---|---|"]
        for p in report["policies"]:
            lines.append(f"| {p['policy']} | {_fmt(p['clips_per_s'])} | {_fmt(p['audio_s_per_s'])} | {p['encoder_frames']} |")
    if report.get("cv"):
        o, e = report["cv"]["ours"], report["cv"]["paper"]
        lines += [
            "",
            f"CV detail. Ours (measured): encode/cache fill {o['encode_s']:.1f} s + `ser cv` {o['train_s']:.1f} s for folds "
            f"{o['folds_run']} (of {len(o['folds_all'])}), {o['epochs']} epochs; mean test UA {100 * o['ua']:.2f}"
            f"{' (synthetic labels: meaningless)' if report['setup']['clips_desc'].startswith('synthetic') else ''}. Paper (estimated): encode {e['encode_s']:.0f} s + train "
            f"{e['train_s']:.0f} s + test-fold eval {e['eval_s']:.0f} s + fp32 file reads {e['read_s']:.0f} s, from "
            f"measured {report['cv']['pieces']['per_clip_encode_s']:.3f} s/clip encode, "
            f"{report['cv']['pieces']['train_step_s'] * 1000:.1f} ms/step (16 x 1500 frames), "
            f"{report['cv']['pieces']['eval_clip_s'] * 1000:.2f} ms/clip eval, "
            f"{report['cv']['pieces']['read_file_s'] * 1000:.2f} ms/file read.",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def emit_report(args: Any, text: str, payload: dict) -> None:
    """Print a part's report, append it to --write (unless --no-write) and store `payload` in --json."""
    from pathlib import Path

    from ser_lightning.utils.io import append_markdown, atomic_write_json

    print(text)
    if not args.no_write:
        append_markdown(Path(args.write), text)
        print(f"[ser bench] appended to {args.write}")
    if args.json:
        atomic_write_json(args.json, payload)
