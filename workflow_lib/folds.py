"""Stratified cross-validation folds (docs/method.md "Cross-validation folds").

The training list is shuffled with a fixed seed; the verified and the unverified clips are then
split separately, each into ``n_folds`` folds stratified by label. Fold k's validation part is
verified fold k plus unverified fold k, so each unverified clip is held out from exactly one
fold model: the one allowed to judge it during self-verification.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import UserError

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


def make_folds(train: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Assign a fold to every training clip; verified and unverified stratified separately."""
    counts = train["label"].value_counts()
    too_small = counts[counts < n_folds]
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
    start = 0  # the unverified pass continues where the verified one stopped: sizes stay even
    for flag in (1, 0):
        part = shuffled.index[shuffled["verified"].astype(int) == flag]
        labels = shuffled.loc[part, "label"].to_numpy()
        shuffled.loc[part, "fold"] = stratified_assignment(labels, n_folds, rng, start)
        start = (start + len(part)) % n_folds
    return shuffled[FOLD_COLUMNS]


def split_fold(folds: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training part, validation part) of fold ``fold``."""
    is_valid = folds["fold"].astype(int) == fold
    return folds[~is_valid], folds[is_valid]
