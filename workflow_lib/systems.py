"""One table and one plot for every chain of a run (rule systems, ``results/systems*``).

Every chain ran on the same folds, spectrograms, networks and training budget. Per chain and
preset: cross-validation loss, accuracy and MAP@3 (means over the folds of the verified
validation clips at each fold's kept epoch, at the chain's chosen iteration, exactly as model
selection reads them), test accuracy and MAP@3 (fold-averaged posteriors of the chosen
iteration on the labelled test clips, Public+Private), and per judging iteration the clips its
policy trusted with their precision and recall where the true labels are known. ``low_trust``
marks iterations whose policy trusted no clip or fewer than trust.min_trusted_share of the
judged ones (policies.low_trust); ``near_tie`` that the chosen iteration won a near-tie of
validation losses (selection.py).

The multi-label task (:data:`workflow_lib.task.MULTI`): the test columns are ``n_test`` and
``test_lwlrap`` (the DCASE 2019 metric on the labelled test clips) instead of test accuracy and
MAP@3, both tables gain ``cv_lwlrap`` (the selection's ``mean_valid_lwlrap``), and the plot
shows lwlrap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .dataset import TOTAL_ROW, read_classes
from .evaluation import evaluate_systems
from .io import read_csv_str, write_csv
from .policies import low_trust
from .task import MULTI, SINGLE, Task

if TYPE_CHECKING:  # annotations only: matplotlib is imported where a plot is drawn
    from matplotlib.axes import Axes

SCORED_SET = "Public+Private"
ITERATION_COLUMNS = [
    "preset",
    "system",
    "policy",
    "iteration",
    "chosen",
    "near_tie",
    "cv_accuracy",
    "cv_map3",
    "cv_loss",
    "n_judged",
    "trusted",
    "trusted_correct",
    "trusted_precision",
    "trusted_recall",
    "low_trust",
]


def _overall(paths: Mapping[str, str]) -> dict[int, pd.Series]:
    """{judging iteration: the ALL row of its per_class.csv}."""
    tables = {}
    for iteration, path in paths.items():
        table = pd.read_csv(path, dtype={"label": str})
        tables[int(iteration)] = table.loc[table["label"] == TOTAL_ROW].iloc[0]
    return dict(sorted(tables.items()))


def _test_scores(test: pd.DataFrame, probs_csv: str, classes: list[str], task: Task = SINGLE) -> dict:
    """systems.csv's ``n_test`` and the task's test columns (:attr:`Task.test_columns`) of one
    posterior table; NaN scores without test labels."""
    frame = pd.read_csv(probs_csv, dtype={"fname": str})
    scored = test[test["fname"].isin(set(frame["fname"]))]
    columns = task.test_columns
    if scored["label"].eq("").all():
        return {"n_test": 0, **dict.fromkeys(columns, np.nan)}
    scores = evaluate_systems(scored, {"system": frame}, classes, task)
    row = scores[scores["set"] == SCORED_SET].iloc[0]
    return {"n_test": int(row["n"]), **{ours: float(row[theirs]) for ours, theirs in columns.items()}}


#: CV columns both tables add per task after ``cv_loss`` / ``cv_map3``: {ours: the selection's}.
EXTRA_CV = {SINGLE.name: {}, MULTI.name: {"cv_lwlrap": "mean_valid_lwlrap"}}


def iteration_columns(task: Task = SINGLE) -> list[str]:
    """The columns of systems_iterations.csv: the multi-label task adds ``cv_lwlrap`` after
    ``cv_loss`` (:data:`EXTRA_CV`)."""
    at = ITERATION_COLUMNS.index("cv_loss") + 1
    return [*ITERATION_COLUMNS[:at], *EXTRA_CV[task.name], *ITERATION_COLUMNS[at:]]


def _extra_cv(selection_row: pd.Series, task: Task) -> dict:
    """The task's :data:`EXTRA_CV` figures of one selection row (NaN where it lacks them)."""
    return {ours: float(selection_row.get(theirs, np.nan)) for ours, theirs in EXTRA_CV[task.name].items()}


def _trust_numbers(overall: pd.Series | None, policy: str, min_share: float) -> dict:
    """One judging iteration's trust figures from its per_class.csv total row (NaN where
    that iteration judged nothing, e.g. the last one)."""
    if overall is None:
        return {
            "n_judged": np.nan,
            "trusted": np.nan,
            "trusted_correct": np.nan,
            "trusted_precision": np.nan,
            "trusted_recall": np.nan,
            "low_trust": False,
        }
    judged, trusted = int(overall["n_unverified"]), int(overall["n_accepted"])
    return {
        "n_judged": judged,
        "trusted": trusted,
        "trusted_correct": overall.get("n_accepted_correct", np.nan),
        "trusted_precision": overall.get("precision", np.nan),
        "trusted_recall": overall.get("recall", np.nan),
        "low_trust": low_trust(trusted, judged, policy, min_share),
    }


