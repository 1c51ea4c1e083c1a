"""Speaker-independent folds: test speakers per fold, validation speakers drawn from the training speakers.

Validation never comes from the test fold, and no speaker is in two of train / val / test: both are
checked in code (`check_independence`) for every split that is built.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ser_lightning.data.corpora.base import CorpusTable, Utterance


class FoldError(ValueError):
    pass


@dataclass(frozen=True)
class FoldSplit:
    fold: int
    train_speakers: List[str]
    val_speakers: List[str]
    test_speakers: List[str]


def speakers_per_class(table: CorpusTable) -> Dict[str, List[str]]:
    """class -> the speakers with at least one clip of it."""
    out: Dict[str, set] = {c: set() for c in table.class_names}
    for u in table.utterances:
        out.setdefault(u.label, set()).add(u.speaker)
    return {c: sorted(v) for c, v in out.items()}


def max_class_complete_folds(table: CorpusTable) -> int:
    """The most speaker-independent folds whose test speakers can each hold every class: a class seen with n
    speakers can be in at most n test folds."""
    return min((len(v) for v in speakers_per_class(table).values()), default=0)


def coverage_problem(table: CorpusTable, num_folds: int) -> Optional[str]:
    """Why `num_folds` test folds cannot each hold every class (None when they can), with the fold count that would."""
    per_class = speakers_per_class(table)
    short = {c: len(v) for c, v in per_class.items() if len(v) < num_folds}
    if not short:
        return None
    best = max_class_complete_folds(table)
    detail = ", ".join(f"{c} ({n} speaker{'s' if n != 1 else ''})" for c, n in sorted(short.items()))
    cure = (f"data.num_folds={best} (or fewer) would give every test fold every class" if best >= 2 else
            "no speaker-independent fold count can give every test fold every class")  # fmt: skip
    return (f"{table.name}: {num_folds} folds cannot each hold every class: {detail} appear with fewer speakers than "
            f"folds; {cure}, or leave those classes out (data.classes)")


def _fold_score(members: List[List[str]], per_speaker: Dict[str, Counter], classes: Sequence[str]) -> tuple:
    """Lower is better: (test folds x classes missing, largest / smallest fold in clips)."""
    missing = sum(1 for m in members for c in classes if not any(per_speaker[s][c] for s in m))
    sizes = [sum(sum(per_speaker[s].values()) for s in m) for m in members]
    return missing, max(sizes) / max(min(sizes), 1)


def _greedy_folds(speakers: Sequence[str], per_speaker: Dict[str, Counter], k: int, rng: random.Random) -> List[List[str]]:
    """Largest speaker first (ties in seeded order) into the fold that lacks most of its classes, then the smallest."""
    order = list(speakers)
    rng.shuffle(order)
    order.sort(key=lambda s: -sum(per_speaker[s].values()))
    members: List[List[str]] = [[] for _ in range(k)]
    hist: List[Counter] = [Counter() for _ in range(k)]
    for s in order:
        best = min(range(k), key=lambda f: (len(members[f]) > 0, sum(1 for c in per_speaker[s] if hist[f][c]),
                                            sum(hist[f].values())))  # fmt: skip
        members[best].append(s)
        hist[best] += per_speaker[s]
    return [sorted(m) for m in members]


def auto_speaker_folds(table: CorpusTable, num_folds: int, seed: int = 0, candidates: int = 32) -> Dict[int, List[str]]:
    """Group speakers into k folds stratified by class and balanced in size (seeded).

    scikit-learn's StratifiedGroupKFold (speakers as groups) tried with `candidates` seeded shuffles; the one
    with the fewest test folds missing a class, then the most even fold sizes, wins. Every test fold then holds
    every class wherever the corpus allows it (`coverage_problem` says when it does not, and which fold count would).
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    speakers = table.speakers()
    if len(speakers) < num_folds:
        raise FoldError(f"{table.name}: {len(speakers)} speakers cannot make {num_folds} speaker-independent folds")
    per_speaker: Dict[str, Counter] = defaultdict(Counter)
    for u in table.utterances:
        per_speaker[u.speaker][u.label] += 1
    labels = [u.label for u in table.utterances]
    groups = [u.speaker for u in table.utterances]
    best: Optional[tuple] = None
    rng = random.Random(seed)
    for attempt in range(candidates):
        splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=rng.randrange(2**31))
        try:
            with warnings.catch_warnings():
                # "The least populated class in y has only n members": expected on small corpora, reported by
                # coverage_problem / `ser data stats` with the cure instead
                warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
                tests = [sorted({groups[i] for i in idx}) for _, idx in splitter.split(labels, labels, groups)]
        except ValueError:  # every class has fewer clips than folds: scikit-learn refuses; balance sizes by hand
            tests = _greedy_folds(speakers, per_speaker, num_folds, random.Random(f"{seed}-{attempt}"))
        if any(not m for m in tests):
            continue
        score = _fold_score(tests, per_speaker, table.class_names)
        if best is None or score < best[0]:
            best = (score, tests)
        if score[0] == 0 and score[1] <= 1.25:
            break
    if best is None:
        raise FoldError(f"{table.name}: could not make {num_folds} non-empty speaker folds from {len(speakers)} speakers")
    # folds numbered by their first speaker: the numbering does not depend on the candidate's order
    return {k + 1: m for k, m in enumerate(sorted(best[1]))}


