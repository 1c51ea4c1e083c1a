"""Corpus -> validated utterance table as a Hugging Face `datasets.Dataset` (Arrow, cached on disk).

Every clip is decoded once here: its duration and content hash are stored, and bad input is handled by the
one policy (`data.on_bad_audio`): `error` stops with every bad file and its reason listed; `skip` drops them,
and the skip is counted and listed in the report (`bad_audio.json`). Nothing is dropped silently.

The cached table (`<table_cache_dir>/<corpus>-<fingerprint>/arrow/`) is verified on every load:
`COMPLETE.json` lists the sha256 and size of every file the table was saved as and carries its own checksum,
and the loaded rows must agree with themselves (`label` is the index of `label_name`, the row count and the
class names are the ones stored). A cache that fails any check, or cannot be read, is moved aside to
`<table_cache_dir>/corrupt/` and rebuilt, with one printed line naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ser_lightning.audio import ZIP_SEPARATOR, BadAudioError, decode
from ser_lightning.data.corpora.base import CorpusTable, Utterance, get_loader, select_classes
from ser_lightning.utils.io import atomic_write_json, json_digest, sha256_file

TABLE_VERSION = 1
CACHE_FORMAT = 2  # COMPLETE.json: 1 (no checksums, older code) or 2 (file checksums + its own checksum)


class TableCacheCorrupt(RuntimeError):
    """A cached table that does not verify; the message names the file and the problem. stale: written by older
    code (no checksums), not damaged."""

    def __init__(self, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


@dataclass
class UtteranceTable:
    dataset: Any  # datasets.Dataset: path, label, label_name, speaker, key, duration, sha256, cropped
    corpus: CorpusTable
    bad_audio: List[Dict[str, str]] = field(default_factory=list)
    fingerprint: str = ""
    debug_dropped: int = 0  # utterances left out by data.limit_per_class / data.max_samples

    @property
    def class_names(self) -> List[str]:
        return self.corpus.class_names

    def report(self) -> Dict[str, Any]:
        """Counts for table_report.json: kept, skipped (bad audio), cropped (longer than max_seconds), per class."""
        names = self.dataset["label_name"]
        cropped_flags = self.dataset["cropped"]
        paths = self.dataset["path"]
        counts = {c: 0 for c in self.class_names}
        for n in names:
            counts[n] += 1
        cropped = [p for p, c in zip(paths, cropped_flags) if c]
        return {
            "corpus": self.corpus.name,
            "fingerprint": self.fingerprint,
            "clips": len(names),
            "skipped": len(self.bad_audio),
            "cropped": len(cropped),
            "counts": counts,
            "excluded": dict(self.corpus.excluded),
            "debug_subset_dropped": self.debug_dropped,
            "notes": list(self.corpus.notes),
            "cropped_files": cropped,
            "skipped_files": list(self.bad_audio),
        }


def _file_signature(path: str) -> str:
    target = path.split(ZIP_SEPARATOR, 1)[0]
    try:
        st = os.stat(target)
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"{path}|missing"


def _debug_subset(utts: List[Utterance], limit_per_class: Optional[int], max_samples: Optional[int], seed: int) -> List[Utterance]:
    """Seeded, class-stratified subsets for quick runs (data.limit_per_class / data.max_samples)."""
    if not limit_per_class and not max_samples:
        return utts
    rng = random.Random(seed)
    by_class: Dict[str, List[Utterance]] = defaultdict(list)
    for u in utts:
        by_class[u.label].append(u)
    for items in by_class.values():
        rng.shuffle(items)
    if limit_per_class:
        by_class = {c: items[:limit_per_class] for c, items in by_class.items()}
    if max_samples:
        total = sum(len(v) for v in by_class.values())
        if total > max_samples:
            share = max_samples / total
            by_class = {c: items[: max(1, round(len(items) * share))] for c, items in by_class.items()}
    kept = {id(u) for items in by_class.values() for u in items}
    return [u for u in utts if id(u) in kept]


def load_corpus(data_cfg: Dict[str, Any]) -> CorpusTable:
    """Run the corpus loader and apply the class selection."""
    loader = get_loader(data_cfg["name"])
    table = loader(**data_cfg)
    table = select_classes(table, data_cfg.get("classes"))
    if not table.utterances:
        raise ValueError(f"{data_cfg['name']}: no utterances found under {data_cfg.get('root')}")
    return table


class BadAudioReport(BadAudioError):
    """Raised under on_bad_audio=error: every unusable clip of the corpus with its reason, in one message."""

    def __init__(self, corpus: str, bad: List[Dict[str, str]], report_file: Optional[Path] = None) -> None:
        listing = "\n".join(f"  {b['path']}: {b['reason']}" for b in bad)
        where = f" (also listed in {report_file})" if report_file else ""
        message = (
            f"{len(bad)} unusable clip(s) in {corpus}{where}:\n{listing}\n"
            "Fix or remove them, or pass data.on_bad_audio=skip to skip them (counted, listed in bad_audio.json)."
        )
        ValueError.__init__(self, message)
        self.path, self.reason, self.files = bad[0]["path"], message, list(bad)


def build_table(data_cfg: Dict[str, Any], report_dir: Optional[Path] = None) -> UtteranceTable:
    """Build (or reuse from `data.table_cache_dir`) the validated utterance table of a corpus.

    With report_dir, writes `table_report.json` (clips kept, skipped, cropped; per-class counts; exclusions)
    and `bad_audio.json` there; under on_bad_audio=error the bad-file list is written before raising.
    """
    corpus = load_corpus(data_cfg)
    subset_seed = data_cfg.get("subset_seed")
    subset_seed = data_cfg.get("seed", 0) if subset_seed is None else subset_seed
    utts = _debug_subset(corpus.utterances, data_cfg.get("limit_per_class"), data_cfg.get("max_samples"), subset_seed)
    settings = {
        k: data_cfg.get(k)
        for k in ("name", "classes", "sample_rate", "min_seconds", "on_bad_audio", "subset", "merge_excited", "max_seconds")
    }
    settings["class_names"] = list(corpus.class_names)
    h = hashlib.sha256(json.dumps({"v": TABLE_VERSION, "settings": settings}, sort_keys=True, default=str).encode())
    for u in utts:
        h.update(f"{_file_signature(u.path)}|{u.label}|{u.speaker}\n".encode())
    fingerprint = h.hexdigest()[:20]
    cache_root = Path(data_cfg.get("table_cache_dir") or ".ser_cache/tables") / f"{corpus.name}-{fingerprint}"
    cached = _load_verified(cache_root, corpus.class_names)
    if cached is not None:
        dataset, meta = cached
        table = UtteranceTable(dataset, corpus, meta["bad_audio"], fingerprint)
    else:
        rows, bad = _scan(utts, corpus, data_cfg)
        if bad and data_cfg.get("on_bad_audio", "error") != "skip":
            report_file = None
            if report_dir is not None:
                report_file = Path(report_dir) / "bad_audio.json"
                atomic_write_json(report_file, {"skipped": 0, "unusable": len(bad), "files": bad})
            raise BadAudioReport(corpus.name, bad, report_file)
        if not rows["path"]:
            raise ValueError(f"{corpus.name}: every clip was unusable ({len(bad)} bad)")
        table = UtteranceTable(_to_dataset(rows, corpus.class_names), corpus, bad, fingerprint)
        tmp = cache_root.with_name(cache_root.name + f".tmp{os.getpid()}")
        table.dataset.save_to_disk(str(tmp / "arrow"))
        meta = {"format": CACHE_FORMAT, "bad_audio": table.bad_audio, "n": len(table.dataset),
                "class_names": list(corpus.class_names), "files": _file_sums(tmp / "arrow")}  # fmt: skip
        meta["sha256"] = json_digest(meta, "sha256")
        atomic_write_json(tmp / "COMPLETE.json", meta)
        try:
            os.replace(tmp, cache_root)  # atomic publish; a concurrent builder may have won the race
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        cached = _load_verified(cache_root, corpus.class_names)
        if cached is None:  # the table just published does not verify: use the rows built here (in memory)
            print(f"[ser table] using the table built in memory ({cache_root} did not verify)", flush=True)
        else:
            table.dataset = cached[0]
    table.debug_dropped = len(corpus.utterances) - len(utts)
    if report_dir is not None:
        write_reports(table, data_cfg, Path(report_dir))
    return table


def _file_sums(folder: Path) -> Dict[str, List[Any]]:
    """{relative path: [size, sha256]} of every file under folder (the saved Arrow table and its metadata)."""
    return {
        p.relative_to(folder).as_posix(): [p.stat().st_size, sha256_file(p)]
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _verify_table(cache_root: Path, class_names: List[str]) -> Tuple[Any, Dict[str, Any]]:
    """(dataset, meta) of a cached table once every check passes; TableCacheCorrupt naming the file otherwise."""
    import datasets

    done = cache_root / "COMPLETE.json"
    try:
        meta = json.loads(done.read_text())
    except (OSError, ValueError) as e:
        raise TableCacheCorrupt(f"{done}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        # Tables cached by older code (COMPLETE.json without checksums) are treated as stale and rebuilt, not
        # re-verified: nothing could show that their columns (sha256, duration, ...) are still as written, and
        # a rebuild decodes each clip once (the feature cache is keyed by audio content, so it stays valid).
        raise TableCacheCorrupt(f"{done}: written without checksums by an older version", stale=True)
    if meta.get("sha256") != json_digest(meta, "sha256"):
        raise TableCacheCorrupt(f"{done}: checksum mismatch")
    arrow = cache_root / "arrow"
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise TableCacheCorrupt(f"{done}: no file checksums")
    for rel, entry in sorted(files.items()):
        f = arrow / rel
        if not isinstance(entry, list) or len(entry) != 2:
            raise TableCacheCorrupt(f"{done}: malformed checksum entry for {rel}")
        size, digest = entry
        if not f.is_file():
            raise TableCacheCorrupt(f"{f}: missing")
        if f.stat().st_size != size:
            raise TableCacheCorrupt(f"{f}: {f.stat().st_size} bytes, expected {size} (truncated or rewritten)")
        if sha256_file(f) != digest:
            raise TableCacheCorrupt(f"{f}: checksum mismatch (its bytes changed after it was written)")
    try:
        dataset = datasets.load_from_disk(str(arrow))
        labels = dataset.data.column("label").to_pylist()
        names = dataset.data.column("label_name").to_pylist()
        stored_names = list(dataset.features["label"].names)
    except Exception as e:  # noqa: BLE001 - whatever the reader trips on, the cache is rebuilt
        raise TableCacheCorrupt(f"{arrow}: unreadable ({type(e).__name__}: {e})") from None
    n_ok = len(dataset) == len(labels) == len(names) == meta.get("n")
    if not n_ok or not stored_names == list(class_names) == meta.get("class_names"):
        raise TableCacheCorrupt(f"{arrow}: {len(dataset)} rows / classes {stored_names}, expected {meta.get('n')} "
                                f"rows / classes {class_names}")  # fmt: skip
    for row, (label, name) in enumerate(zip(labels, names)):
        if not isinstance(label, int) or not 0 <= label < len(class_names) or class_names[label] != name:
            raise TableCacheCorrupt(f"{arrow}: row {row} has label {label} but label_name {name!r}")
    return dataset, meta


def _load_verified(cache_root: Path, class_names: List[str]) -> Optional[Tuple[Any, Dict[str, Any]]]:
    """The cached table when there is one and it verifies; else None, after one printed line naming the file and
    the problem, a failing cache being moved aside to `<table_cache_dir>/corrupt/` (with REASON.json; one from
    older code without checksums is removed instead) so that the caller rebuilds it."""
    done = cache_root / "COMPLETE.json"
    if not cache_root.exists():
        return None
    try:
        if not done.is_file():  # publishing is atomic, so a folder without its marker was damaged afterwards
            raise TableCacheCorrupt(f"{done}: missing")
        return _verify_table(cache_root, class_names)
    except TableCacheCorrupt as e:
        reason, stale = str(e), e.stale
    tag = uuid.uuid4().hex[:6]
    bad = cache_root.parent / (f".stale-{cache_root.name}-{tag}" if stale else f"corrupt/{cache_root.name}-{tag}")
    try:
        bad.parent.mkdir(exist_ok=True)
        cache_root.rename(bad)
        atomic_write_json(bad / "REASON.json", {"reason": reason})
    except OSError:  # another process moved it first (it rebuilds it too), or it cannot be moved: rebuild anyway
        pass
    if stale:  # nothing wrong with it, only unverifiable: not kept
        import shutil

        shutil.rmtree(bad, ignore_errors=True)
    what = "was cached without checksums" if stale else "does not verify"
    print(f"[ser table] cached table {what}, rebuilding it: {reason}", flush=True)
    return None


def dataset_rows(ds: Any) -> List[Utterance]:
    """The clips a run uses (after skipped bad audio and debug subsets) as utterances, for folds.make_split."""
    return [Utterance(p, label, s) for p, label, s in zip(ds["path"], ds["label_name"], ds["speaker"])]


def write_reports(table: UtteranceTable, data_cfg: Dict[str, Any], report_dir: Path) -> None:
    """`table_report.json` (kept / skipped / cropped counts) and `bad_audio.json` (every skipped file and why).

    Both are always written, so a report folder never keeps a stale list from an earlier run.
    """
    report = table.report()
    report["max_seconds"] = float(data_cfg.get("max_seconds", 30.0))
    report["on_bad_audio"] = data_cfg.get("on_bad_audio", "error")
    atomic_write_json(report_dir / "table_report.json", report)
    atomic_write_json(report_dir / "bad_audio.json", {"skipped": len(table.bad_audio), "files": table.bad_audio})


def _scan(utts: List[Utterance], corpus: CorpusTable, data_cfg: Dict[str, Any]) -> Tuple[Dict[str, list], List[Dict[str, str]]]:
    """Decode every clip once: table rows of the usable ones, and every unusable one with its reason."""
    sr = int(data_cfg.get("sample_rate", 16000))
    min_seconds = float(data_cfg.get("min_seconds", 0.1))
    max_seconds = float(data_cfg.get("max_seconds", 30.0))
    class_index = {c: i for i, c in enumerate(corpus.class_names)}
    rows: Dict[str, list] = defaultdict(list)
    bad: List[Dict[str, str]] = []
    for u in utts:
        try:
            _, info = decode(u.path, sr, min_seconds)
        except BadAudioError as e:
            bad.append({"path": e.path, "reason": e.reason})
            continue
        rows["path"].append(u.path)
        rows["label"].append(class_index[u.label])
        rows["label_name"].append(u.label)
        rows["speaker"].append(u.speaker)
        rows["key"].append(u.key or Path(u.path.split(ZIP_SEPARATOR)[-1]).stem)
        rows["duration"].append(info.duration)
        rows["sha256"].append(info.sha256)
        rows["cropped"].append(info.duration > max_seconds)
    return rows, bad


def _to_dataset(rows: Dict[str, list], class_names: List[str]) -> Any:
    import datasets

    features = datasets.Features(
        {
            "path": datasets.Value("string"),
            "label": datasets.ClassLabel(names=class_names),
            "label_name": datasets.Value("string"),
            "speaker": datasets.Value("string"),
            "key": datasets.Value("string"),
            "duration": datasets.Value("float32"),
            "sha256": datasets.Value("string"),
            "cropped": datasets.Value("bool"),
        }
    )
    return datasets.Dataset.from_dict(dict(rows), features=features)
