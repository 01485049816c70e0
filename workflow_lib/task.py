"""The task a run learns: one class per clip (single-label) or a set of classes per clip
(multi-label). Everything that differs between the two lives here, and modules ask the task
instead of branching on a flag.

- :data:`SINGLE` (dataset layout ``fsdkaggle2018``, DCASE 2018 Task 2): a softmax over the
  classes, class-index targets, cross-entropy, model selection by the lowest validation loss,
  trust decisions per clip.
- :data:`MULTI` (layout ``fsdkaggle2019``, DCASE 2019 Task 2): an independent sigmoid per class,
  multi-hot targets, binary cross-entropy averaged over the classes, model selection by the
  highest validation lwlrap, trust decisions per (clip, given label).

A task is chosen once, from ``dataset.layout`` (:func:`task_of_settings`) or from what a saved
model says it was trained for (:func:`task_of_saved`), and passed on as an object. Saved models,
training fingerprints and bundles of multi-label runs carry the key ``multi_label: True``
(:meth:`Task.saved_marker`) and single-label ones carry nothing, as before this module existed,
so every file written earlier still reads the same.

This module imports neither torch nor the job layer at its top: the Snakefile reads the task at
every start (which outputs a run has), and torch's import would cost seconds there. The three
methods that compute on tensors import torch inside (deliberate, see each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .dataset_layouts import DEFAULT_LAYOUT, LAYOUTS
from .labels import join_labels, multi_hot, split_labels

if TYPE_CHECKING:  # annotations only; see the module docstring
    import torch

#: The key saved models, fingerprints and bundles of multi-label runs carry (value True).
SAVED_KEY = "multi_label"

#: Single-label history.csv columns (one row per epoch), in order.
HISTORY_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "valid_loss",
    "valid_acc",
    "valid_map3",
    "seconds",
)


@dataclass(frozen=True)
class Task:
    """What differs between the label modes. Use :data:`SINGLE` and :data:`MULTI`, never a new
    instance: modules compare tasks by identity of ``name``.

    name: ``single-label`` or ``multi-label`` (CLI ``--task``, job settings ``task``).
    trust_unit: what one trust decision is about, in words ("clips" or "labels").
    history_columns: history.csv's columns (multi-label adds ``valid_lwlrap``).
    selection_metric: the validation column best epochs and iterations are chosen by.
    higher_is_better: whether a larger ``selection_metric`` is better.
    """

    name: str
    trust_unit: str
    history_columns: tuple[str, ...]
    selection_metric: str
    higher_is_better: bool

    @property
    def layouts(self) -> tuple[str, ...]:
        """The dataset layouts (config ``dataset.layout``) that imply this task: read from
        ``dataset_layouts.LAYOUTS``, the one place a layout names its task."""
        return tuple(name for name, layout in LAYOUTS.items() if layout.task == self.name)

    @property
    def label_sets(self) -> bool:
        """Whether a clip's ``label`` cell holds a set of classes (comma-joined)."""
        return self.name == MULTI.name

    def saved_marker(self) -> dict[str, Any]:
        """The keys saved models, fingerprints and bundles of this task carry (single-label:
        none, so files written before tasks existed stay byte-identical)."""
        return {SAVED_KEY: True} if self.label_sets else {}

    def labels_of(self, cell: str) -> list[str]:
        """The classes one ``label`` cell names (a single-label cell is one class)."""
        return split_labels(cell) if self.label_sets else [str(cell)]

    def known(self, labels: pd.Series, classes: Sequence[str]) -> pd.Series:
        """Per row: whether every class the cell names is one of ``classes`` (and, for label
        sets, the set is not empty)."""
        allowed = set(classes)
        if not self.label_sets:
            return labels.isin(list(classes))
        return labels.map(lambda cell: bool(split_labels(cell)) and set(split_labels(cell)) <= allowed)

    def targets(self, clips: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
        """Training targets of ``clips``: class indices (the ``target`` column) or a multi-hot
        float32 matrix of the ``label`` cells."""
        if self.label_sets:
            return multi_hot(clips["label"], classes)
        return clips["target"].to_numpy()

    def target_tensor(self, targets: np.ndarray, device: Any) -> torch.Tensor:
        """The targets on ``device``: int64 class indices, or float32 rows (multi-hot, or the
        soft rows of soft relabelling, workflow_lib/soft_targets.py, for either task)."""
        import torch  # deliberate lazy import: see the module docstring

        rows = self.label_sets or np.asarray(targets).ndim == 2
        dtype = torch.float32 if rows else torch.int64
        return torch.tensor(np.asarray(targets), dtype=dtype, device=device)

    def soft_targets(self, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
        """Float rows mixup can mix: one-hot rows of class indices; multi-hot or soft rows
        (soft relabelling) as they are."""
        import torch.nn.functional as F  # deliberate lazy import: see the module docstring

        rows = self.label_sets or targets.dim() == 2
        return targets if rows else F.one_hot(targets, n_classes).float()

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities from logits, as float32: a softmax over the classes, or an
        independent sigmoid per class."""
        logits = logits.float()
        return logits.sigmoid() if self.label_sets else logits.softmax(dim=1)

    def improves(self, history: list[dict], row: dict, best_loss: float) -> bool:
        """Whether epoch ``row`` beats the kept one: a lower validation loss (single-label) or a
        higher validation lwlrap than every earlier epoch (multi-label; the first on ties)."""
        if not self.label_sets:
            return row["valid_loss"] < best_loss
        earlier = [h["valid_lwlrap"] for h in history if not math.isnan(h["valid_lwlrap"])]
        return not earlier or row["valid_lwlrap"] > max(earlier)

    # --- h20b: data

    def canonical(self, cell: str) -> str:
        """A ``label`` cell as the listings write it: a label set sorted and comma-joined
        (the test CSV and the true-label side file may list it in any order); a single
        label as given."""
        return join_labels(split_labels(cell)) if self.label_sets else cell

    def scored_labels(self, cell: str) -> list[str]:
        """The classes a scored test cell names, each to be known from training; an empty
        cell names the class '' (so it is reported as never seen in training)."""
        return self.labels_of(cell) or [""]

    # --- h20d: evaluation
    @property
    def confusion(self) -> bool:
        """Whether the evaluation writes confusion.csv and plots confusion.png: a clip with one
        true and one predicted class has a confusion cell, a clip with label sets has none
        (its per-class table, with each class's lwlrap, is the evaluation's only plot)."""
        return not self.label_sets

    @property
    def evaluation_plot(self) -> str:
        """The evaluation plot a finished run must have (FINAL_OUTPUTS): the confusion matrix,
        or the per-class picture where there is no confusion matrix."""
        return "confusion.png" if self.confusion else "per_class.png"

    @property
    def score_columns(self) -> tuple[str, ...]:
        """The score columns of an evaluation's summary.csv (after system, set, n): accuracy and
        MAP@3 of the top class, or lwlrap (DCASE 2019) and the micro precision, recall, F1 of
        the labels at the evaluation threshold."""
        return ("lwlrap", "precision", "recall", "f1") if self.label_sets else ("accuracy", "map3")

    @property
    def test_columns(self) -> dict[str, str]:
        """{results/summary.csv and systems.csv test column: the evaluation's score column}."""
        if self.label_sets:
            return {"test_lwlrap": "lwlrap"}
        return {"test_accuracy": "accuracy", "test_map3": "map3"}

    @property
    def chosen_by(self) -> str:
        """How model selection and the chain choice pick, in words (choice.csv, the log)."""
        metric = self.selection_metric.removeprefix("valid_")
        return f"{'highest' if self.higher_is_better else 'lowest'} mean CV {metric}"

    # --- h20c: trust
    @property
    def corrects_labels(self) -> bool:
        """Whether a trust policy may trust a refused clip under its predicted class
        (correct_labels): a clip's one label can be replaced; a label set keeps a subset of its
        given labels and none is replaced."""
        return not self.label_sets


SINGLE = Task(
    name="single-label",
    trust_unit="clips",
    history_columns=HISTORY_COLUMNS,
    selection_metric="valid_loss",
    higher_is_better=False,
)
MULTI = Task(
    name="multi-label",
    trust_unit="labels",
    history_columns=(*HISTORY_COLUMNS, "valid_lwlrap"),
    selection_metric="valid_lwlrap",
    higher_is_better=True,
)
TASKS: dict[str, Task] = {task.name: task for task in (SINGLE, MULTI)}


def task_named(name: str) -> Task:
    """The task called ``name`` (CLI ``--task``, job settings ``task``); a clear error otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: use one of {sorted(TASKS)}")
    return TASKS[name]


def task_of_settings(settings: Mapping[str, Any]) -> Task:
    """The task of a resolved config (its ``dataset.layout``; absent: single-label)."""
    return task_of_layout(settings.get("dataset", {}).get("layout", DEFAULT_LAYOUT))


def task_of_layout(layout: str) -> Task:
    """The task a dataset layout implies (its entry of ``dataset_layouts.LAYOUTS``: a new
    layout of an existing task needs no change here)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r}: use one of {sorted(LAYOUTS)}")
    return task_named(LAYOUTS[layout].task)


def task_of_saved(meta: Mapping[str, Any]) -> Task:
    """The task a saved model, fingerprint or bundle was made for (:meth:`Task.saved_marker`)."""
    return MULTI if meta.get(SAVED_KEY, False) is True else SINGLE