def fold_speakers(table: CorpusTable, num_folds: Optional[int], seed: int) -> Dict[int, List[str]]:
    """Official folds when the corpus has them, otherwise seeded stratified speaker-group folds."""
    if table.folds:
        return table.folds
    return auto_speaker_folds(table, num_folds or 5, seed)


def choose_val_speakers(
    rest: Sequence[str], per_speaker: Dict[str, Counter], classes: Sequence[str], count: int, seed: str,
    min_clips: int = 0,
) -> List[str]:  # fmt: skip
    """Validation speakers among the training speakers `rest`: at least `count` of them (and at least `min_clips`
    clips), covering every class the training speakers have, never taking a class's last training speaker.

    The plain seeded draw (`random.Random(seed).sample(rest, count)`) is kept whenever it already does all that
    (every corpus whose speakers show every class: RAVDESS keeps its validation speakers); otherwise speakers
    are added greedily, in a seeded order, by how many uncovered classes they bring.
    """
    rng = random.Random(seed)
    drawn = sorted(rng.sample(list(rest), count))
    available = {c for s in rest for c in classes if per_speaker[s][c]}

    def covers(val: Sequence[str]) -> bool:
        return {c for s in val for c in classes if per_speaker[s][c]} >= available

    def keeps_train(val: Sequence[str]) -> bool:
        train = [s for s in rest if s not in set(val)]
        return {c for s in train for c in classes if per_speaker[s][c]} >= available

    def clips(val: Sequence[str]) -> int:
        return sum(sum(per_speaker[s].values()) for s in val)

    if covers(drawn) and keeps_train(drawn) and clips(drawn) >= min_clips:
        return drawn
    order = list(rest)
    random.Random(f"{seed}-cover").shuffle(order)
    val: List[str] = []
    while True:
        covered = {c for s in val for c in classes if per_speaker[s][c]}
        done = covered >= available and len(val) >= count and clips(val) >= min_clips
        if done:
            break
        options = [s for s in order if s not in val and keeps_train(val + [s])]
        if not options:
            break
        # most uncovered classes first, then the smallest speaker (validation takes as little training data as it can)
        options.sort(key=lambda s: (-len({c for c in classes if per_speaker[s][c]} - covered), sum(per_speaker[s].values())))
        val.append(options[0])
    return sorted(val)


def make_split(
    table: CorpusTable,
    fold: int,
    num_folds: Optional[int] = None,
    val_speakers: int = 2,
    val_speaker_ids: Optional[Sequence[str]] = None,
    seed: int = 0,
    val_fraction: Optional[float] = None,
    rows: Optional[Sequence[Utterance]] = None,
) -> FoldSplit:
    """The fold's test speakers, and validation speakers from the other folds' speakers that cover every class
    (`choose_val_speakers`; at least `val_speakers`, and with `val_fraction` at least that fraction of the
    non-test clips), unless `val_speaker_ids` names them. `rows`: the clips the run actually uses when they are
    fewer than the corpus' (skipped bad audio, debug subsets): the folds stay the corpus', the validation speakers
    cover the classes of these rows."""
    folds = fold_speakers(table, num_folds, seed)
    rows = table.utterances if rows is None else rows
    if fold not in folds:
        raise FoldError(f"{table.name}: fold {fold} does not exist; available folds: {sorted(folds)}")
    present = {u.speaker for u in rows}
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
        per_speaker: Dict[str, Counter] = defaultdict(Counter)
        for u in rows:
            per_speaker[u.speaker][u.label] += 1
        min_clips = 0
        if val_fraction:
            if not 0 < val_fraction < 1:
                raise FoldError(f"val_fraction={val_fraction}: a fraction of the training clips in (0, 1), e.g. 0.15")
            min_clips = int(val_fraction * sum(sum(per_speaker[s].values()) for s in rest) + 0.999999)
        # seeded by (seed, fold): reproducible, different per fold
        val = choose_val_speakers(rest, per_speaker, table.class_names, val_speakers, f"{seed}-{fold}", min_clips)
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


def missing_classes_message(corpus: CorpusTable, split: FoldSplit, split_name: str, speakers: Sequence[str],
                            missing: Sequence[str], class_names: Sequence[str], num_folds: Optional[int], seed: int) -> str:  # fmt: skip
    """Which split of which fold lacks which classes, the corpus' clips of those classes (a stray label is found by
    its rows), whether the fold count can work at all, and the cures."""
    lines = [f"fold {split.fold}: the {split_name} split has no clips of class(es) {list(missing)} (speakers {list(speakers)})"]
    for c in missing:
        rows = [u for u in corpus.utterances if u.label == c]
        shown = ", ".join(f"{u.path} (speaker {u.speaker})" for u in rows[:5]) + (" ..." if len(rows) > 5 else "")
        lines.append(f"  class {c!r}: {len(rows)} clip(s) from {len({u.speaker for u in rows})} speaker(s) in the corpus: {shown}")
    problem = coverage_problem(corpus, len(fold_speakers(corpus, num_folds, seed)))
    if problem:
        lines.append("  " + problem)
    kept = [c for c in class_names if c not in missing]
    cures = ("more validation speakers (data.val_speakers / data.val_fraction / data.val_speaker_ids), or "
             "data.allow_incomplete_val=true" if split_name == "val" else "or a manifest fold column")  # fmt: skip
    lines.append(f"  to leave the class(es) out: data.classes=[{','.join(kept)}]; to keep them: give them more speakers, "
                 f"fewer folds (data.num_folds), {cures}")  # fmt: skip
    return "\n".join(lines)
