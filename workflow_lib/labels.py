"""Label sets: how a multi-label clip's labels are written in the workflow's CSVs.

A single-label dataset (the FSDKaggle2018 layout) has one class name per clip in its ``label``
column. In the multi-label layout (FSDKaggle2019, config ``dataset.layout: fsdkaggle2019``) the
same column holds the clip's label *set*, written as class names joined by commas in sorted
order ("Bark,Dog"), the FSDKaggle2019 CSVs' own notation. Class names never contain commas or
whitespace (refused at validation), so the notation is unambiguous, and a single-label clip's
set is written exactly as its label: every listing reads the same in both modes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

SEPARATOR = ","


def split_labels(text: str) -> list[str]:
    """The labels of one ``label`` cell, sorted and without duplicates ('' -> [])."""
    return sorted({part.strip() for part in str(text).split(SEPARATOR) if part.strip()})


def join_labels(labels: Iterable[str]) -> str:
    """The ``label`` cell of a label set: sorted, unique, comma-joined ([] -> '')."""
    return SEPARATOR.join(sorted(set(labels)))


def multi_hot(cells: Sequence[str] | pd.Series, classes: Sequence[str]) -> np.ndarray:
    """(n_clips, n_classes) float32 0/1 matrix of the label sets in ``cells``.

    A label that is not in ``classes`` is an error (KeyError naming it): dropping it silently
    would train on a wrong target.
    """
    index = {label: i for i, label in enumerate(classes)}
    matrix = np.zeros((len(cells), len(classes)), dtype=np.float32)
    for row, cell in enumerate(cells):
        for label in split_labels(cell):
            if label not in index:
                raise KeyError(f"label {label!r} is not one of the {len(classes)} classes")
            matrix[row, index[label]] = 1.0
    return matrix


def label_sets(matrix: np.ndarray, classes: Sequence[str]) -> list[str]:
    """The ``label`` cells of a 0/1 matrix (the inverse of :func:`multi_hot`)."""
    names = np.asarray(classes, dtype=object)
    return [join_labels(names[np.flatnonzero(row > 0.5)]) for row in np.asarray(matrix)]
