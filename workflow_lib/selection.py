"""Automatic model selection (docs/method.md "Model selection"): per chain and preset, the
iteration with the lowest mean verified validation loss over the folds. The authors picked by
eye; here the choice and the numbers behind it are written to
``results/chains/{chain}/selection/{preset}.csv``.

Near-ties (config key trust.selection_tolerance): the iterations whose mean loss lies within
the tolerance of the lowest are equally good by loss; among them the highest mean validation
accuracy wins, then the earlier iteration. With tolerance 0 this is the lowest loss, earliest
on exact ties.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

METRICS = ("valid_loss", "valid_acc", "valid_map3")


def best_epoch_row(history: pd.DataFrame) -> pd.Series:
    """The epoch whose parameters were kept: lowest validation loss (or the last one)."""
    if history["valid_loss"].notna().any():
        return history.loc[history["valid_loss"].idxmin()]
    return history.iloc[-1]


def selection_table(histories: Mapping[tuple[int, int], Path], tolerance: float = 0.0) -> pd.DataFrame:
    """One row per iteration: mean and per-fold metrics at each fold's kept epoch, ``near_tie``
    (within ``tolerance`` of the lowest mean loss) and ``chosen`` (see the module docstring).
    """
    rows: dict[int, dict] = {}
    for (iteration, fold), path in sorted(histories.items()):
        best = best_epoch_row(pd.read_csv(path))
        row = rows.setdefault(iteration, {"iteration": iteration})
        row[f"fold{fold}_best_epoch"] = int(best["epoch"])
        for metric in METRICS:
            row[f"fold{fold}_{metric}"] = float(best[metric])
    table = pd.DataFrame(list(rows.values())).sort_values("iteration").reset_index(drop=True)
    for metric in METRICS:
        columns = [c for c in table.columns if c.endswith(f"_{metric}") and c.startswith("fold")]
        table.insert(1 + METRICS.index(metric), f"mean_{metric}", table[columns].mean(axis=1))
    losses = table["mean_valid_loss"].to_numpy(dtype=float)
    within = (
        (losses <= np.nanmin(losses) + tolerance) if np.isfinite(losses).any() else np.zeros(len(table), bool)
    )
    table["near_tie"] = within & (within.sum() > 1)  # more than one iteration as good by loss
    table["chosen"] = np.arange(len(table)) == choose(table, tolerance)
    return table


def choose(table: pd.DataFrame, tolerance: float) -> int:
    """Row of the chosen iteration: among those within ``tolerance`` of the lowest mean loss,
    the highest mean accuracy, then the earliest (the last one when no loss is known)."""
    losses = table["mean_valid_loss"].to_numpy(dtype=float)
    if not np.isfinite(losses).any():
        return len(table) - 1
    if tolerance <= 0:
        return int(np.nanargmin(losses))
    near = np.flatnonzero(losses <= np.nanmin(losses) + tolerance)
    accuracy = table["mean_valid_acc"].to_numpy(dtype=float)[near]
    accuracy = np.where(np.isfinite(accuracy), accuracy, -np.inf)
    return int(near[np.flatnonzero(accuracy == accuracy.max())[0]])


def chosen_iteration(selection_csv: Path) -> int:
    table = pd.read_csv(selection_csv)
    return int(table.loc[table["chosen"].astype(bool), "iteration"].iloc[0])
