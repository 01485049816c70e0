"""A study over repetitions (held-out group x seed): per chain, the spread of its scores and
its paired differences to reference chains (experiments/fsdd/run_experiment.py --study).

Each repetition is one complete run whose ``systems.csv`` (workflow_lib/systems.py) holds one
row per chain. Differences are paired by repetition (same dataset split, same iteration-0
models where chains share them), so the noise between repetitions cancels; the p-values are
two-sided: Wilcoxon signed-rank (scipy, exact for small n; zero differences dropped) and the
sign test (binomial on wins vs losses). With few repetitions neither can be small: 5 all-same-
sign pairs give a sign-test p of 0.0625, so say "no evidence" rather than "no difference".

The interval of a mean difference is the 95 % t-interval (mean +- t(0.975, n-1) * sd / sqrt(n)),
not a bootstrap: with the 3-10 repetitions a study has, a percentile bootstrap of the mean can
take only a handful of distinct values and comes out too narrow, while the t-interval is honest
about how little n = 3 says (its half-width is 4.3 standard errors there).

Choosing the chain by cross-validation (workflow_lib/choice.py) is replayed per repetition on
its systems.csv, with the near-tie tolerance that repetition ran with (its experiment.json's
``trust.selection_tolerance``, so the replayed pick is the one ``chain_choice: cv`` would have
made in that run): :func:`regret` says how much test score the CV pick lost against the chain
that was best on test, next to always taking each fixed chain. Test figures only measure the
pick; nothing here or in the workflow chooses by them.

Recompute a study's tables (and the README's numbers) from its per-repetition systems.csv
files: ``python -m workflow_lib.study experiments/fsdd/reference/study_singlelabel``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .choice import pick_chain
from .errors import UserError
from .io import write_csv, write_text
from .study_report import Figure, Page, Table, render
from .task import MULTI, SINGLE

#: The test scores the paired comparisons are made on, where present: every task's systems.csv
#: test columns (single-label: test accuracy and MAP@3; multi-label: test lwlrap).
TEST_METRICS = tuple(dict.fromkeys(column for task in (SINGLE, MULTI) for column in task.test_columns))
#: Scores summarised when a repetition's systems.csv has them: the test scores, then the CV ones.
METRICS = (*TEST_METRICS, "cv_accuracy", "cv_loss", "cv_lwlrap")


def present(long: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """The metrics that are columns of the table (a single- or a multi-label study)."""
    return [m for m in metrics if m in long.columns]


KEYS = ("repetition", "preset", "system")
#: The chains every other one is compared with: the paper's method and trusting every label.
REFERENCES = ("self_verification", "all_labels")
#: Files the study writes in its folder (run_experiment.py --study, --copy-to copies them).
STUDY_FILES = (
    "study_runs.csv",
    "study_summary.csv",
    "study_paired.csv",
    "study_regret.csv",
    "study_trust.csv",
    "study_paired.png",
    "study_report.html",
)
#: systems.csv's per-iteration trust columns: ``trusted_by_it<k>`` (a pool chain also
#: ``pool_trusted_by_it<k>``) and its precision and recall.
TRUST_COLUMN = re.compile(r"^(pool_)?trusted_by_it(\d+)$")
#: study_runs.csv's column of the near-tie tolerance each repetition's CV pick is replayed with
#: (its run's ``trust.selection_tolerance``).
TOLERANCE_COLUMN = "selection_tolerance"


def main_metric(long: pd.DataFrame) -> str:
    """The test score a study compares first: lwlrap (multi-label) or accuracy."""
    return "test_lwlrap" if "test_lwlrap" in long.columns else "test_accuracy"


def collect(runs: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """{repetition name: its systems.csv} -> one long table with a ``repetition`` column."""
    frames = [table.assign(repetition=name) for name, table in runs.items()]
    if not frames:
        return pd.DataFrame(columns=list(KEYS))
    table = pd.concat(frames, ignore_index=True)
    return table[["repetition", *[c for c in table.columns if c != "repetition"]]]


def summarise(long: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per preset and chain: number of repetitions, mean, standard deviation, min and max."""
    rows = []
    for (preset, system), group in long.groupby(["preset", "system"], sort=False):
        row = {"preset": preset, "system": system, "n": len(group)}
        for metric in present(long, metrics):
            values = group[metric].to_numpy(dtype=float)
            row[f"{metric}_mean"] = float(np.nanmean(values)) if len(values) else np.nan
            row[f"{metric}_std"] = float(np.nanstd(values, ddof=1)) if len(values) > 1 else np.nan
            row[f"{metric}_min"] = float(np.nanmin(values)) if len(values) else np.nan
            row[f"{metric}_max"] = float(np.nanmax(values)) if len(values) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def sign_test(differences: np.ndarray) -> float:
    """Two-sided sign test p-value (zero differences dropped); 1.0 with nothing to test."""
    # scipy.stats (slow to import): only the statistics need it
    from scipy.stats import binomtest

    wins, losses = int((differences > 0).sum()), int((differences < 0).sum())
    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; NaN when every difference is zero."""
    # scipy.stats (slow to import): only the statistics need it
    from scipy.stats import wilcoxon

    nonzero = differences[differences != 0]
    if len(nonzero) == 0:
        return float("nan")
    return float(wilcoxon(nonzero).pvalue)


def t_interval(differences: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided t-interval of the mean (n - 1 degrees of freedom); NaNs below two values."""
    # scipy.stats (slow to import): only the statistics need it
    from scipy.stats import t

    n = len(differences)
    if n < 2:
        return float("nan"), float("nan")
    mean, error = float(differences.mean()), float(differences.std(ddof=1)) / np.sqrt(n)
    half = float(t.ppf(0.5 + level / 2, n - 1)) * error
    return mean - half, mean + half


