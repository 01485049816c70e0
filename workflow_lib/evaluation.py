"""Evaluation on the labelled test clips and the run's summary table.

``summary.csv`` (per system and scoring set: n, accuracy, MAP@3), ``per_class.csv``,
``confusion.csv``, and ``results/summary.csv``: one row per preset with the numbers a user
compares with the paper's (iteration-0 and chosen-iteration CV accuracy, self-verified clips,
test accuracy and MAP@3).

Multi-label mode (FSDKaggle2019 layout; ``multi_label=True``): a test clip's ``label`` cell is
its label set (workflow_lib/labels.py); ``summary.csv`` gives per system and set n, lwlrap
(the DCASE 2019 metric) and the precision, recall and F1 of the labels predicted at
:data:`THRESHOLD`, micro-averaged over every (clip, class) decision; ``per_class.csv`` adds
each class's lwlrap and its weight in the overall lwlrap; there is no confusion matrix (a
clip has several true and several predicted labels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .dataset import TOTAL_ROW
from .labels import multi_hot, split_labels
from .metrics import accuracy, confusion_table, lwlrap, map_at_3, per_class_lwlrap, per_class_table
from .selection import selection_note

SCORING_SETS = {"Public": ("Public",), "Private": ("Private",), "Public+Private": ("Public", "Private")}

#: multi-label mode: a class is predicted for a clip when its posterior is at least this
THRESHOLD = 0.5

#: The ``cv_note`` of the fusion row of results/summary.csv: it has test scores only.
FUSION_CV_NOTE = "the fusion is scored on the test clips only"

#: the score columns of summary.csv per mode (after system, set, n)
SCORE_COLUMNS = {False: ["accuracy", "map3"], True: ["lwlrap", "precision", "recall", "f1"]}


def _known_sets(labels: pd.Series, classes: Sequence[str]) -> pd.Series:
    """True where a label cell holds a non-empty set of known classes."""
    known = set(classes)
    return labels.map(lambda cell: bool(split_labels(cell)) and set(split_labels(cell)) <= known)


def scored_rows(test: pd.DataFrame, classes: Sequence[str], multi_label: bool = False) -> pd.DataFrame:
    """Test clips that count: a known label (multi-label: a non-empty set of known labels), and
    usage Public/Private (or no usage column value)."""
    known = _known_sets(test["label"], classes) if multi_label else test["label"].isin(list(classes))
    usage_ok = test["usage"].isin(["Public", "Private"]) | (test["usage"] == "")
    return test[known & usage_ok]


def multi_label_scores(truth: np.ndarray, probs: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """lwlrap and the micro-averaged precision, recall and F1 of the labels at ``threshold``
    (NaN for an empty set of clips; precision 0 when nothing is predicted)."""
    if len(truth) == 0:
        return dict.fromkeys(SCORE_COLUMNS[True], float("nan"))
    from sklearn.metrics import precision_recall_fscore_support  # 1 s import: only when needed

    precision, recall, f1, _ = precision_recall_fscore_support(
        truth > 0.5, probs >= threshold, average="micro", zero_division=0
    )
    return {"lwlrap": lwlrap(truth, probs), "precision": precision, "recall": recall, "f1": f1}


def _system_arrays(
    scored: pd.DataFrame, frame: pd.DataFrame, classes: Sequence[str], multi_label: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(posteriors, targets) of the scored clips: targets as class indices, or multi-hot."""
    probs = frame.set_index("fname").loc[scored["fname"], list(classes)].to_numpy(dtype=np.float64)
    if multi_label:
        return probs, multi_hot(scored["label"], classes)
    index = {label: i for i, label in enumerate(classes)}
    return probs, scored["label"].map(index).to_numpy()


def evaluate_systems(
    test: pd.DataFrame, systems: Mapping[str, pd.DataFrame], classes: Sequence[str], multi_label: bool = False
) -> pd.DataFrame:
    """Scores per system and scoring set (clips without usage count in all sets): accuracy and
    MAP@3, or in multi-label mode lwlrap and precision/recall/F1 at :data:`THRESHOLD`."""
    scored = scored_rows(test, classes, multi_label)
    rows = []
    for system, frame in systems.items():
        probs, targets = _system_arrays(scored, frame, classes, multi_label)
        for name, usages in SCORING_SETS.items():
            mask = (scored["usage"].isin(usages) | (scored["usage"] == "")).to_numpy()
            row = {"system": system, "set": name, "n": int(mask.sum())}
            if multi_label:
                row.update(multi_label_scores(targets[mask], probs[mask]))
            else:
                row["accuracy"] = accuracy(probs[mask], targets[mask])
                row["map3"] = map_at_3(probs[mask], targets[mask])
            rows.append(row)
    return pd.DataFrame(rows, columns=["system", "set", "n", *SCORE_COLUMNS[multi_label]])