def systems_tables(
    spec: Sequence[Mapping],
    test_csv: Path,
    classes_csv: Path,
    min_share: float = 0.0,
    task: Task = SINGLE,
    picked: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per chain and preset, one row per chain, preset and iteration).

    ``spec`` items (layout.systems_spec): ``system`` (the chain), ``preset``, ``policy``,
    ``description``, ``selection`` (CSV), ``test`` (posteriors CSV), ``self_verify``
    ({iteration: per_class.csv}) and, for a pool chain, ``pool`` ({iteration:
    pool_per_class.csv}). ``picked``: the chain the tagger and the export use
    (config key chain_choice, workflow_lib/choice.py), marked in the ``picked`` column; None:
    the first chain of ``spec`` (the first of run_chains).
    """
    picked = picked if picked is not None else (spec[0]["system"] if spec else None)
    classes = read_classes(classes_csv)
    test = read_csv_str(test_csv)
    rows, per_iteration = [], []
    for item in spec:
        selection = pd.read_csv(item["selection"])
        overall = _overall(item.get("self_verify") or {})
        per_iteration += _iteration_rows(item, selection, overall, min_share, task)
        scores = _test_scores(test, item["test"], classes, task)
        row = _system_row(item, selection, overall, scores, item["system"] == picked, min_share, task)
        rows.append(row | _pool_columns(item, min_share))
    systems = pd.DataFrame(rows)
    for column in [
        c
        for c in systems.columns
        if c.startswith(("trusted", "pool_trusted")) and not c.endswith(("precision", "recall"))
    ] + ["n_test"]:
        systems[column] = pd.to_numeric(systems[column]).astype("Int64")
    iterations = pd.DataFrame(per_iteration, columns=iteration_columns(task))
    for column in ("n_judged", "trusted", "trusted_correct"):
        iterations[column] = pd.to_numeric(iterations[column]).astype("Int64")
    return systems, iterations


def _by_iteration_columns(numbers: Mapping[int, dict], prefix: str = "") -> dict:
    """systems.csv's per-iteration trust columns from :func:`_trust_numbers` per judging
    iteration: ``<prefix>trusted_by_it<k>`` and its ``_precision`` and ``_recall``."""
    row = {}
    for judge, n in numbers.items():
        row[f"{prefix}trusted_by_it{judge}"] = n["trusted"]
        row[f"{prefix}trusted_by_it{judge}_precision"] = n["trusted_precision"]
        row[f"{prefix}trusted_by_it{judge}_recall"] = n["trusted_recall"]
    return row


def _pool_columns(item: Mapping, min_share: float) -> dict:
    """A pool chain's systems.csv columns (prefix ``pool_``): per judging iteration, the pool
    clips (labels) its policy trusted and, where the pool's true labels are known, their
    precision and their recall over the pool clips whose predicted label is right. Chains
    without a pool get none (their cells stay empty)."""
    pool = _overall(item.get("pool") or {})
    numbers = {judge: _trust_numbers(o, item["policy"], min_share) for judge, o in pool.items()}
    return _by_iteration_columns(numbers, prefix="pool_")


def _iteration_rows(
    item: Mapping, selection: pd.DataFrame, overall: dict[int, pd.Series], min_share: float, task: Task
) -> list[dict]:
    """systems_iterations.csv rows of one chain and preset: per iteration, its CV figures and
    what its models' judgement trusted (the selection curve and the trust it rests on)."""
    rows = []
    for _, line in selection.sort_values("iteration").iterrows():
        judge = int(line["iteration"])
        rows.append(
            {
                "preset": item["preset"],
                "system": item["system"],
                "policy": item["policy"],
                "iteration": judge,
                "chosen": bool(line["chosen"]),
                "near_tie": bool(line.get("near_tie", False)),
                "cv_accuracy": float(line["mean_valid_acc"]),
                "cv_map3": float(line.get("mean_valid_map3", np.nan)),
                "cv_loss": float(line["mean_valid_loss"]),
                **_extra_cv(line, task),
                **_trust_numbers(overall.get(judge), item["policy"], min_share),
            }
        )
    return rows


