"""Evaluation on the labelled test clips and the run's summary table.

``summary.csv`` (per system and scoring set: n, accuracy, MAP@3), ``per_class.csv``,
``confusion.csv``, and ``results/summary.csv``: one row per preset with the numbers a user
compares with the paper's (iteration-0 and chosen-iteration CV accuracy, self-verified clips,
test accuracy and MAP@3).

The multi-label task (FSDKaggle2019 layout, :data:`workflow_lib.task.MULTI`): a test clip's
``label`` cell is its label set (workflow_lib/labels.py); ``summary.csv`` gives per system and set n, lwlrap
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
from .labels import multi_hot
from .metrics import accuracy, confusion_table, lwlrap, map_at_3, per_class_lwlrap, per_class_table
from .selection import selection_note
from .task import MULTI, SINGLE, Task

SCORING_SETS = {"Public": ("Public",), "Private": ("Private",), "Public+Private": ("Public", "Private")}

#: multi-label mode: a class is predicted for a clip when its posterior is at least this
THRESHOLD = 0.5

#: CV columns results/summary.csv adds per task (``it0_cv_*``, ``chosen_cv_*``) beyond accuracy
#: and MAP@3: the multi-label task's selection metric.
EXTRA_CV = {SINGLE.name: (), MULTI.name: ("lwlrap",)}

#: The ``cv_note`` of the fusion row of results/summary.csv: it has test scores only.
FUSION_CV_NOTE = "the fusion is scored on the test clips only"


def scored_rows(test: pd.DataFrame, classes: Sequence[str], task: Task = SINGLE) -> pd.DataFrame:
    """Test clips that count: a known label (label sets: a non-empty set of known labels), and
    usage Public/Private (or no usage column value)."""
    known = task.known(test["label"], classes)
    usage_ok = test["usage"].isin(["Public", "Private"]) | (test["usage"] == "")
    return test[known & usage_ok]


def label_set_scores(truth: np.ndarray, probs: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """lwlrap and the micro-averaged precision, recall and F1 of the labels at ``threshold``
    (NaN for an empty set of clips; precision 0 when nothing is predicted)."""
    if len(truth) == 0:
        return dict.fromkeys(MULTI.score_columns, float("nan"))
    from sklearn.metrics import precision_recall_fscore_support  # 1 s import: only when needed

    precision, recall, f1, _ = precision_recall_fscore_support(
        truth > 0.5, probs >= threshold, average="micro", zero_division=0
    )
    return {"lwlrap": lwlrap(truth, probs), "precision": precision, "recall": recall, "f1": f1}


def class_indices(labels: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """Single-label targets: each clip's class index."""
    index = {label: i for i, label in enumerate(classes)}
    return labels.map(index).to_numpy()


#: The scored clips' targets per task: class indices, or multi-hot rows of the label sets.
TARGETS = {SINGLE.name: class_indices, MULTI.name: multi_hot}


def _system_arrays(
    scored: pd.DataFrame, frame: pd.DataFrame, classes: Sequence[str], task: Task
) -> tuple[np.ndarray, np.ndarray]:
    """(posteriors, targets) of the scored clips (:data:`TARGETS`)."""
    probs = frame.set_index("fname").loc[scored["fname"], list(classes)].to_numpy(dtype=np.float64)
    return probs, TARGETS[task.name](scored["label"], classes)


