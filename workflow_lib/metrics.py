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
    """Top-1 accuracy of class-index ``targets``; NaN for no clips (a study must see a
    missing score as missing, not as 0)."""
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
    # scikit-learn: a 1 s import, paid only where these scores are computed
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(targets, predicted, labels=np.arange(len(classes)))
    table = pd.DataFrame(matrix, columns=list(classes))
    table.insert(0, "true_label", list(classes))
    return table


# --- multi-label (DCASE 2019 Task 2) -------------------------------------------------------


def positive_label_precisions(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(n_clips, n_classes) matrix: for each true label of a clip, the precision of the clip's
    label ranking at that label's rank (true labels ranked at or above it / its rank); 0 where
    the label is not true.

    Ties are ranked pessimistically (a label tied with others counts them all as ranked above
    it), as scikit-learn's label ranking average precision does, so the value never depends on
    the order of the classes.
    """
    truth = np.asarray(truth) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape:
        raise ValueError(f"truth {truth.shape} and scores {scores.shape} differ in shape")
    out = np.zeros(scores.shape)
    for rows in np.array_split(np.arange(len(scores)), max(1, len(scores) // 1024)):
        # at_or_above[n, i, j]: label j's score >= label i's score in clip n (in chunks of
        # about 1,024 clips: the cube of 20,000 clips x 80 classes would not fit in memory)
        at_or_above = scores[rows, None, :] >= scores[rows, :, None]
        rank = at_or_above.sum(axis=2)
        true_at_or_above = (at_or_above & truth[rows, None, :]).sum(axis=2)
        out[rows] = np.where(truth[rows], true_at_or_above / np.maximum(rank, 1), 0.0)
    return out


def per_class_lwlrap(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lwlrap of each class, weight of each class = its share of all true labels).

    A class with no true label gets lwlrap NaN and weight 0.
    """
    truth = np.asarray(truth) > 0.5
    precisions = positive_label_precisions(truth, scores)
    counts = truth.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, precisions.sum(axis=0) / counts, np.nan)
    weights = counts / max(int(counts.sum()), 1)
    return per_class, weights


def lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted label-ranking average precision, the DCASE 2019 Task 2 metric.

    The mean, over every (clip, true label) pair, of the precision of the clip's ranking at
    that label: each true label weighs the same, so each class weighs by its number of true
    labels. NaN when there is no true label at all.
    """
    truth = np.asarray(truth) > 0.5
    if not truth.any():
        return float("nan")
    return float(positive_label_precisions(truth, scores).sum() / truth.sum())