def _system_row(
    item: Mapping,
    selection: pd.DataFrame,
    overall: dict[int, pd.Series],
    test_scores: dict,
    picked: bool,
    min_share: float,
    task: Task,
) -> dict:
    """systems.csv row of one chain and preset: the chosen iteration's CV and test figures, and
    the trust of the list that iteration was trained on (iteration i trains on the list judged
    by iteration i - 1), plus the trust of every judging iteration."""
    chosen = selection.loc[selection["chosen"].astype(bool)].iloc[0]
    iteration = int(chosen["iteration"])
    trained_on = _trust_numbers(overall.get(iteration - 1), item["policy"], min_share)
    numbers = {judge: _trust_numbers(o, item["policy"], min_share) for judge, o in overall.items()}
    first = next(iter(overall.values()), None)
    row = {
        "preset": item["preset"],
        "system": item["system"],
        "policy": item["policy"],
        "description": item.get("description", ""),
        "picked": picked,
        "iteration": iteration,
        "near_tie": bool(chosen.get("near_tie", False)),
        "cv_loss": float(chosen["mean_valid_loss"]),
        "cv_accuracy": float(chosen["mean_valid_acc"]),
        "cv_map3": float(chosen.get("mean_valid_map3", np.nan)),
        **_extra_cv(chosen, task),
        **test_scores,
        "given_label_precision": (np.nan if first is None else first.get("unverified_precision", np.nan)),
        "trusted_clips": trained_on["trusted"] if iteration > 0 else 0,
        "trusted_precision": trained_on["trusted_precision"] if iteration > 0 else np.nan,
        "trusted_recall": trained_on["trusted_recall"] if iteration > 0 else np.nan,
        "low_trust_iterations": ";".join(str(i) for i, n in numbers.items() if n["low_trust"]),
    }
    return row | _by_iteration_columns(numbers)


#: (column, legend) of the bars per chain, and (column, axis label) of the selection curves
PLOTTED = {
    SINGLE.name: (
        (
            ("cv_accuracy", "CV accuracy (verified)"),
            ("test_accuracy", "test accuracy"),
            ("test_map3", "test MAP@3"),
        ),
        ("cv_accuracy", "CV accuracy, verified validation clips"),
    ),
    MULTI.name: (
        (
            ("cv_lwlrap", "CV lwlrap (curated)"),
            ("test_lwlrap", "test lwlrap"),
            ("cv_accuracy", "CV top-1 in set (curated)"),
        ),
        ("cv_lwlrap", "CV lwlrap, curated validation clips"),
    ),
}


def plot_systems(systems: pd.DataFrame, iterations: pd.DataFrame, out: Path, task: Task = SINGLE) -> None:
    """Scores per chain; CV accuracy (multi-label: lwlrap) per iteration; trusted clips,
    precision and recall (:data:`PLOTTED`)."""
    # matplotlib: only the systems plot needs it
    import matplotlib
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from .plots import save_figure  # selects the Agg backend

    several = systems["preset"].nunique() > 1
    names = [
        f"{p}\n{s}" if several else s.replace("_", "\n") for p, s in zip(systems["preset"], systems["system"])
    ]
    figure, axes = plt.subplots(1, 3, figsize=(18, 5))
    plotted, (curve, curve_label) = PLOTTED[task.name]
    _score_bars(axes[0], systems, names, plotted)
    curves, counts = axes[1], axes[2]
    twin = counts.twinx()
    _iteration_panels(curves, counts, twin, iterations, curve, several)
    given = systems["given_label_precision"].dropna() if "given_label_precision" in systems else []
    if len(given):
        twin.axhline(
            float(given.iloc[0]), color="grey", linestyle=":", linewidth=1, label="given unverified labels"
        )
    for ax in (curves, counts):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _label_iteration_panels(curves, counts, twin, curve_label, task)
    figure.tight_layout()
    save_figure(figure, out)


#: (column, line style, legend) of the lines on the trust panel's twin axis.
TRUST_LINES = (("trusted_precision", "-o", "precision"), ("trusted_recall", "--x", "recall"))


