"""Choosing the chain by cross-validation (config key ``chain_choice``; README "Chains and
trust policies").

When several chains run, ``chain_choice: cv`` picks the one the tagger, the export and
``results/chosen/`` use, from the verified validation clips only. Each chain's score is the
mean over presets of its chosen iteration's CV figures (the rows model selection marked
``chosen``), and the pick applies model selection's own rule (workflow_lib/selection.py
:func:`~workflow_lib.selection.choose`, with ``trust.selection_tolerance``): the lowest mean
validation loss (multi-label: the highest mean lwlrap); chains within the tolerance are
near-ties, won by the higher mean validation accuracy, then the earlier chain of
``run_chains``. Test columns are never read: :func:`cv_table` keeps the CV columns only, so
the pick cannot depend on a test figure. ``chain_choice: first`` (the default) takes the first
of ``run_chains``, the paper's method unless the user lists another first.

The study (workflow_lib/study.py) replays the same pick on each repetition's systems.csv to
measure its regret: the test score lost against the chain that was best on test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .io import write_csv
from .selection import LWLRAP, choose, criterion, task_of_columns

#: Values of the config key chain_choice.
CHOICES = ("first", "cv")
#: systems.csv columns the pick may read (each the chosen iteration's mean over the folds of
#: the verified validation clips), and the names selection.py's tables give them.
CV_COLUMNS = {"cv_loss": "mean_valid_loss", "cv_accuracy": "mean_valid_acc", "cv_lwlrap": f"mean_{LWLRAP}"}
#: Columns of results/chosen/choice.csv.
CHOICE_COLUMNS = (
    "chain",
    "criterion",
    "value",
    "runner_up",
    "runner_up_value",
    "margin",
    "tolerance",
    "reason",
)


def chooses_by_cv(settings: Mapping) -> bool:
    """Whether a job picks the chain (chain_choice: cv with several chains); otherwise the
    first of run_chains is used and nothing waits for a pick."""
    return settings["chain_choice"] == "cv" and len(settings["run_chains"]) > 1


def cv_table(systems: pd.DataFrame) -> pd.DataFrame:
    """Per chain (``system``), in order of first appearance: the mean over presets of the CV
    columns, named as selection.py names them. Only ``system`` and the CV columns are read."""
    columns = [c for c in CV_COLUMNS if c in systems.columns]
    if "cv_loss" not in columns or "cv_accuracy" not in columns:
        raise UserError(f"choosing a chain needs the columns cv_loss and cv_accuracy (found {columns})")
    table = systems[["system", *columns]].groupby("system", sort=False).mean()
    return table.rename(columns=CV_COLUMNS)


def pick_chain(systems: pd.DataFrame, tolerance: float = 0.0) -> tuple[dict, pd.DataFrame]:
    """(the choice.csv row, the per-chain table with ``near_tie`` and ``picked``) for a table
    with ``system`` and CV columns (systems.csv, or :func:`cv_rows` of the selection files);
    chains in the order of the table (run_chains' order), which breaks exact ties."""
    table = cv_table(systems)
    scores = criterion(table)
    task = task_of_columns(table.columns)
    name = "cv_" + task.selection_metric.removeprefix("valid_")
    sign = -1.0 if task.higher_is_better else 1.0  # criterion() minimises; report the natural value
    if not np.isfinite(scores).any():
        row, reason = 0, "no chain has a CV score (no verified validation clips): the first of run_chains"
    else:
        row = choose(table, tolerance)
        reason = _reason(table, scores, row, tolerance, task.chosen_by)
    near = (
        (scores <= np.nanmin(scores) + tolerance) if np.isfinite(scores).any() else np.zeros(len(table), bool)
    )
    chains = table.index.tolist()
    others = [i for i in np.argsort(np.where(np.isfinite(scores), scores, np.inf), kind="stable") if i != row]
    runner = others[0] if others else None
    choice = {
        "chain": chains[row],
        "criterion": name,
        "value": sign * scores[row],
        "runner_up": chains[runner] if runner is not None else "",
        "runner_up_value": sign * scores[runner] if runner is not None else np.nan,
        # criterion units, positive when the pick is better than the runner-up by its criterion
        "margin": scores[runner] - scores[row] if runner is not None else np.nan,
        "tolerance": tolerance,
        "reason": reason,
    }
    per_chain = table.rename(columns={v: k for k, v in CV_COLUMNS.items()}).reset_index(names="chain")
    per_chain["near_tie"] = near & (near.sum() > 1)
    per_chain["picked"] = np.arange(len(per_chain)) == row
    return choice, per_chain


def _reason(table: pd.DataFrame, scores: np.ndarray, row: int, tolerance: float, what: str) -> str:
    """Why ``row`` won, in words for choice.csv and the log (``what``: the task's
    :attr:`~workflow_lib.task.Task.chosen_by`)."""
    tied = np.flatnonzero(scores <= np.nanmin(scores) + tolerance)
    if len(tied) > 1 and tolerance > 0:
        names = ", ".join(table.index[tied])
        return (
            f"near-tie within {tolerance:g} of the {what} ({names}): the highest mean CV accuracy, "
            "then the earlier of run_chains"
        )
    if len(tied) > 1:
        return f"exact tie on the {what}: the earlier of run_chains"
    return what


def cv_rows(selections: Mapping[str, Mapping[str, Path]]) -> pd.DataFrame:
    """{chain: {preset: selection CSV}} -> one row per chain and preset: ``system``,
    ``preset`` and the CV columns of the iteration model selection chose (systems.csv's
    names), read from the selection tables, which hold validation figures only."""
    rows = []
    for chain, presets in selections.items():
        for preset, path in presets.items():
            table = pd.read_csv(path)
            chosen = table.loc[table["chosen"].astype(bool)].iloc[0]
            rows.append(
                {"system": chain, "preset": preset}
                | {column: float(chosen[name]) for column, name in CV_COLUMNS.items() if name in chosen.index}
            )
    return pd.DataFrame(rows)


def read_choice(path: Path) -> str:
    """The chain named by results/chosen/choice.csv."""
    if not Path(path).is_file():
        raise UserError(f"{path} is missing: the chain_choice job (rule choose_chain) has not run")
    return str(pd.read_csv(path, dtype=str)["chain"].iloc[0])


def picked_chain(run_chains: Sequence[str], choice_csv: Path | None) -> str:
    """The chain the tagger and the export use: the CV pick when ``choice_csv`` is given
    (chain_choice: cv with several chains), else the first of run_chains."""
    return read_choice(choice_csv) if choice_csv is not None else run_chains[0]


def choose_chain_job(
    selections: Mapping[str, Mapping[str, Path]],
    summaries: Mapping[str, Path],
    tolerance: float,
    out_dir: Path,
) -> dict:
    """results/chosen/: ``choice.csv`` (one row, :data:`CHOICE_COLUMNS`), ``chains.csv`` (per
    chain its CV figures, ``near_tie``, ``picked``) and ``summary.csv`` (the picked chain's
    summary.csv, copied after the pick: its test figures are reported, never compared)."""
    choice, per_chain = pick_chain(cv_rows(selections), tolerance)
    out_dir = Path(out_dir)
    write_csv(pd.DataFrame([choice], columns=list(CHOICE_COLUMNS)), out_dir / "choice.csv")
    write_csv(per_chain, out_dir / "chains.csv")
    write_csv(pd.read_csv(summaries[choice["chain"]]), out_dir / "summary.csv")
    return choice
