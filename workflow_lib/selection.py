"""Automatic model selection (docs/method.md "Model selection"): per preset, the iteration with the
lowest mean verified validation loss over the folds. The authors picked by eye; here the
choice and the numbers behind it are written to ``results/selection/{preset}.csv``.
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


def selection_table(histories: Mapping[tuple[int, int], Path]) -> pd.DataFrame:
    """One row per iteration: mean and per-fold metrics at each fold's kept epoch, and
    ``chosen`` = True on the iteration with the lowest mean validation loss (earliest on ties).
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
    losses = table["mean_valid_loss"].to_numpy()
    chosen = int(np.nanargmin(losses)) if np.isfinite(losses).any() else len(table) - 1
    table["chosen"] = np.arange(len(table)) == chosen
    return table


def chosen_iteration(selection_csv: Path) -> int:
    table = pd.read_csv(selection_csv)
    return int(table.loc[table["chosen"].astype(bool), "iteration"].iloc[0])
