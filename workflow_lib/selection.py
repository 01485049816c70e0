"""Automatic model selection (docs/method.md "Model selection"): per chain and preset, the
iteration with the lowest mean verified validation loss over the folds. The authors picked by
eye; here the choice and the numbers behind it are written to
``results/chains/{chain}/selection/{preset}.csv``.

Near-ties (config key trust.selection_tolerance): the iterations whose mean loss lies within
the tolerance of the lowest are equally good by loss; among them the highest mean validation
accuracy wins, then the earlier iteration. With tolerance 0 this is the lowest loss, earliest
on exact ties.

Multi-label runs (their histories have a ``valid_lwlrap`` column, training.py): each fold's
kept epoch is its highest validation lwlrap, and the chosen iteration the one with the highest
mean lwlrap over the folds; the tolerance then applies to the lwlrap (iterations within it of
the highest are near-ties, won by the higher mean accuracy, then the earlier iteration).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .task import MULTI, SINGLE, Task

METRICS = ("valid_loss", "valid_acc", "valid_map3")
LWLRAP = "valid_lwlrap"  # multi-label histories only


def task_of_columns(columns: pd.Index) -> Task:
    """The task a history or selection table was written for: the multi-label one has its
    selection metric (``valid_lwlrap``, or ``mean_valid_lwlrap``) among its columns. Selection
    reads only files, so the files say which task they are."""
    metric = MULTI.selection_metric
    return MULTI if metric in columns or f"mean_{metric}" in columns else SINGLE


def best_epoch_row(history: pd.DataFrame) -> pd.Series:
    """The epoch whose parameters were kept: the best of the task's selection metric (lowest
    validation loss, or highest validation lwlrap), the first on ties; the last one when
    nothing was validated."""
    task = task_of_columns(history.columns)
    column = task.selection_metric
    if history[column].notna().any():
        best = history[column].idxmax() if task.higher_is_better else history[column].idxmin()
        return history.loc[best]
    return history.iloc[-1]


def selection_table(histories: Mapping[tuple[int, int], Path], tolerance: float = 0.0) -> pd.DataFrame:
    """One row per iteration: mean and per-fold metrics at each fold's kept epoch, ``near_tie``
    (within ``tolerance`` of the lowest mean loss) and ``chosen`` (see the module docstring).
    """
    rows: dict[int, dict] = {}
    tasks = set()
    for (iteration, fold), path in sorted(histories.items()):
        history = pd.read_csv(path)
        task = task_of_columns(history.columns)
        tasks.add(task.name)
        best = best_epoch_row(history)
        row = rows.setdefault(iteration, {"iteration": iteration})
        row[f"fold{fold}_best_epoch"] = int(best["epoch"])
        for metric in metrics_of(task):
            row[f"fold{fold}_{metric}"] = float(best[metric])
    if len(tasks) > 1:
        raise UserError("the histories mix single-label and multi-label runs (valid_lwlrap in some only)")
    metrics = metrics_of(MULTI if tasks == {MULTI.name} else SINGLE)
    table = pd.DataFrame(list(rows.values())).sort_values("iteration").reset_index(drop=True)
    for n, metric in enumerate(metrics):
        columns = [c for c in table.columns if c.endswith(f"_{metric}") and c.startswith("fold")]
        table.insert(1 + n, f"mean_{metric}", table[columns].mean(axis=1))
    scores = criterion(table)
    within = (
        (scores <= np.nanmin(scores) + tolerance) if np.isfinite(scores).any() else np.zeros(len(table), bool)
    )
    table["near_tie"] = within & (within.sum() > 1)  # more than one iteration as good
    table["chosen"] = np.arange(len(table)) == choose(table, tolerance)
    return table


def metrics_of(task: Task) -> tuple[str, ...]:
    """The validation metrics a selection table gives per fold and as means: the task's
    history columns that are validation figures (multi-label adds ``valid_lwlrap``)."""
    return (*METRICS, *(c for c in task.history_columns if c.startswith("valid_") and c not in METRICS))


def criterion(table: pd.DataFrame) -> np.ndarray:
    """What selection minimises: the mean of the table's task's selection metric, negated when
    higher is better (the mean validation loss, or minus the mean validation lwlrap)."""
    task = task_of_columns(table.columns)
    values = table[f"mean_{task.selection_metric}"].to_numpy(dtype=float)
    return -values if task.higher_is_better else values


def choose(table: pd.DataFrame, tolerance: float) -> int:
    """Row of the chosen iteration: among those within ``tolerance`` of the lowest mean loss
    (multi-label: of the highest mean lwlrap), the highest mean accuracy, then the earliest
    (the last one when no score is known: see :func:`selection_note`)."""
    losses = criterion(table)
    if not np.isfinite(losses).any():
        return len(table) - 1
    if tolerance <= 0:
        return int(np.nanargmin(losses))
    near = np.flatnonzero(losses <= np.nanmin(losses) + tolerance)
    accuracy = table["mean_valid_acc"].to_numpy(dtype=float)[near]
    accuracy = np.where(np.isfinite(accuracy), accuracy, -np.inf)
    return int(near[np.flatnonzero(accuracy == accuracy.max())[0]])


#: Why a selection has no basis: every fold's validation set was empty (no verified clips).
NO_VALIDATION = "no verified validation clips: the CV scores are empty and the last iteration is used"


def selection_note(table: pd.DataFrame) -> str:
    """:data:`NO_VALIDATION` when no iteration has a validation score (then :func:`choose`
    takes the last iteration: the whole training budget, nothing compared), else '' (also for
    a table without the score columns, which says nothing about validation)."""
    if not {f"mean_{t.selection_metric}" for t in (SINGLE, MULTI)} & set(table.columns):
        return ""
    return "" if np.isfinite(criterion(table)).any() else NO_VALIDATION


def chosen_iteration(selection_csv: Path) -> int:
    """The iteration model selection chose (its ``chosen`` row of selection.csv)."""
    table = pd.read_csv(selection_csv)
    return int(table.loc[table["chosen"].astype(bool), "iteration"].iloc[0])