def differences(long: pd.DataFrame, reference: str, metric: str) -> pd.DataFrame:
    """Per preset and repetition (rows) and chain (columns): the chain's score minus the
    reference chain's in the same repetition (NaN where either is missing)."""
    wide = long.pivot_table(index=["preset", "repetition"], columns="system", values=metric, sort=False)
    if reference not in wide:
        return pd.DataFrame(index=wide.index)
    others = [c for c in wide.columns if c != reference]
    return wide[others].sub(wide[reference], axis=0)


def paired_row(diff: np.ndarray) -> dict:
    """n, mean, sd, 95 % t-interval, wins/losses/ties, both p-values of some differences and
    the :func:`verdict` they allow."""
    low, high = t_interval(diff)
    row = {
        "n": len(diff),
        "mean_difference": float(diff.mean()) if len(diff) else np.nan,
        "std_difference": float(diff.std(ddof=1)) if len(diff) > 1 else np.nan,
        "ci95_low": low,
        "ci95_high": high,
        "wins": int((diff > 0).sum()),
        "losses": int((diff < 0).sum()),
        "ties": int((diff == 0).sum()),
        "wilcoxon_p": wilcoxon_p(diff),
        "sign_test_p": sign_test(diff),
    }
    row["verdict"] = verdict(row["n"], row["mean_difference"], row["wilcoxon_p"], row["sign_test_p"])
    return row


#: The project's rule for a claim (README, "How the studies' statistics are computed"): a chain
#: "beats" another only when both two-sided p-values are below CLAIM_ALPHA over at least
#: CLAIM_MIN_PAIRS paired repetitions; anything weaker is "no difference shown".
CLAIM_MIN_PAIRS = 10
CLAIM_ALPHA = 0.05


def verdict(n: int, mean_difference: float, wilcoxon: float, sign: float) -> str:
    """``beats``, ``is beaten by`` or ``no difference shown``, by :data:`CLAIM_MIN_PAIRS` and
    :data:`CLAIM_ALPHA` (both tests must agree, so a claim never rests on the kinder one)."""
    if n >= CLAIM_MIN_PAIRS and max(wilcoxon, sign) < CLAIM_ALPHA:
        return "beats" if mean_difference > 0 else "is beaten by"
    return "no difference shown"


def paired(long: pd.DataFrame, references: Sequence[str], metric: str = "test_accuracy") -> pd.DataFrame:
    """Per preset, chain and reference chain: chain minus reference, paired by repetition."""
    rows = []
    for reference in references:
        table = differences(long, reference, metric)
        for preset, block in table.groupby(level="preset", sort=False):
            for system in block.columns:
                diff = block[system].dropna().to_numpy(dtype=float)
                rows.append(
                    {"preset": preset, "system": system, "reference": reference, "metric": metric}
                    | paired_row(diff)
                )
    return pd.DataFrame(rows)


