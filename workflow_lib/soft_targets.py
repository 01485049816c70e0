"""Soft relabelling of training targets (issue 22, item 2): the pure target arithmetic.

Not part of the paper's method. After daisukelab's FSDKaggle2019 solution, which softened
targets with class co-occurrence probabilities and found it acted as a regulariser "like
mixup", a fine-tuning job could replace a clip's hard target ``t`` by

    (1 - strength) * t + strength * S(t)

This module holds only that arithmetic, as pure numpy functions, so it can be checked by
hand; :func:`soften` applies it to a fine-tuning job's training clips (chain option
``soft_relabel``, job setting ``fit.soft_relabel``, applied in
``workflow_lib.stages.training_targets``). Off unless a chain sets it.

``S`` is:

* multi-label (:func:`cooccurrence`, :func:`multilabel_soft_targets`): with ``P(j | i)`` the
  fraction of the verified training clips labelled ``i`` that are also labelled ``j``
  (``P(i | i) = 1``; a class no verified clip carries has the row ``e_i``, i.e. no spread),
  ``S(t) = sum_i t_i P(. | i) / sum_i t_i``: the mean of its labels' co-occurrence rows,
  each value in [0, 1]. Normalising by the number of labels (rather than summing) keeps
  every value a probability without clipping, and a clip's own labels keep S = 1, so a hard
  label stays at exactly 1 and an absent class rises to at most ``strength``. A clip with no
  label keeps its all-zero row.
* single-label, ``towards: prior`` (the default; :func:`prior_smoothing`): uniform label
  smoothing towards the class prior ``p`` of the verified training clips, ``S(c) = p``.
* single-label, ``towards: confusion`` (:func:`confusion_rows`, :func:`confusion_smoothing`):
  label smoothing towards the confusion structure of the verified clips' out-of-fold
  predictions, ``S(c) = P(predicted | true = c)``: the mean posterior row of the fold's
  verified training clips labelled ``c``, each predicted by the previous iteration's model of
  its own fold, which did not train on it (the self-verification job's
  ``valid_posteriors.csv``; the fold's own validation clips never count). A class with no such
  clip has the row ``e_c`` (no spread), as unseen classes do in the multi-label table.

In both single-label forms rows still sum to 1 and the true class keeps at least
``1 - strength``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: What single-label soft relabelling smooths towards (``chains.<name>.soft_relabel.towards``):
#: the class prior (the default) or the confusion rows of the out-of-fold predictions.
TOWARDS = ("prior", "confusion")
#: The default of ``towards``: a job that leaves it out keeps the record it had before it existed.
DEFAULT_TOWARDS = TOWARDS[0]


@dataclass(frozen=True, kw_only=True)
class SoftRelabelSettings:
    """A fine-tuning job's ``fit.soft_relabel`` (config ``chains.<name>.soft_relabel``)."""

    strength: float  # weight of S(t) in the soft target
    verified: bool = False  # also soften the verified clips' targets (default: trusted unverified only)
    towards: str = DEFAULT_TOWARDS  # single-label S: the class prior, or the confusion rows

    def __post_init__(self) -> None:
        """An unknown ``towards`` would silently mean the prior; refuse it."""
        if self.towards not in TOWARDS:
            raise ValueError(f"soft relabelling towards {self.towards!r}: one of {', '.join(TOWARDS)}")

    @classmethod
    def from_mapping(cls, value: SoftRelabelSettings | dict[str, Any] | None) -> SoftRelabelSettings | None:
        """From a job's ``fit.soft_relabel``; None when absent (off)."""
        return cls(**value) if isinstance(value, dict) else value

    def record(self) -> dict[str, Any]:
        """The settings for a run's fingerprint: ``towards`` only when it is not the default,
        so the fingerprints of runs written before it existed stay as they were (their
        checkpoints still resume) and naming the default changes nothing."""
        fields = {"strength": self.strength, "verified": self.verified, "towards": self.towards}
        if self.towards == DEFAULT_TOWARDS:
            fields.pop("towards")
        return fields


def _check_strength(strength: float) -> None:
    """A strength outside [0, 1] would give negative or over-one targets; refuse it early."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"soft relabelling strength must be in [0, 1], got {strength}")


def cooccurrence(verified: np.ndarray) -> np.ndarray:
    """``P(j | i)`` (row ``i``, column ``j``) from the multi-hot rows of verified clips.

    Why the verified clips only: unverified labels are the noise being corrected, so they
    must not shape the correction. A class with no verified clip gets the identity row,
    which leaves its clips' targets unchanged rather than inventing co-occurrences."""
    labels = np.asarray(verified, dtype=np.float64)
    if labels.ndim != 2:
        raise ValueError(f"verified labels must be a 2-D multi-hot array, got shape {labels.shape}")
    counts = labels.T @ labels  # counts[i, j]: clips labelled both i and j
    per_class = np.diag(counts).copy()
    n_classes = labels.shape[1]
    table = np.eye(n_classes)
    seen = per_class > 0
    table[seen] = counts[seen] / per_class[seen, None]
    return table


