"""Speaker-independent folds: test speakers per fold, validation speakers drawn from the training speakers.

Validation never comes from the test fold, and no speaker is in two of train / val / test: both are
checked in code (`check_independence`) for every split that is built.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ser_lightning.data.corpora.base import CorpusTable


class FoldError(ValueError):
    pass


@dataclass(frozen=True)
class FoldSplit:
    fold: int
    train_speakers: List[str]
    val_speakers: List[str]
    test_speakers: List[str]


def auto_speaker_folds(table: CorpusTable, num_folds: int, seed: int = 0) -> Dict[int, List[str]]:
    """Group speakers into k folds, balancing clip counts and class mix as far as speakers allow (seeded).

    Greedy: speakers in a seeded order, largest first; each goes to the fold whose class histogram it
    brings closest to the corpus-wide proportions (ties broken by fold size).
    """
    speakers = table.speakers()
    if len(speakers) < num_folds:
        raise FoldError(f"{table.name}: {len(speakers)} speakers cannot make {num_folds} speaker-independent folds")
    per_speaker: Dict[str, Counter] = defaultdict(Counter)
    for u in table.utterances:
        per_speaker[u.speaker][u.label] += 1
    total = Counter(u.label for u in table.utterances)
    n_total = sum(total.values())
    rng = random.Random(seed)
    order = speakers[:]
    rng.shuffle(order)
    order.sort(key=lambda s: -sum(per_speaker[s].values()))
    folds: List[Counter] = [Counter() for _ in range(num_folds)]
    members: List[List[str]] = [[] for _ in range(num_folds)]

    def cost(hist: Counter) -> float:
        n = sum(hist.values()) or 1
        return sum(abs(hist[c] / n - total[c] / n_total) for c in total)

    for s in order:
        # empty folds first so every fold gets a speaker, then the best class balance, then the smallest fold
        best = min(
            range(num_folds),
            key=lambda k: (len(members[k]) > 0, cost(folds[k] + per_speaker[s]), sum(folds[k].values())),
        )
        folds[best] += per_speaker[s]
        members[best].append(s)
    return {k + 1: sorted(m) for k, m in enumerate(members)}


def fold_speakers(table: CorpusTable, num_folds: Optional[int], seed: int) -> Dict[int, List[str]]:
    """Official folds when the corpus has them, otherwise seeded speaker-group folds."""
    if table.folds:
        return table.folds
    return auto_speaker_folds(table, num_folds or 5, seed)


def make_split(
    table: CorpusTable,
    fold: int,
    num_folds: Optional[int] = None,
    val_speakers: int = 2,
    val_speaker_ids: Optional[Sequence[str]] = None,
    seed: int = 0,
) -> FoldSplit:
    folds = fold_speakers(table, num_folds, seed)
    if fold not in folds:
        raise FoldError(f"{table.name}: fold {fold} does not exist; available folds: {sorted(folds)}")
    present = set(table.speakers())
    test = sorted(s for s in folds[fold] if s in present)
    if not test:
        raise FoldError(f"{table.name}: fold {fold} has no utterances (test speakers {folds[fold]})")
    rest = sorted(present - set(test))
    if val_speaker_ids:
        val = sorted(val_speaker_ids)
        bad = [s for s in val if s not in rest]
        if bad:
            where = "in the test fold" if set(bad) & set(test) else "unknown"
            raise FoldError(f"validation speakers {bad} are {where}; choose among training speakers: {rest}")
    else:
        if val_speakers < 1 or val_speakers >= len(rest):
            raise FoldError(f"val_speakers={val_speakers}: need 1..{len(rest) - 1} of the {len(rest)} training speakers")
        # seeded by (seed, fold): reproducible, different per fold
        val = sorted(random.Random(f"{seed}-{fold}").sample(rest, val_speakers))
    train = sorted(set(rest) - set(val))
    split = FoldSplit(fold, train, val, test)
    check_independence(split)
    return split


def check_independence(split: FoldSplit) -> None:
    """No speaker in two of train / val / test; raise if the split breaks speaker independence."""
    tr, va, te = set(split.train_speakers), set(split.val_speakers), set(split.test_speakers)
    overlaps = {"train&val": tr & va, "train&test": tr & te, "val&test": va & te}
    bad = {k: sorted(v) for k, v in overlaps.items() if v}
    if bad:
        raise FoldError(f"fold {split.fold} is not speaker-independent: {bad}")
    if not tr or not va or not te:
        raise FoldError(f"fold {split.fold}: empty split (train {len(tr)}, val {len(va)}, test {len(te)} speakers)")


def check_classes(split_name: str, labels: Sequence[str], class_names: Sequence[str]) -> List[str]:
    """Classes absent from a split (the caller decides whether that is an error or a warning)."""
    seen = set(labels)
    return [c for c in class_names if c not in seen]


def check_fold_classes(split_labels: Dict[str, Sequence[str]], class_names: Sequence[str], fold: int) -> None:
    """Raise FoldError when a split of a fold lacks a class (its recall / UA would be undefined).

    split_labels: split name (train / val / test) -> the labels of its clips. The message names the fold,
    every split that misses classes, and which classes.
    """
    problems = {split: check_classes(split, labels, class_names) for split, labels in split_labels.items()}
    problems = {split: missing for split, missing in problems.items() if missing}
    if problems:
        detail = "; ".join(f"{split} split has no {', '.join(missing)}" for split, missing in problems.items())
        raise FoldError(
            f"fold {fold}: {detail} (classes: {', '.join(class_names)}). Choose other validation speakers "
            "(data.val_speaker_ids / data.val_speakers), other folds, or fewer classes (data.classes)."
        )