def _score_bars(
    bars: Axes, systems: pd.DataFrame, names: list[str], plotted: Sequence[tuple[str, str]]
) -> None:
    """The first panel: per chain a bar per score, its value written on it (the differences
    between chains are often in the third decimal)."""
    x = np.arange(len(systems))
    for shift, (column, label) in zip((-0.27, 0.0, 0.27), plotted):
        values = systems[column].to_numpy(dtype=float)
        bars.bar(x + shift, values, width=0.27, label=label)
        for xi, value in zip(x + shift, values):
            if np.isfinite(value):
                bars.text(
                    xi, value + 0.005, f"{value:.3f}", ha="center", va="bottom", fontsize=6, rotation=90
                )
    finite = systems[[column for column, _ in plotted]].to_numpy(dtype=float)
    low = np.nanmin(finite) if np.isfinite(finite).any() else 0.0
    bars.set_ylim(max(0.0, low - 0.1), 1.08)
    bars.set_xticks(x, names, fontsize=7)
    bars.legend(fontsize=7, loc="upper center", ncol=3)
    bars.set_title("chains (same folds, net and budget)")


def _iteration_panels(
    curves: Axes, counts: Axes, twin: Axes, iterations: pd.DataFrame, curve: str, several: bool
) -> None:
    """Per chain (one color): its selection curve (star: the chosen iteration) in ``curves``;
    the clips its policy trusted per judging iteration as bars in ``counts``, their precision
    and recall as lines on the ``twin`` axis of the same panel."""
    variants = list(iterations.groupby(["preset", "system"], sort=False))
    width = 0.8 / max(1, len(variants))
    for n, ((preset, system), table) in enumerate(variants):
        label = f"{preset}/{system}" if several else system
        color = f"C{n % 10}"
        curves.plot(table["iteration"], table[curve], "-o", color=color, label=label)
        chosen = table[table["chosen"]]
        curves.plot(chosen["iteration"], chosen[curve], "*", color=color, markersize=14)
        judged = table.dropna(subset=["trusted"])
        if judged.empty:
            continue
        counts.bar(
            judged["iteration"] + (n - (len(variants) - 1) / 2) * width,
            judged["trusted"].astype(float),
            width=width,
            color=color,
            alpha=0.5,
            label=f"{label}: clips",
        )
        for column, style, name in (
            ("trusted_precision", "-o", "precision"),
            ("trusted_recall", "--x", "recall"),
        ):
            twin.plot(
                judged["iteration"],
                judged[column].astype(float),
                style,
                color=color,
                label=f"{label}: {name}",
            )


#: The trust panel's count axis per task: what one trust decision is about.
TRUSTED_AXIS = {SINGLE.name: "trusted unverified clips", MULTI.name: "trusted (clip, label) pairs"}


def _label_iteration_panels(curves: Axes, counts: Axes, twin: Axes, curve_label: str, task: Task) -> None:
    """Axis labels, titles and legends of the selection and trust panels (one legend for the
    bars and the twin axis' lines)."""
    curves.set_xlabel("iteration (star: chosen)")
    curves.set_ylabel(curve_label)
    curves.legend(fontsize=7)
    curves.set_title("model selection")
    counts.set_xlabel("trusted by the policy on the models of iteration")
    counts.set_ylabel(TRUSTED_AXIS[task.name])
    twin.set_ylabel("precision (solid) / recall (dashed) of trusted labels")
    twin.set_ylim(0, 1.05)
    counts.legend(
        handles=_style_key(twin), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4
    )
    counts.set_title("trusted labels (colours: the chains of the middle panel)")


def _style_key(twin: Axes) -> list:
    """The trust panel's legend: what each mark means, in grey (the colours are the chains, named
    once in the selection panel's legend). A legend entry per chain and mark drew 3-4 entries per
    chain over the bars."""
    # matplotlib: only the systems plot needs it
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    key = [
        Patch(color="grey", alpha=0.5, label="trusted clips (bars)"),
        Line2D([], [], color="grey", marker="o", linestyle="-", label="precision"),
        Line2D([], [], color="grey", marker="x", linestyle="--", label="recall"),
    ]
    if any(line.get_linestyle() == ":" for line in twin.get_lines()):
        key.append(Line2D([], [], color="grey", linestyle=":", label="precision of the given labels"))
    return key


def systems_job(
    spec: Sequence[Mapping],
    test_csv: Path,
    classes_csv: Path,
    out_csv: Path,
    out_iterations: Path,
    out_plot: Path,
    min_share: float = 0.0,
    task: Task = SINGLE,
    picked: str | None = None,
) -> pd.DataFrame:
    """systems.csv, systems_iterations.csv and systems.png of every chain (see the module
    docstring)."""
    systems, iterations = systems_tables(spec, test_csv, classes_csv, min_share, task, picked)
    write_csv(systems, out_csv)
    write_csv(iterations, out_iterations)
    plot_systems(systems, iterations, out_plot, task)
    return systems
