"""Metrics as the challenge scored them (docs/method.md "Metrics and the published numbers")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def top_k(probabilities: np.ndarray, k: int = 3) -> np.ndarray:
    """Indices of the k highest posteriors per row, best first (ties: lower index first)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")
    return order[:, :k]


def map_at_3(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean average precision at 3 with one true label: 1, 1/2, 1/3 for a hit at rank 1, 2, 3."""
    if len(targets) == 0:
        return float("nan")
    hits = top_k(probabilities, 3) == np.asarray(targets)[:, None]
    return float((hits / np.arange(1, hits.shape[1] + 1)).sum(axis=1).mean())  # < 3 classes too


def accuracy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    if len(targets) == 0:
        return float("nan")
    return float((probabilities.argmax(axis=1) == np.asarray(targets)).mean())


def per_class_table(targets: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (labels by index into ``classes``)."""
    from sklearn.metrics import precision_recall_fscore_support  # 1 s import: only when needed

    indices = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=indices, zero_division=0
    )
    return pd.DataFrame(
        {"label": list(classes), "precision": precision, "recall": recall, "f1": f1, "support": support}
    )


def confusion_table(targets: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Confusion matrix with true labels as rows (column ``true_label``) and predictions as columns."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(targets, predicted, labels=np.arange(len(classes)))
    table = pd.DataFrame(matrix, columns=list(classes))
    table.insert(0, "true_label", list(classes))
    return table