def plot_paired(long: pd.DataFrame, references: Sequence[str], metric: str, out: Path) -> None:
    """One panel per reference chain, one row per chain: a dot per repetition (chain minus
    reference), the mean (bar) and its 95 % t-interval (line); written atomically."""
    # matplotlib: only the plot needs it; the Agg backend is chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    # pyplot after the backend is chosen
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from .plots import save_figure

    panels = [(r, differences(long, r, metric)) for r in references]
    panels = [(r, d) for r, d in panels if d.shape[1]]
    rows = max((d.shape[1] for _, d in panels), default=1)
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 0.6 * rows + 1.6))
    for axis, (reference, table) in zip(np.atleast_1d(axes), panels):
        for y, system in enumerate(table.columns):
            diff = table[system].dropna().to_numpy(dtype=float)
            axis.plot(diff, np.full(len(diff), y), "o", color="tab:blue", alpha=0.6)
            low, high = t_interval(diff)
            axis.plot([low, high], [y, y], "-", color="black", linewidth=1.5)
            axis.plot([diff.mean()] if len(diff) else [], [y] if len(diff) else [], "|", color="black", ms=14)
        axis.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
        axis.xaxis.set_major_locator(MaxNLocator(6))
        axis.set_yticks(range(table.shape[1]), list(table.columns))
        axis.set_ylim(-0.6, table.shape[1] - 0.4)
        axis.invert_yaxis()
        n = table.notna().sum().max()
        axis.set_xlabel(f"{metric} minus {reference} (n = {n} repetitions; line: 95 % t-interval)")
    if not panels:
        np.atleast_1d(axes)[0].text(0.5, 0.5, "no reference chain in the study", ha="center")
    figure.tight_layout()
    save_figure(figure, out)


def regret(long: pd.DataFrame, tolerance: float | None = None, metric: str | None = None) -> pd.DataFrame:
    """Per repetition and strategy (``cv``: the CV pick, workflow_lib/choice.py; or a fixed
    chain): the chain taken, its test score, the test-best chain and the regret (best minus
    taken, >= 0). A chain's test score is its mean over presets (systems.csv has no fusion
    row; with one preset, as in the FSDD studies, it is that preset's score). The pick's
    near-tie tolerance (column ``tolerance``) is ``tolerance`` where given, else the
    repetition's own (:data:`TOLERANCE_COLUMN`, 0.0 where the table has none: the workflow's
    default)."""
    metric = metric or main_metric(long)
    rows = []
    for repetition, table in long.groupby("repetition", sort=False):
        scores = table.groupby("system", sort=False)[metric].mean()
        if scores.isna().all():  # no test labels in this repetition: nothing to measure
            continue
        best = scores.idxmax()
        used = repetition_tolerance(table, tolerance)
        picked = pick_chain(table, used)[0]["chain"]
        for strategy, chain in [("cv", picked), *[(c, c) for c in scores.index]]:
            rows.append(
                {
                    "repetition": repetition,
                    "strategy": strategy,
                    "chain": chain,
                    "metric": metric,
                    "score": scores[chain],
                    "best_chain": best,
                    "best_score": scores[best],
                    "regret": scores[best] - scores[chain],
                    "tolerance": used,
                }
            )
    columns = [
        "repetition",
        "strategy",
        "chain",
        "metric",
        "score",
        "best_chain",
        "best_score",
        "regret",
        "tolerance",
    ]
    return pd.DataFrame(rows, columns=columns)


def repetition_tolerance(table: pd.DataFrame, tolerance: float | None) -> float:
    """The near-tie tolerance of one repetition's CV pick: the given override, else the
    repetition's :data:`TOLERANCE_COLUMN` (one value per repetition), else 0.0."""
    if tolerance is not None:
        return float(tolerance)
    if TOLERANCE_COLUMN not in table.columns or table[TOLERANCE_COLUMN].isna().all():
        return 0.0
    return float(table[TOLERANCE_COLUMN].dropna().iloc[0])


