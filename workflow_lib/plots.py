"""Pictures for ``snakemake --report``: training curves, self-verified clips, test results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .dataset import TOTAL_ROW  # noqa: E402
from .io import atomic_path  # noqa: E402
from .selection import task_of_columns  # noqa: E402
from .task import MULTI, SINGLE  # noqa: E402

#: (history column, axis label) of the training-curve panels per task: the multi-label task's
#: accuracy is the share of clips whose top label is true, and it adds a lwlrap panel.
CURVES = {
    SINGLE.name: (("valid_loss", "verified validation loss"), ("valid_acc", "verified validation accuracy")),
    MULTI.name: (
        ("valid_loss", "verified validation loss"),
        ("valid_acc", "validation top label true"),
        ("valid_lwlrap", "validation lwlrap"),
    ),
}


def save_figure(figure: plt.Figure, path: Path) -> None:
    """Write a PNG atomically and free the figure (jobs draw many; a killed job leaves no
    half-written image)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def training_curves(histories: Mapping[int, Sequence[Path]], preset: str, out: Path) -> None:
    """Validation loss and accuracy over all iterations: mean over folds, min-max band.

    Iterations follow each other on one epoch axis, as in the paper's figures; dashed lines
    mark where fine-tuning iteration i starts. Multi-label histories (a ``valid_lwlrap``
    column) get a third panel with the validation lwlrap; their loss is the binary
    cross-entropy and their accuracy the share of clips whose top label is true.
    """
    frames_of = {i: [pd.read_csv(p) for p in histories[i]] for i in sorted(histories)}
    tasks = {task_of_columns(f.columns).name for frames in frames_of.values() for f in frames}
    curves = CURVES[MULTI.name if MULTI.name in tasks else SINGLE.name]
    columns = [column for column, _ in curves]
    figure, axes = plt.subplots(len(columns), 1, figsize=(9, 3 * len(columns)), sharex=True)
    offset = 0
    for iteration, frames in frames_of.items():
        epochs = frames[0]["epoch"].to_numpy() + offset
        for ax, column in zip(axes, columns):
            values = np.stack([f[column].to_numpy() for f in frames])
            ax.plot(epochs, values.mean(axis=0), color=f"C{iteration % 10}", label=f"it{iteration}")
            ax.fill_between(
                epochs, values.min(axis=0), values.max(axis=0), color=f"C{iteration % 10}", alpha=0.2
            )
        if iteration:
            for ax in axes:
                ax.axvline(offset + 0.5, color="grey", linestyle="--", linewidth=0.7)
        offset = int(epochs[-1])
    loss_ax = axes[0]
    for ax, (_, label) in zip(axes, curves):
        ax.set_ylabel(label)
    axes[-1].set_xlabel("epoch (iterations one after another)")
    loss_ax.set_title(f"{preset}: mean over folds, band = min..max")
    loss_ax.legend(ncol=6, fontsize=8)
    save_figure(figure, out)


def self_verified_counts(tables: Mapping[int, pd.DataFrame], preset: str, out: Path) -> None:
    """Accepted clips per self-verification iteration, stacked by class; precision if known."""
    figure, ax = plt.subplots(figsize=(9, 4.5))
    iterations = sorted(tables)
    if iterations:
        per_class = pd.DataFrame({i: tables[i].set_index("label")["n_accepted"] for i in iterations})
        per_class = per_class.drop(index=TOTAL_ROW, errors="ignore").fillna(0)
        bottom = np.zeros(len(iterations))
        for row, (label, counts) in enumerate(per_class.iterrows()):
            ax.bar(
                [f"it{i}" for i in iterations],
                counts.to_numpy(),
                bottom=bottom,
                label=label,
                color=plt.cm.tab20(row % 20),
            )
            bottom += counts.to_numpy()
        if "precision" in tables[iterations[0]]:
            precision = [tables[i].set_index("label").loc[TOTAL_ROW, "precision"] for i in iterations]
            twin = ax.twinx()
            twin.plot([f"it{i}" for i in iterations], precision, "k-o", label="precision")
            twin.set_ylim(0, 1.05)
            twin.set_ylabel("precision of accepted labels")
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.08, 1))
    ax.set_ylabel("self-verified clips")
    ax.set_xlabel("judged by the fold models of iteration")
    ax.set_title(f"{preset}: self-verified clips per iteration and class")
    save_figure(figure, out)


def _no_test_labels(out: Path) -> None:
    """A placeholder picture for a predict-only run (the report still lists every plot)."""
    figure, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, "no test labels: predictions only", ha="center", va="center")
    save_figure(figure, out)


def confusion_matrix_plot(confusion: pd.DataFrame, out: Path) -> None:
    """The test confusion matrix (rows: true label); without test labels, a placeholder
    image that says so, so the report and the rule's output always exist."""
    if confusion.empty:
        return _no_test_labels(out)
    labels = list(confusion["true_label"])
    matrix = confusion.drop(columns="true_label").to_numpy()
    size = max(5, 0.35 * len(labels) + 2)
    figure, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    if len(labels) <= 20:
        for (r, c), value in np.ndenumerate(matrix):
            if value:
                ax.text(
                    c,
                    r,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > matrix.max() / 2 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("fused system on the labelled test clips")
    save_figure(figure, out)


def per_class_plot(per_class: pd.DataFrame, system: str, out: Path) -> None:
    """Per-class bars of one system; a multi-label per_class.csv (with ``lwlrap``) adds each
    class's lwlrap, the picture that replaces the confusion matrix in that mode."""
    table = per_class[per_class["system"] == system]
    if table.empty:
        return _no_test_labels(out)
    metrics = ("precision", "recall", "f1", "lwlrap") if "lwlrap" in table else ("precision", "recall", "f1")
    width = 0.27 if len(metrics) == 3 else 0.2  # 0.27: the single-label picture as before
    figure, ax = plt.subplots(figsize=(max(8, 0.1 * len(metrics) * len(table) + 3), 4))
    x = np.arange(len(table))
    for n, metric in enumerate(metrics):
        ax.bar(x + (n - (len(metrics) - 1) / 2) * width, table[metric], width=width, label=metric)
    ax.set_xticks(x, table["label"], rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.legend()
    if "lwlrap" in table:
        ax.set_title(f"{system}: per-class lwlrap; precision, recall, F1 of labels at >= 0.5 (test clips)")
    else:
        ax.set_title(f"{system}: per-class precision, recall and F1 on the test clips")
    save_figure(figure, out)
