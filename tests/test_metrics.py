"""Metrics equal hand-computed WA / UA / F1 / confusion on a small example."""

import torch

from ser_lightning.models.metrics import build_confusion, build_metrics

CLASSES = ["angry", "happy", "sad"]
# true:  a a a a h h s s s s   (4 angry, 2 happy, 4 sad)
# pred:  a a a h h a s s a s
TRUE = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
PRED = torch.tensor([0, 0, 0, 1, 1, 0, 2, 2, 0, 2])


def test_wa_ua_f1_by_hand():
    m = build_metrics(CLASSES).clone(prefix="test/")
    m.update(PRED, TRUE)
    got = {k: float(v) for k, v in m.compute().items()}
    # recalls: angry 3/4, happy 1/2, sad 3/4; precisions: angry 3/5, happy 1/2, sad 3/3
    recall = [3 / 4, 1 / 2, 3 / 4]
    precision = [3 / 5, 1 / 2, 1.0]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    support = [4, 2, 4]
    assert abs(got["test/wa"] - 7 / 10) < 1e-6
    assert abs(got["test/ua"] - sum(recall) / 3) < 1e-6
    assert abs(got["test/f1_macro"] - sum(f1) / 3) < 1e-6
    assert abs(got["test/f1_weighted"] - sum(f * s for f, s in zip(f1, support)) / 10) < 1e-6
    assert abs(got["test/recall_happy"] - 0.5) < 1e-6
    # WA and UA differ on imbalanced data: the test would catch swapping them
    assert abs(got["test/wa"] - got["test/ua"]) > 0.03


def test_confusion_rows_are_true_classes():
    cm = build_confusion(CLASSES)
    cm.update(PRED, TRUE)
    assert cm.compute().tolist() == [[3, 1, 0], [1, 1, 0], [1, 0, 3]]


def test_stage_collections_are_independent():
    base = build_metrics(CLASSES)
    val, test = base.clone(prefix="val/"), base.clone(prefix="test/")
    val.update(PRED, TRUE)
    test.update(TRUE, TRUE)
    assert float(val.compute()["val/wa"]) < 1.0
    assert float(test.compute()["test/wa"]) == 1.0