def regret_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: repetitions, mean and largest regret, how often it took the test-best."""
    grouped = table.groupby("strategy", sort=False)["regret"]
    return pd.DataFrame(
        {
            "n": grouped.size(),
            "mean_regret": grouped.mean(),
            "max_regret": grouped.max(),
            "took_best": grouped.apply(lambda r: int((r == 0).sum())),
        }
    ).reset_index()


def trust_by_iteration(long: pd.DataFrame) -> pd.DataFrame:
    """Per preset, chain, what was judged (``unverified`` clips, or the unlabelled ``pool`` of
    a pool chain) and judging iteration: how many clips (label sets: labels) the chain
    trusted, and their precision and recall against the true labels, as mean, min and max
    over the repetitions. Recall is over the correctly labelled unverified clips (pool: the
    pool clips whose predicted label is right), so it says how much of the usable data a
    policy kept; chains without a count (no ``trusted_by_it<k>`` value) are left out."""
    found = sorted((m.group(1) or "", int(m.group(2))) for c in long.columns if (m := TRUST_COLUMN.match(c)))
    rows = []
    for (preset, system), group in long.groupby(["preset", "system"], sort=False):
        for prefix, k in found:
            counts = group[f"{prefix}trusted_by_it{k}"].dropna()
            if counts.empty:
                continue
            judged = "pool" if prefix else "unverified"
            row = {"preset": preset, "system": system, "judged": judged, "iteration": k, "n": len(counts)}
            row["trusted_mean"] = float(counts.mean())
            for measure in ("precision", "recall"):
                values = group[f"{prefix}trusted_by_it{k}_{measure}"].dropna().to_numpy(dtype=float)
                row[f"{measure}_mean"] = float(values.mean()) if len(values) else np.nan
                row[f"{measure}_min"] = float(values.min()) if len(values) else np.nan
                row[f"{measure}_max"] = float(values.max()) if len(values) else np.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=TRUST_TABLE_COLUMNS)


TRUST_TABLE_COLUMNS = [
    "preset",
    "system",
    "judged",
    "iteration",
    "n",
    "trusted_mean",
    *[f"{m}_{s}" for m in ("precision", "recall") for s in ("mean", "min", "max")],
]


def study_tables(
    long: pd.DataFrame, tolerance: float | None = None, references: Sequence[str] = REFERENCES
) -> dict[str, pd.DataFrame]:
    """The study's tables from its long table (:func:`collect`): summary, paired differences
    (every test metric present, to each of ``references``; a study of chains that extend
    another chain pairs them with that one too, e.g. the pool chains with ``agreement``), the
    regret of the CV pick and the trusted labels' precision and recall per iteration.
    ``tolerance`` overrides each repetition's own near-tie tolerance of the CV pick
    (:func:`regret`)."""
    metrics = present(long, TEST_METRICS)
    return {
        "study_runs.csv": long,
        "study_summary.csv": summarise(long),
        "study_paired.csv": pd.concat([paired(long, references, m) for m in metrics], ignore_index=True),
        "study_regret.csv": regret(long, tolerance),
        "study_trust.csv": trust_by_iteration(long),
    }


def write_study(
    long: pd.DataFrame, out: Path, tolerance: float | None = None, references: Sequence[str] = REFERENCES
) -> dict[str, pd.DataFrame]:
    """Write :data:`STUDY_FILES` to ``out`` (each atomically) and return the tables."""
    tables = study_tables(long, tolerance, references)
    for name, table in tables.items():
        write_csv(table, Path(out) / name)
    plot_paired(long, references, main_metric(long), Path(out) / "study_paired.png")
    write_text(render(study_page(tables, Path(out).resolve().name)), Path(out) / "study_report.html")
    return tables


def finished_repetitions(folder: Path) -> list[Path]:
    """The repetition subfolders of a study folder that finished (``experiment.json``, written
    last, is there) and hold a ``systems.csv``, in name order; none for a missing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [
        d
        for d in sorted(folder.iterdir())
        if d.is_dir() and (d / "experiment.json").is_file() and (d / "systems.csv").is_file()
    ]


def read_study(folder: Path) -> pd.DataFrame:
    """The long table of a study folder: every finished repetition (:func:`finished_repetitions`),
    each row with the near-tie tolerance its run chose chains with (:data:`TOLERANCE_COLUMN`,
    :func:`recorded_tolerance`)."""
    reps = finished_repetitions(folder)
    runs = {
        d.name: read_systems(d / "systems.csv").assign(**{TOLERANCE_COLUMN: recorded_tolerance(d)})
        for d in reps
    }
    if not runs:
        raise SystemExit(
            f"{folder}: no finished repetition (a subfolder with experiment.json and systems.csv)"
        )
    return collect(runs)


