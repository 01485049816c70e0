"""Evaluation on the labelled test clips and the run's summary table.

``summary.csv`` (per system and scoring set: n, accuracy, MAP@3), ``per_class.csv``,
``confusion.csv``, and ``results/summary.csv``: one row per preset with the numbers a user
compares with the paper's (iteration-0 and chosen-iteration CV accuracy, self-verified clips,
test accuracy and MAP@3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .dataset import TOTAL_ROW
from .metrics import accuracy, confusion_table, map_at_3, per_class_table

SCORING_SETS = {"Public": ("Public",), "Private": ("Private",), "Public+Private": ("Public", "Private")}


def scored_rows(test: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Test clips that count: a known label, and usage Public/Private (or no usage column value)."""
    known = test["label"].isin(list(classes))
    usage_ok = test["usage"].isin(["Public", "Private"]) | (test["usage"] == "")
    return test[known & usage_ok]


def evaluate_systems(
    test: pd.DataFrame, systems: Mapping[str, pd.DataFrame], classes: Sequence[str]
) -> pd.DataFrame:
    """Accuracy and MAP@3 per system and scoring set (clips without usage count in all sets)."""
    scored = scored_rows(test, classes)
    index = {label: i for i, label in enumerate(classes)}
    rows = []
    for system, frame in systems.items():
        probs = frame.set_index("fname").loc[scored["fname"], list(classes)].to_numpy()
        targets = scored["label"].map(index).to_numpy()
        for name, usages in SCORING_SETS.items():
            mask = (scored["usage"].isin(usages) | (scored["usage"] == "")).to_numpy()
            rows.append(
                {
                    "system": system,
                    "set": name,
                    "n": int(mask.sum()),
                    "accuracy": accuracy(probs[mask], targets[mask]),
                    "map3": map_at_3(probs[mask], targets[mask]),
                }
            )
    return pd.DataFrame(rows)


def class_reports(
    test: pd.DataFrame,
    frame: pd.DataFrame,
    classes: Sequence[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-class precision/recall/F1/support, confusion matrix) of one system."""
    scored = scored_rows(test, classes)
    index = {label: i for i, label in enumerate(classes)}
    probs = frame.set_index("fname").loc[scored["fname"], list(classes)].to_numpy()
    targets = scored["label"].map(index).to_numpy()
    predicted = probs.argmax(axis=1)
    return per_class_table(targets, predicted, classes), confusion_table(targets, predicted, classes)


def preset_summary(
    preset: str,
    selection: pd.DataFrame,
    self_verified: Mapping[int, pd.DataFrame],
    test_scores: pd.DataFrame | None,
) -> dict:
    """One row of results/summary.csv.

    ``self_verified_clips`` and ``self_verified_precision`` describe the list the chosen
    iteration was fine-tuned on (none for iteration 0).
    """
    chosen = selection.loc[selection["chosen"].astype(bool)].iloc[0]
    it0 = selection.loc[selection["iteration"] == 0].iloc[0]
    iteration = int(chosen["iteration"])
    row = {
        "preset": preset,
        "it0_cv_accuracy": it0["mean_valid_acc"],
        "it0_cv_map3": it0["mean_valid_map3"],
        "chosen_iteration": iteration,
        "chosen_cv_accuracy": chosen["mean_valid_acc"],
        "chosen_cv_map3": chosen["mean_valid_map3"],
        "self_verified_clips": 0,
        "self_verified_precision": np.nan,
    }
    table = self_verified.get(iteration - 1)
    if table is not None:
        overall = table.loc[table["label"] == TOTAL_ROW].iloc[0]
        row["self_verified_clips"] = int(overall["n_accepted"])
        row["self_verified_precision"] = overall.get("precision", np.nan)
    if test_scores is not None:
        both = test_scores[(test_scores["system"] == preset) & (test_scores["set"] == "Public+Private")]
        if len(both):
            row["test_accuracy"] = float(both["accuracy"].iloc[0])
            row["test_map3"] = float(both["map3"].iloc[0])
    return row
