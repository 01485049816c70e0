"""Stratified cross-validation folds (docs/method.md "Cross-validation folds").

The training list is shuffled with a fixed seed; the verified and the unverified clips are then
split separately, each into ``n_folds`` folds stratified by label. Fold k's validation part is
verified fold k plus unverified fold k, so each unverified clip is held out from exactly one
fold model: the one allowed to judge it during self-verification.

Label sets (a multi-label dataset) are dealt by iterative stratification (Sechidis, Tsoumakas
and Vlahavas, 2011): the rarest label still to deal goes first, each of its clips to the fold
that most lacks that label; single-label folds are dealt as before, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import UserError
from .labels import SEPARATOR, multi_hot, split_labels
from .task import MULTI, SINGLE, Task

FOLD_COLUMNS = ["fname", "label", "verified", "fold"]


def stratified_assignment(
    labels: np.ndarray, n_folds: int, rng: np.random.Generator, start: int = 0
) -> np.ndarray:
    """Deal each class's clips round-robin over the folds, continuing where the last class stopped.

    Every class then has floor or ceil of n_c / n_folds clips in each fold (within one clip of
    exact), and fold sizes differ by at most one clip overall. Classes with fewer clips than
    folds are dealt the same way: they simply miss some folds.
    """
    folds = np.empty(len(labels), dtype=np.int64)
    for label in sorted(np.unique(labels)):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        folds[members] = (start + np.arange(len(members))) % n_folds
        start = (start + len(members)) % n_folds
    return folds


def iterative_assignment(
    targets: np.ndarray, n_folds: int, rng: np.random.Generator, fold_sizes: np.ndarray | None = None
) -> np.ndarray:
    """Folds of clips with label sets (``targets``: 0/1 matrix, clips x classes).

    Iterative stratification: while clips are left, take the label with the fewest clips left
    (ties: the first), and give each of its clips (in random order) to the fold that most lacks
    the clip's whole label set (the sum of the fold's wants over the clip's labels), then the
    fold that most lacks that label, then clips, then the fold with the fewest clips so far
    (``fold_sizes``: clips given earlier, e.g. in the verified pass), then at random. A clip
    without labels goes to the fold that most lacks clips. Every fold wants 1 / n_folds of each
    label and of the clips.

    Why the whole set first: Sechidis et al. choose by the current label alone, which ignores
    the clip's other labels; the labels dealt last then arrive skewed by the earlier deals and
    too few of their clips are left to even them out (clips of two labels each, 2 folds: one
    label 13 / 1 over the folds instead of 7 / 7). Sets of one label are dealt as before.
    """
    targets = np.asarray(targets) > 0.5
    n_clips = len(targets)
    wanted_labels = np.tile(targets.sum(axis=0) / n_folds, (n_folds, 1))  # (folds, classes)
    wanted_clips = np.full(n_folds, n_clips / n_folds)
    sizes = np.zeros(n_folds) if fold_sizes is None else np.asarray(fold_sizes, dtype=float).copy()
    folds = np.full(n_clips, -1, dtype=np.int64)
    left = targets.copy()
    while left.any():
        counts = left.sum(axis=0)
        label = int(np.flatnonzero(counts == counts[counts > 0].min())[0])
        for clip in rng.permutation(np.flatnonzero(left[:, label])):
            wanted_set = wanted_labels[:, targets[clip]].sum(axis=1)
            fold = _neediest((wanted_set, wanted_labels[:, label], wanted_clips), sizes, rng)
            folds[clip] = fold
            wanted_labels[fold] -= targets[clip]
            wanted_clips[fold] -= 1
            sizes[fold] += 1
            left[clip] = False
    for clip in rng.permutation(np.flatnonzero(folds < 0)):
        fold = _neediest((wanted_clips,), sizes, rng)
        folds[clip] = fold
        wanted_clips[fold] -= 1
        sizes[fold] += 1
    return folds


def _neediest(wants: tuple[np.ndarray, ...], sizes: np.ndarray, rng: np.random.Generator) -> int:
    """The fold with the largest first want, ties by the next wants, then the fewest clips so
    far, then at random (``wants``: per-fold arrays, most important first)."""
    order = np.lexsort((rng.random(len(sizes)), sizes, *(-want for want in reversed(wants))))
    return int(order[0])


def _too_small(train: pd.DataFrame, n_folds: int, task: Task) -> pd.Series:
    """Classes (with clip counts) that have fewer clips carrying them than folds."""
    counts = train["label"].map(task.labels_of).explode().value_counts()
    return counts[counts < n_folds]


def has_label_sets(labels: pd.Series) -> bool:
    """Whether any cell holds more than one label. Class names never contain the separator
    (refused at validation), so only a multi-label dataset has such cells; one whose clips all
    carry one label is stratified exactly as a single-label one, which is what it is."""
    return bool(labels.astype(str).str.contains(SEPARATOR, regex=False).any())


def _deal_labels(shuffled: pd.DataFrame, n_folds: int, rng: np.random.Generator) -> None:
    """Single labels: round-robin per class (:func:`stratified_assignment`), verified clips
    first; the unverified pass continues where the verified one stopped, so sizes stay even."""
    start = 0
    for flag in (1, 0):
        part = shuffled.index[shuffled["verified"].astype(int) == flag]
        labels = shuffled.loc[part, "label"].to_numpy()
        shuffled.loc[part, "fold"] = stratified_assignment(labels, n_folds, rng, start)
        start = (start + len(part)) % n_folds


def _deal_label_sets(shuffled: pd.DataFrame, n_folds: int, rng: np.random.Generator) -> None:
    """Label sets: iterative stratification (:func:`iterative_assignment`), verified clips
    first; the unverified pass evens out the fold sizes the verified one left."""
    classes = sorted(shuffled["label"].map(split_labels).explode().dropna().unique())
    sizes = np.zeros(n_folds)
    for flag in (1, 0):
        part = shuffled.index[shuffled["verified"].astype(int) == flag]
        targets = multi_hot(shuffled.loc[part, "label"].tolist(), classes)
        shuffled.loc[part, "fold"] = iterative_assignment(targets, n_folds, rng, sizes)
        sizes += np.bincount(shuffled.loc[part, "fold"].astype(int), minlength=n_folds)


#: How each task deals the shuffled clips over the folds (in place, column ``fold``).
DEALERS = {SINGLE.name: _deal_labels, MULTI.name: _deal_label_sets}


def make_folds(train: pd.DataFrame, n_folds: int, seed: int, *, task: Task | None = None) -> pd.DataFrame:
    """Assign a fold to every training clip; verified and unverified stratified separately.

    ``task``: multi-label deals label sets by :func:`iterative_assignment`, single-label
    round-robin per class; None: multi-label when any clip has more than one label
    (:func:`has_label_sets`), which is how the workflow's folds job calls it.
    """
    if task is None:
        task = MULTI if has_label_sets(train["label"]) else SINGLE
    too_small = _too_small(train, n_folds, task)
    if len(too_small):
        raise UserError(
            f"cannot make {n_folds} stratified folds: class(es) "
            + ", ".join(f"{label!r} ({count} clips)" for label, count in too_small.items())
            + " have fewer usable clips than folds; lower method.folds or add clips"
        )
    # Sorted first: the manifest's row order follows the preprocessing shards, whose number
    # (preprocessing.shards: auto) depends on --cores; the folds must not.
    train = train.sort_values("fname", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    shuffled = train.iloc[rng.permutation(len(train))].reset_index(drop=True)
    shuffled["fold"] = -1
    DEALERS[task.name](shuffled, n_folds, rng)
    return shuffled[FOLD_COLUMNS]


def split_fold(folds: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training part, validation part) of fold ``fold``."""
    is_valid = folds["fold"].astype(int) == fold
    return folds[~is_valid], folds[is_valid]