def read_systems(path: Path) -> pd.DataFrame:
    """One repetition's systems.csv, checked as input that may come from elsewhere: it must
    parse, name ``preset`` and ``system`` and a test score, hold one row per (preset, chain)
    (a repeated row would be averaged away unseen) and numbers in its score and trust
    columns; anything else is one :class:`UserError` naming the file."""
    try:
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise UserError(f"{path}: not a readable systems table ({error})") from None
    missing = [c for c in ("preset", "system") if c not in table.columns]
    if missing or not present(table, TEST_METRICS):
        wanted = ", ".join(
            [*missing, *([] if present(table, TEST_METRICS) else ["one of " + "/".join(TEST_METRICS)])]
        )
        raise UserError(f"{path}: a systems table needs the columns {wanted}")
    repeated = table[table.duplicated(["preset", "system"], keep=False)]
    if not repeated.empty:
        pairs = sorted(set(zip(repeated["preset"].astype(str), repeated["system"].astype(str))))
        raise UserError(f"{path}: more than one row for (preset, chain) {pairs[:3]}")
    numeric = [
        *present(table, METRICS),
        *[c for c in table.columns if c.startswith(("trusted_", "pool_trusted_"))],
    ]
    wrong = [c for c in numeric if not pd.api.types.is_numeric_dtype(table[c])]
    if wrong:
        raise UserError(f"{path}: the columns {wrong} must hold numbers")
    return table


def recorded_tolerance(repetition: Path) -> float:
    """``settings.trust.selection_tolerance`` of a repetition's experiment.json (0.0, the
    workflow's default, where the record has no such key). The file may come from elsewhere:
    anything but a finite number >= 0 is refused with the file named."""
    path = Path(repetition) / "experiment.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable JSON record ({error})") from None
    value: Any = record
    for key in ("settings", "trust", "selection_tolerance"):
        value = (
            value.get(key, {} if key != "selection_tolerance" else 0.0) if isinstance(value, dict) else None
        )
    number_ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number_ok or not math.isfinite(value) or value < 0:
        raise UserError(f"{path}: settings.trust.selection_tolerance must be a number >= 0, not {value!r}")
    return float(value)


def report(tables: Mapping[str, pd.DataFrame], digits: int = 3) -> str:
    """The tables as text, the numbers the README quotes."""
    long = tables["study_runs.csv"]
    metric = main_metric(long)
    per_rep = long.pivot_table(index="system", columns="repetition", values=metric, sort=False)
    summary = tables["study_summary.csv"]
    keep = ["preset", "system", "n", *[c for c in summary.columns if c.endswith(("_mean", "_std"))]]
    paired_table = tables["study_paired.csv"].drop(columns=["preset"], errors="ignore")
    trust_table = tables["study_trust.csv"].drop(columns=["preset"], errors="ignore")
    regret_table = tables["study_regret.csv"]
    by_repetition = regret_table.pivot_table(
        index="strategy", columns="repetition", values="regret", sort=False
    )
    picks = regret_table[regret_table["strategy"] == "cv"][["repetition", "chain", "best_chain"]]
    parts = [
        f"{metric} per repetition:\n{per_rep.round(digits).to_string()}",
        f"per chain (mean, sd over repetitions):\n{summary[keep].round(digits).to_string(index=False)}",
        "paired differences (chain minus reference; 95 % t-interval; two-sided p):\n"
        + paired_table.round(digits).to_string(index=False),
        f"CV pick per repetition (chain_choice: cv):\n{picks.to_string(index=False)}",
        f"regret ({metric} of the test-best chain minus the strategy's):\n"
        + by_repetition.round(digits).to_string()
        + "\n\n"
        + regret_summary(regret_table).round(digits).to_string(index=False),
        "trusted unverified labels per judging iteration (mean, min, max over repetitions):\n"
        + trust_table.round(digits).to_string(index=False),
    ]
    return "\n\n".join(parts) + "\n"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def chain_rows(tables: Mapping[str, pd.DataFrame], digits: int = 3) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-chain table: each chain's test scores (mean and sd over the
    repetitions) and its mean regret when always taken, then the CV pick's regret."""
    long, f = tables["study_runs.csv"], f"{{:.{digits}f}}".format
    summary = tables["study_summary.csv"]
    scores = [m for m in present(long, TEST_METRICS) if f"{m}_mean" in summary]
    regrets = regret_summary(tables["study_regret.csv"]).set_index("strategy")
    rows = [
        [f"`{row.system}`", str(row.n), *[f"{f(row[f'{m}_mean'])} ({f(row[f'{m}_std'])})" for m in scores]]
        + [f(regrets.loc[row.system, "mean_regret"]) if row.system in regrets.index else "-"]
        for _, row in summary.iterrows()
    ]
    if "cv" in regrets.index:
        cv = regrets.loc["cv"]
        rows.append(
            ["CV pick (`chain_choice: cv`)", str(int(cv["n"])), *["-"] * len(scores), f(cv["mean_regret"])]
        )
    return ["chain", "repetitions", *[f"{m} mean (sd)" for m in scores], "mean regret"], rows