def multi_label_class_table(truth: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Per class: precision, recall, F1 of the labels at :data:`THRESHOLD`, support (clips
    that carry the class), lwlrap of the class (NaN without support) and ``lwlrap_weight``
    (its share of all true labels: the overall lwlrap is the weighted sum)."""
    # scikit-learn: a 1 s import, paid only where these scores are computed
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        truth > 0.5, probs >= THRESHOLD, average=None, labels=np.arange(len(classes)), zero_division=0
    )
    per_class, weights = per_class_lwlrap(truth, probs)
    return pd.DataFrame(
        {
            "label": list(classes),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
            "lwlrap": per_class,
            "lwlrap_weight": weights,
        }
    )


def class_reports(
    test: pd.DataFrame, frame: pd.DataFrame, classes: Sequence[str], multi_label: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(per-class precision/recall/F1/support, confusion matrix) of one system; in multi-label
    mode the per-class table also has lwlrap and there is no confusion matrix (None)."""
    scored = scored_rows(test, classes, multi_label)
    probs, targets = _system_arrays(scored, frame, classes, multi_label)
    if multi_label:
        return multi_label_class_table(targets, probs, classes), None
    predicted = probs.argmax(axis=1)
    return per_class_table(targets, predicted, classes), confusion_table(targets, predicted, classes)


def cv_note(selection: pd.DataFrame, unvalidated: Sequence[str] = ()) -> str:
    """The ``cv_note`` of results/summary.csv: why CV figures are missing or leave classes out
    ('' when every class was validated): no verified validation clip at all (empty CV
    columns, the last iteration chosen), or the classes without a verified clip."""
    notes = [selection_note(selection)]
    if unvalidated and not notes[0]:
        shown = ", ".join(map(str, list(unvalidated)[:5])) + (", ..." if len(unvalidated) > 5 else "")
        notes.append(f"{len(unvalidated)} class(es) without verified clips are not in the CV scores: {shown}")
    return "; ".join(note for note in notes if note)


def preset_summary(
    preset: str,
    selection: pd.DataFrame,
    self_verified: Mapping[int, pd.DataFrame],
    test_scores: pd.DataFrame | None,
    multi_label: bool = False,
    unvalidated: Sequence[str] = (),
) -> dict:
    """One row of results/summary.csv.

    ``unvalidated``: the classes without a verified clip (classes.csv ``n_verified`` 0),
    named in ``cv_note`` (see :func:`cv_note`).

    ``self_verified_clips`` and ``self_verified_precision`` describe the list the chosen
    iteration was fine-tuned on (none for iteration 0); in multi-label mode they are read
    from the same ``__all__`` row of the trust table, which counts trusted (clip, label)
    pairs. Multi-label mode adds ``it0_cv_lwlrap`` and ``chosen_cv_lwlrap`` (the selection's
    ``mean_valid_lwlrap``) and reports ``test_lwlrap`` instead of test accuracy and MAP@3.
    """
    chosen = selection.loc[selection["chosen"].astype(bool)].iloc[0]
    it0 = selection.loc[selection["iteration"] == 0].iloc[0]
    iteration = int(chosen["iteration"])
    row = {
        "preset": preset,
        "it0_cv_accuracy": it0["mean_valid_acc"],
        "it0_cv_map3": it0.get("mean_valid_map3", np.nan) if multi_label else it0["mean_valid_map3"],
        "chosen_iteration": iteration,
        "chosen_cv_accuracy": chosen["mean_valid_acc"],
        "chosen_cv_map3": chosen.get("mean_valid_map3", np.nan) if multi_label else chosen["mean_valid_map3"],
        "self_verified_clips": 0,
        "self_verified_precision": np.nan,
    }
    if multi_label:
        row["it0_cv_lwlrap"] = it0.get("mean_valid_lwlrap", np.nan)
        row["chosen_cv_lwlrap"] = chosen.get("mean_valid_lwlrap", np.nan)
    table = self_verified.get(iteration - 1)
    if table is not None:
        overall = table.loc[table["label"] == TOTAL_ROW].iloc[0]
        row["self_verified_clips"] = int(overall["n_accepted"])
        row["self_verified_precision"] = overall.get("precision", np.nan)
    if test_scores is not None:
        row.update(test_columns(test_scores, preset, multi_label))
    row["cv_note"] = cv_note(selection, unvalidated)
    return row


def test_columns(test_scores: pd.DataFrame, system: str, multi_label: bool = False) -> dict:
    """The Public+Private test scores of one system for results/summary.csv: ``test_accuracy``
    and ``test_map3``, or ``test_lwlrap`` in multi-label mode ({} when not scored)."""
    both = test_scores[(test_scores["system"] == system) & (test_scores["set"] == "Public+Private")]
    if not len(both):
        return {}
    if multi_label:
        return {"test_lwlrap": float(both["lwlrap"].iloc[0])}
    return {"test_accuracy": float(both["accuracy"].iloc[0]), "test_map3": float(both["map3"].iloc[0])}