def multilabel_soft_targets(targets: np.ndarray, table: np.ndarray, strength: float) -> np.ndarray:
    """``(1 - strength) * t + strength * S(t)`` for multi-hot rows ``targets``, with
    ``S(t)`` the mean of the co-occurrence rows (``table``, :func:`cooccurrence`) of the
    row's labels. Values stay in [0, 1] and labelled classes stay at 1 (see the module
    docstring); label-free rows stay zero."""
    _check_strength(strength)
    hard = np.asarray(targets, dtype=np.float64)
    n_labels = hard.sum(axis=1, keepdims=True)
    spread = np.divide(hard @ table, n_labels, out=np.zeros_like(hard), where=n_labels > 0)
    return (1.0 - strength) * hard + strength * spread


def class_prior(verified: np.ndarray, n_classes: int) -> np.ndarray:
    """The class frequencies of the verified clips' single labels (class indices); uniform
    when there is none, so smoothing never divides by zero."""
    indices = np.asarray(verified, dtype=np.int64)
    if indices.size == 0:
        return np.full(n_classes, 1.0 / n_classes)
    counts = np.bincount(indices, minlength=n_classes).astype(np.float64)
    return counts / counts.sum()


def prior_smoothing(labels: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    """Single-label soft targets: ``(1 - strength) * one_hot(label) + strength * prior``.

    Rows sum to 1 (``prior`` does), so :func:`workflow_lib.training.soft_cross_entropy`
    takes them as they are; the true class keeps at least ``1 - strength``."""
    _check_strength(strength)
    weights = np.asarray(prior, dtype=np.float64)
    if not np.isclose(weights.sum(), 1.0) or (weights < 0).any():
        raise ValueError("the class prior must be a probability vector")
    hard = np.eye(weights.size)[np.asarray(labels, dtype=np.int64)]
    return (1.0 - strength) * hard + strength * weights[None, :]


def confusion_rows(labels: np.ndarray, posteriors: np.ndarray, n_classes: int) -> np.ndarray:
    """The soft confusion matrix ``P(predicted | true = c)`` (row ``c``): the mean posterior
    row of the clips labelled ``c`` (class indices ``labels``, one posterior row each),
    normalised to sum to 1 (CSV rounding leaves softmax rows a hair off). Why a mean of
    posteriors rather than a count of argmax predictions: it keeps how unsure the model was,
    and a class with few clips still gets a smooth row. A class with no clip gets ``e_c``: no
    evidence, no spread, rather than an invented confusion."""
    indices = np.asarray(labels, dtype=np.int64)
    rows = np.asarray(posteriors, dtype=np.float64)
    if rows.shape != (indices.size, n_classes):
        raise ValueError(f"posteriors of shape {rows.shape}, expected ({indices.size}, {n_classes})")
    if not np.isfinite(rows).all() or (rows < 0).any():
        raise ValueError("posteriors must be finite and non-negative")
    sums = np.zeros((n_classes, n_classes))
    np.add.at(sums, indices, rows)
    counts = np.bincount(indices, minlength=n_classes)
    seen = counts > 0
    totals = sums[seen].sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        raise ValueError("a class's clips have all-zero posteriors: no confusion row to take")
    table = np.eye(n_classes)
    table[seen] = sums[seen] / totals
    return table


def confusion_smoothing(labels: np.ndarray, table: np.ndarray, strength: float) -> np.ndarray:
    """Single-label soft targets: ``(1 - strength) * one_hot(label) + strength * table[label]``,
    with ``table`` row-stochastic (:func:`confusion_rows`), so rows sum to 1 and
    :func:`workflow_lib.training.soft_cross_entropy` takes them as they are."""
    _check_strength(strength)
    rows = np.asarray(table, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] != rows.shape[1]:
        raise ValueError(f"the confusion table must be square, got shape {rows.shape}")
    if (rows < 0).any() or not np.allclose(rows.sum(axis=1), 1.0):
        raise ValueError("every row of the confusion table must be a probability vector")
    indices = np.asarray(labels, dtype=np.int64)
    return (1.0 - strength) * np.eye(rows.shape[0])[indices] + strength * rows[indices]


def soften(
    targets: np.ndarray,
    verified: np.ndarray,
    soften_rows: np.ndarray,
    strength: float,
    n_classes: int,
    confusion: np.ndarray | None = None,
) -> np.ndarray:
    """A training set's soft target rows: ``targets`` (class indices, or multi-hot rows),
    ``verified`` (bool per clip: which clips estimate S), ``soften_rows`` (bool per clip:
    which rows are softened; the others stay hard, as float rows). Why S comes from the
    verified training clips only: they are the fold's clean labels, and validation clips never
    shape training targets (no leak into the fold's model selection). ``confusion``
    (single-label only): the table of :func:`confusion_rows`, estimated by the caller on the
    same verified training clips, in place of the class prior."""
    hard = np.asarray(targets)
    verified, soften_rows = np.asarray(verified, dtype=bool), np.asarray(soften_rows, dtype=bool)
    if hard.ndim == 2:
        if confusion is not None:
            raise ValueError("smoothing towards the confusion rows is single-label only")
        rows = hard.astype(np.float64)
        soft = multilabel_soft_targets(rows, cooccurrence(rows[verified]), strength)
    else:
        rows = np.eye(n_classes)[hard.astype(np.int64)]
        if confusion is None:
            soft = prior_smoothing(hard, class_prior(hard[verified], n_classes), strength)
        else:
            soft = confusion_smoothing(hard, confusion, strength)
    return np.where(soften_rows[:, None], soft, rows).astype(np.float32)
