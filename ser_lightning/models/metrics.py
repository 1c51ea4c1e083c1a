"""torchmetrics per stage: WA (micro accuracy), UA (macro recall), macro / weighted F1, per-class recall named
by emotion, confusion matrix (rows = true class, in class_names order)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score, MulticlassRecall


def build_metrics(class_names: Sequence[str]) -> MetricCollection:
    """The scalar metrics of one stage; clone with `.clone(prefix="val/")` per stage."""
    n = len(class_names)
    return MetricCollection(
        {
            "wa": MulticlassAccuracy(num_classes=n, average="micro"),
            "ua": MulticlassRecall(num_classes=n, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes=n, average="macro"),
            "f1_weighted": MulticlassF1Score(num_classes=n, average="weighted"),
            "recall": ClasswiseWrapper(MulticlassRecall(num_classes=n, average=None), labels=list(class_names), prefix="recall_"),
        },
        compute_groups=False,
    )


def build_confusion(class_names: Sequence[str]) -> MulticlassConfusionMatrix:
    return MulticlassConfusionMatrix(num_classes=len(class_names))


def to_floats(values: Dict[str, torch.Tensor]) -> Dict[str, float]:
    return {k: float(v) for k, v in values.items()}


def confusion_to_list(cm: torch.Tensor) -> List[List[int]]:
    return [[int(x) for x in row] for row in cm.tolist()]


def confusion_metrics(cm: Sequence[Sequence[int]]) -> Dict[str, float]:
    """WA, UA, macro / weighted F1 of a confusion matrix (rows = true class): the metrics of the concatenated
    predictions it counts (used for the pooled metrics of a CV). A class absent from the rows is left out of UA
    and macro F1 (its recall is undefined) and listed in `absent`."""
    n = len(cm)
    support = [sum(cm[i]) for i in range(n)]
    predicted = [sum(cm[i][j] for i in range(n)) for j in range(n)]
    total = sum(support)
    present = [i for i in range(n) if support[i] > 0]
    recall = {i: cm[i][i] / support[i] for i in present}
    f1 = {i: 2 * cm[i][i] / (support[i] + predicted[i]) for i in present}
    return {
        "wa": sum(cm[i][i] for i in range(n)) / total if total else 0.0,
        "ua": sum(recall.values()) / len(present) if present else 0.0,
        "f1_macro": sum(f1.values()) / len(present) if present else 0.0,
        "f1_weighted": sum(f1[i] * support[i] for i in present) / total if total else 0.0,
        "absent": [i for i in range(n) if support[i] == 0],
    }