def paired_rows(
    tables: Mapping[str, pd.DataFrame], metric: str, digits: int = 3
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paired differences of one test score: every chain minus each
    reference chain with its interval, wins/losses/ties, p-values and :func:`verdict` (the
    difference between two reference chains once: the later minus the earlier is left out)."""
    header = [
        metric,
        "mean difference [95 % t-interval]",
        "wins/losses/ties",
        "p (Wilcoxon / sign)",
        "verdict",
    ]
    pairs = tables["study_paired.csv"]
    if pairs.empty:  # neither reference chain ran: nothing is paired
        return header, []
    pairs = pairs[pairs["metric"] == metric]
    order = {name: i for i, name in enumerate(dict.fromkeys(pairs["reference"]))}
    mirrored = pairs["system"].map(order) > pairs["reference"].map(order)  # NaN (no reference): False
    rows = [
        [
            f"`{row.system}` minus `{row.reference}`",
            f"{row.mean_difference:+.{digits}f} [{row.ci95_low:+.{digits}f}, {row.ci95_high:+.{digits}f}]",
            f"{row.wins}/{row.losses}/{row.ties}",
            f"{row.wilcoxon_p:.{digits}f} / {row.sign_test_p:.{digits}f}",
            row.verdict,
        ]
        for row in pairs[~mirrored].itertuples()
    ]
    return header, rows


def markdown_report(tables: Mapping[str, pd.DataFrame], digits: int = 3) -> str:
    """The README's two study tables, ready to paste: :func:`chain_rows`, then
    :func:`paired_rows` of the main score. Printed by ``python -m workflow_lib.study FOLDER
    --markdown``."""
    metric = main_metric(tables["study_runs.csv"])
    return (
        _markdown_table(*chain_rows(tables, digits))
        + "\n\n"
        + _markdown_table(*paired_rows(tables, metric, digits))
        + "\n"
    )


def study_page(tables: Mapping[str, pd.DataFrame], name: str, digits: int = 3) -> Page:
    """The study's page (``study_report.html``): what ran and the claim rule, the per-chain and
    paired tables of every test score, the plot of the paired differences, the scores and the
    CV pick per repetition, and the trusted labels per judging iteration."""
    long = tables["study_runs.csv"]
    metric, repetitions = main_metric(long), list(dict.fromkeys(long["repetition"]))
    paragraphs = [
        f"{len(repetitions)} finished repetitions ({', '.join(repetitions)}); main score `{metric}`, "
        "measured on each repetition's held-out test set, which chose nothing.",
        "Intervals are 95 % t-intervals of the paired differences over the repetitions; p-values are "
        "two-sided (Wilcoxon signed-rank, sign test). A chain 'beats' another only when both "
        f"p-values are below {CLAIM_ALPHA} over at least {CLAIM_MIN_PAIRS} paired repetitions; "
        "anything weaker reads 'no difference shown'.",
    ]
    sections: list[Table | Figure] = [
        Table(
            "Per chain",
            *chain_rows(tables, digits),
            note="mean regret: the test score lost against each repetition's test-best chain when "
            "always taking the chain, or letting the verified validation clips choose (`chain_choice: cv`).",
        ),
        *[
            Table(f"Paired differences: {m}", *paired_rows(tables, m, digits))
            for m in present(long, TEST_METRICS)
        ],
        Figure(
            "Paired differences per repetition",
            "study_paired.png",
            f"{metric} of each chain minus each reference chain, one dot per repetition",
            note="one row per chain: a dot per repetition, the mean (bar) and its 95 % t-interval (line).",
        ),
        _per_repetition_table(long, metric, digits),
        _cv_pick_table(tables["study_regret.csv"], digits),
        _trust_table(tables["study_trust.csv"], digits),
    ]
    return Page(f"Study {name}", paragraphs, sections)


def _per_repetition_table(long: pd.DataFrame, metric: str, digits: int) -> Table:
    wide = long.pivot_table(index="repetition", columns="system", values=metric, sort=False)
    rows = [[str(rep), *[f"{v:.{digits}f}" for v in values]] for rep, values in wide.iterrows()]
    return Table(f"{metric} per repetition", ["repetition", *[f"`{c}`" for c in wide.columns]], rows)


def _cv_pick_table(regrets: pd.DataFrame, digits: int) -> Table:
    rows = [
        [
            str(row.repetition),
            f"`{row.chain}`",
            f"{row.score:.{digits}f}",
            f"`{row.best_chain}`",
            f"{row.best_score:.{digits}f}",
            f"{row.regret:.{digits}f}",
            f"{row.tolerance:g}",
        ]
        for row in regrets[regrets["strategy"] == "cv"].itertuples()
    ]
    header = [
        "repetition",
        "CV pick",
        "its score",
        "test-best chain",
        "its score",
        "regret",
        "near-tie tolerance",
    ]
    return Table("The CV pick per repetition", header, rows)


def _mean_and_range(row: Any, measure: str, f: Any) -> str:
    """'mean [min, max]' of one measure of a study_trust.csv row."""
    mean, low, high = (f(getattr(row, f"{measure}_{part}")) for part in ("mean", "min", "max"))
    return f"{mean} [{low}, {high}]"


def _trust_table(trust: pd.DataFrame, digits: int) -> Table:
    f = f"{{:.{digits}f}}".format
    rows = [
        [
            f"`{row.system}`",
            str(row.judged),
            str(row.iteration),
            str(row.n),
            f"{row.trusted_mean:.1f}",
            *[_mean_and_range(row, measure, f) for measure in ("precision", "recall")],
        ]
        for row in trust.itertuples()
    ]
    header = [
        "chain",
        "judged",
        "iteration",
        "repetitions",
        "trusted (mean)",
        "precision [min, max]",
        "recall [min, max]",
    ]
    return Table(
        "Trusted labels per judging iteration",
        header,
        rows,
        note="recall: of the correctly labelled unverified clips (pool: of the pool clips whose "
        "predicted label is right).",
    )


def check_references(long: pd.DataFrame, references: Sequence[str]) -> None:
    """A reference chain the study never ran would pair nothing, silently: refuse it by name."""
    chains = dict.fromkeys(long["system"])  # in the order they ran
    missing = [name for name in references if name not in chains]
    if missing:
        named, ran = ", ".join(missing), ", ".join(chains)
        raise UserError(f"--references: {named} not in this study (its chains: {ran})")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workflow_lib.study FOLDER [--out DIR] [--tolerance T] [--references CHAIN
    ...] [--markdown]``: recompute a study's tables from its repetitions' systems.csv, print
    them (as the README's Markdown tables with --markdown), and write them with --out."""
    parser = argparse.ArgumentParser(prog="python -m workflow_lib.study", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="a study folder: one subfolder per repetition")
    parser.add_argument("--out", type=Path, help="write the study's files here too")
    parser.add_argument(
        "--markdown", action="store_true", help="print the README's tables as Markdown instead"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="the CV pick's near-tie tolerance for every repetition (default: each repetition's "
        "own trust.selection_tolerance, from its experiment.json)",
    )
    parser.add_argument(
        "--references",
        nargs="+",
        metavar="CHAIN",
        help=f"pair every chain with each of these chains, which the study must have run "
        f"(default: {' '.join(REFERENCES)}, those of them it ran)",
    )
    args = parser.parse_args(argv)
    try:
        long = read_study(args.folder)
        if args.references is not None:
            check_references(long, args.references)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    references = REFERENCES if args.references is None else args.references
    if args.out:
        tables = write_study(long, args.out, args.tolerance, references)
    else:
        tables = study_tables(long, args.tolerance, references)
    if args.markdown:
        sys.stdout.write(markdown_report(tables))
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        sys.stdout.write(report(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
