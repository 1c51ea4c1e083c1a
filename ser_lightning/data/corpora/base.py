"""The one interface every corpus implements: a loader that returns a CorpusTable.

A corpus file knows file layouts and label codes only: nothing of folds' validation split, audio decoding
or features. Adding a corpus = one small file with a function decorated by `@register("name")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

CorpusLoader = Callable[..., "CorpusTable"]
CORPORA: Dict[str, CorpusLoader] = {}


def register(name: str) -> Callable[[CorpusLoader], CorpusLoader]:
    def wrap(fn: CorpusLoader) -> CorpusLoader:
        CORPORA[name] = fn
        return fn

    return wrap


@dataclass(frozen=True)
class Utterance:
    path: str  # absolute file path, or `archive.zip::member` for zipped corpora
    label: str  # class name after the corpus' label mapping
    speaker: str  # globally unique speaker id within the corpus (e.g. "Ses01F", "F01", "Actor_03")
    key: str = ""  # corpus-specific utterance id (file stem by default)


@dataclass
class CorpusTable:
    name: str
    utterances: List[Utterance]
    class_names: List[str]  # label order = class index order (confusion-matrix rows)
    # official folds: fold number (1-based) -> test speakers; None -> speaker folds are made automatically
    folds: Optional[Dict[int, List[str]]] = None
    # utterances left out on purpose by the protocol (e.g. ShEMO fear, IEMOCAP 'xxx'): counted in reports
    excluded: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    # the corpus' protocol default class subset, applied by select_classes when `classes` is None
    # (e.g. ShEMO: fear dropped); None = every class in class_names
    default_classes: Optional[List[str]] = None

    def counts(self) -> Dict[str, int]:
        out = {c: 0 for c in self.class_names}
        for u in self.utterances:
            out[u.label] += 1
        return out

    def speakers(self) -> List[str]:
        return sorted({u.speaker for u in self.utterances})


def select_classes(table: CorpusTable, classes: Optional[Sequence[str]]) -> CorpusTable:
    """Keep (and order) a subset of classes; the rest is counted as excluded, never silently dropped.

    `classes` None/empty -> the corpus default (`table.default_classes`, e.g. ShEMO without fear), or every
    class when the corpus has no default.
    """
    if not classes:
        classes = table.default_classes
        if not classes:
            return table
    classes = [str(c) for c in classes]
    unknown = [c for c in classes if c not in table.class_names]
    if unknown:
        raise ValueError(
            f"{table.name}: unknown class(es) {unknown}; available: {', '.join(table.class_names)}"
        )
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ValueError(f"{table.name}: class(es) {repeated} listed more than once in classes={classes}")
    kept = [u for u in table.utterances if u.label in classes]
    excluded = dict(table.excluded)
    for u in table.utterances:
        if u.label not in classes:
            excluded[f"class {u.label} not selected"] = excluded.get(f"class {u.label} not selected", 0) + 1
    return CorpusTable(
        name=table.name,
        utterances=kept,
        class_names=list(classes),
        folds=table.folds,
        excluded=excluded,
        notes=table.notes,
    )


def get_loader(name: str) -> CorpusLoader:
    from ser_lightning.data import corpora  # noqa: F401  (registers every corpus module)

    if name not in CORPORA:
        raise ValueError(f"unknown corpus '{name}'; available: {', '.join(sorted(CORPORA))}")
    return CORPORA[name]
