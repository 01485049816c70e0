"""A study over repetitions (held-out group x seed): per chain, the spread of its scores and
its paired differences to reference chains (experiments/fsdd/run_experiment.py --study).

Each repetition is one complete run whose ``systems.csv`` (workflow_lib/systems.py) holds one
row per chain. Differences are paired by repetition (same dataset split, same iteration-0
models where chains share them), so the noise between repetitions cancels; the p-values are
two-sided: Wilcoxon signed-rank (scipy, exact for small n; zero differences dropped) and the
sign test (binomial on wins vs losses). With few repetitions neither can be small: 5 all-same-
sign pairs give a sign-test p of 0.0625, so say "no evidence" rather than "no difference".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

#: Scores summarised when a repetition's systems.csv has them: single-label runs report test
#: accuracy and MAP@3, multi-label runs (dataset.layout fsdkaggle2019) test lwlrap.
METRICS = ("test_accuracy", "test_map3", "test_lwlrap", "cv_accuracy", "cv_loss", "cv_lwlrap")
#: The test scores the paired comparisons are made on, where present.
TEST_METRICS = ("test_accuracy", "test_map3", "test_lwlrap")


def present(long: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """The metrics that are columns of the table (a single- or a multi-label study)."""
    return [m for m in metrics if m in long.columns]


KEYS = ("repetition", "preset", "system")


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
    from scipy.stats import binomtest

    wins, losses = int((differences > 0).sum()), int((differences < 0).sum())
    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; NaN when every difference is zero."""
    from scipy.stats import wilcoxon

    nonzero = differences[differences != 0]
    if len(nonzero) == 0:
        return float("nan")
    return float(wilcoxon(nonzero).pvalue)


def paired(long: pd.DataFrame, references: Sequence[str], metric: str = "test_accuracy") -> pd.DataFrame:
    """Per preset, chain and reference chain: chain minus reference, paired by repetition."""
    wide = long.pivot_table(index=["preset", "repetition"], columns="system", values=metric)
    rows = []
    for preset, table in wide.groupby(level="preset"):
        for reference in references:
            if reference not in table:
                continue
            for system in table.columns:
                if system == reference:
                    continue
                both = table[[system, reference]].dropna()
                diff = (both[system] - both[reference]).to_numpy(dtype=float)
                rows.append(
                    {
                        "preset": preset,
                        "system": system,
                        "reference": reference,
                        "metric": metric,
                        "n": len(diff),
                        "mean_difference": float(diff.mean()) if len(diff) else np.nan,
                        "std_difference": float(diff.std(ddof=1)) if len(diff) > 1 else np.nan,
                        "wins": int((diff > 0).sum()),
                        "losses": int((diff < 0).sum()),
                        "ties": int((diff == 0).sum()),
                        "wilcoxon_p": wilcoxon_p(diff),
                        "sign_test_p": sign_test(diff),
                    }
                )
    return pd.DataFrame(rows)