def top_class_scores(truth: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy and MAP@3 of the posteriors for class-index targets."""
    return {"accuracy": accuracy(probs, truth), "map3": map_at_3(probs, truth)}


#: The scores of one system on one scoring set, per task: (targets, posteriors) -> columns.
SCORES = {SINGLE.name: top_class_scores, MULTI.name: label_set_scores}


def evaluate_systems(
    test: pd.DataFrame, systems: Mapping[str, pd.DataFrame], classes: Sequence[str], task: Task = SINGLE
) -> pd.DataFrame:
    """Scores per system and scoring set (clips without usage count in all sets): the task's
    :data:`SCORES` (accuracy and MAP@3, or lwlrap and precision/recall/F1 at :data:`THRESHOLD`)."""
    scored = scored_rows(test, classes, task)
    rows = []
    for system, frame in systems.items():
        probs, targets = _system_arrays(scored, frame, classes, task)
        for name, usages in SCORING_SETS.items():
            mask = (scored["usage"].isin(usages) | (scored["usage"] == "")).to_numpy()
            row = {"system": system, "set": name, "n": int(mask.sum())}
            row.update(SCORES[task.name](targets[mask], probs[mask]))
            rows.append(row)
    return pd.DataFrame(rows, columns=["system", "set", "n", *task.score_columns])


def label_set_class_table(truth: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
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


def top_class_reports(
    truth: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(per-class precision/recall/F1/support, confusion matrix) of the top class."""
    predicted = probs.argmax(axis=1)
    return per_class_table(truth, predicted, classes), confusion_table(truth, predicted, classes)


def label_set_reports(
    truth: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(:func:`label_set_class_table`, None): a clip with label sets has no confusion cell."""
    return label_set_class_table(truth, probs, classes), None


#: One system's (per-class table, confusion matrix or None) per task.
CLASS_REPORTS = {SINGLE.name: top_class_reports, MULTI.name: label_set_reports}

#: The per_class.csv columns per task (label sets add each class's lwlrap and its weight).
PER_CLASS_COLUMNS = {
    SINGLE.name: ["system", "label", "precision", "recall", "f1", "support"],
    MULTI.name: ["system", "label", "precision", "recall", "f1", "support", "lwlrap", "lwlrap_weight"],
}


def class_reports(
    test: pd.DataFrame, frame: pd.DataFrame, classes: Sequence[str], task: Task = SINGLE
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(per-class precision/recall/F1/support, confusion matrix) of one system; for label sets
    the per-class table also has lwlrap and there is no confusion matrix (None)."""
    scored = scored_rows(test, classes, task)
    probs, targets = _system_arrays(scored, frame, classes, task)
    return CLASS_REPORTS[task.name](targets, probs, classes)


def cv_note(selection: pd.DataFrame, unvalidated: Sequence[str] = ()) -> str:
    """The ``cv_note`` of results/summary.csv: why CV figures are missing or leave classes out
    ('' when every class was validated): no verified validation clip at all (empty CV
    columns, the last iteration chosen), or the classes without a verified clip."""
    notes = [selection_note(selection)]
    if unvalidated and not notes[0]:
        shown = ", ".join(map(str, list(unvalidated)[:5])) + (", ..." if len(unvalidated) > 5 else "")
        notes.append(f"{len(unvalidated)} class(es) without verified clips are not in the CV scores: {shown}")
    return "; ".join(note for note in notes if note)


def pool_summary(pool_tables: Mapping[int, pd.DataFrame], selection: pd.DataFrame) -> dict:
    """A pool chain's columns of results/summary.csv (workflow_lib/pool.py): like
    ``self_verified_clips`` and ``self_verified_precision``, the pool clips (labels) the chosen
    iteration was fine-tuned on and their precision (with the pool's true labels); 0 and empty
    for iteration 0. {} for a chain without a pool (its summary keeps its columns)."""
    if not pool_tables:
        return {}
    chosen = int(selection.loc[selection["chosen"].astype(bool)].iloc[0]["iteration"])
    table = pool_tables.get(chosen - 1)
    if table is None:
        return {"pool_trusted_clips": 0, "pool_trusted_precision": np.nan}
    overall = table.loc[table["label"] == TOTAL_ROW].iloc[0]
    return {
        "pool_trusted_clips": int(overall["n_accepted"]),
        "pool_trusted_precision": overall.get("precision", np.nan),
    }


def preset_summary(
    preset: str,
    selection: pd.DataFrame,
    self_verified: Mapping[int, pd.DataFrame],
    test_scores: pd.DataFrame | None,
    task: Task = SINGLE,
    unvalidated: Sequence[str] = (),
) -> dict:
    """One row of results/summary.csv.

    ``unvalidated``: the classes without a verified clip (classes.csv ``n_verified`` 0),
    named in ``cv_note`` (see :func:`cv_note`).

    ``self_verified_clips`` and ``self_verified_precision`` describe the list the chosen
    iteration was fine-tuned on (none for iteration 0); for label sets they are read from
    the same ``__all__`` row of the trust table, which counts trusted (clip, label) pairs.
    The multi-label task adds ``it0_cv_lwlrap`` and ``chosen_cv_lwlrap`` (the selection's
    ``mean_valid_lwlrap``, :data:`EXTRA_CV`) and reports ``test_lwlrap`` instead of test
    accuracy and MAP@3 (:func:`test_columns`).
    """
    chosen = selection.loc[selection["chosen"].astype(bool)].iloc[0]
    it0 = selection.loc[selection["iteration"] == 0].iloc[0]
    iteration = int(chosen["iteration"])
    row = {
        "preset": preset,
        "it0_cv_accuracy": it0["mean_valid_acc"],
        "it0_cv_map3": it0.get("mean_valid_map3", np.nan),
        "chosen_iteration": iteration,
        "chosen_cv_accuracy": chosen["mean_valid_acc"],
        "chosen_cv_map3": chosen.get("mean_valid_map3", np.nan),
        "self_verified_clips": 0,
        "self_verified_precision": np.nan,
    }
    for metric in EXTRA_CV[task.name]:
        row[f"it0_cv_{metric}"] = it0.get(f"mean_valid_{metric}", np.nan)
        row[f"chosen_cv_{metric}"] = chosen.get(f"mean_valid_{metric}", np.nan)
    table = self_verified.get(iteration - 1)
    if table is not None:
        overall = table.loc[table["label"] == TOTAL_ROW].iloc[0]
        row["self_verified_clips"] = int(overall["n_accepted"])
        row["self_verified_precision"] = overall.get("precision", np.nan)
    if test_scores is not None:
        row.update(test_columns(test_scores, preset, task))
    row["cv_note"] = cv_note(selection, unvalidated)
    return row


def test_columns(test_scores: pd.DataFrame, system: str, task: Task = SINGLE) -> dict:
    """The Public+Private test scores of one system for results/summary.csv (the task's
    :attr:`~workflow_lib.task.Task.test_columns`: ``test_accuracy`` and ``test_map3``, or
    ``test_lwlrap``; {} when not scored)."""
    both = test_scores[(test_scores["system"] == system) & (test_scores["set"] == "Public+Private")]
    if not len(both):
        return {}
    return {ours: float(both[theirs].iloc[0]) for ours, theirs in task.test_columns.items()}
