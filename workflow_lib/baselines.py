"""Baselines scored like the method, in the same run (rules/baselines.smk, config ``baselines``).

The systems, all on the same folds, spectrograms, network and training budget:

``verified_only``
    (a) the fold models trained only on the fold's manually verified clips: initial training,
    then the method's fine-tuning iterations on the same clips (same epochs and learning rates
    as the method), the iteration chosen by the same model selection. What one gets by
    throwing the noisy clips away.
``noisy_it0``
    (b) initial training on all clips with their given (noisy) labels, and stop there: the
    method's own iteration-0 models.
``noisy_finetuned``
    (b') (b) continued with the method's fine-tuning iterations on all clips with their given
    labels, iteration chosen by the same model selection: the same budget as the method, with
    trust in every label instead of self-verification.
``self_verification``
    (c) the method: iterative self-verification and fine-tuning, the automatically chosen
    iteration (results/selection/{preset}.csv, results/predictions/{preset}/test.csv).
``self_verification_no_threshold``
    (d) the same with the posterior threshold off, as the authors' script ran it. It shares
    the iteration-0 models with (b) and (c) and fine-tunes its own chain it1 ... itN.

(a), (b'), (d) are *chains*: iteration 0 then fine-tuning iterations 1 ... N, each iteration
trained on a list of trusted clips (``chain_list``): the verified clips (a), every clip (b'),
or the clips self-verified by the previous iteration's models with the threshold off (d).

Every system's CV figures are means over the folds of the verified validation clips at each
fold's kept epoch (lowest validation loss), exactly as the method's model selection reads them;
test figures average the fold models' posteriors on the whole test clips. The precision of the
self-verified labels is that of ``per_class.csv`` (accepted clips whose given label equals the
true label of ``train_true_labels.csv``).

The rules call these functions through ``python -m workflow_lib.cli baseline-list``,
``baseline-predict`` and ``baseline-systems``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .dataset import TOTAL_ROW
from .errors import UserError

if TYPE_CHECKING:  # numpy/pandas are imported where used: the Snakefile imports the layout
    import pandas as pd


SYSTEMS = {
    "verified_only": "(a) verified clips only, same iterations and selection as the method",
    "noisy_it0": "(b) all clips with their given labels, iteration 0 (no self-verification)",
    "noisy_finetuned": "(b') all clips with their given labels, same iterations and selection",
    "self_verification": "(c) the method: self-verification, automatically chosen iteration",
    "self_verification_no_threshold": "(d) the method with the threshold off (authors' script)",
}
SCORED_SET = "Public+Private"


# --------------------------------------------------------------------------- file layout
# Paths of rules/baselines.smk, here so that the rule file holds rules only. ``results`` is the
# workflow's results folder; it0 models are the method's own (results/models/...).


CHAINS = ("verified_only", "noisy", "no_threshold")
STATIC_LISTS = {"verified_only": "verified_only_list.csv", "noisy": "all_clips_list.csv"}


def chain_file(results: str, preset: str, chain: str, fold: int | str, iteration: int | str,
               name: str = "best.pt") -> str:
    """A chain's model files; it0 of the noisy and no-threshold chains is the method's own."""
    if int(iteration) == 0 and chain != "verified_only":
        return f"{results}/models/{preset}/fold{fold}/it0/{name}"
    return f"{results}/baselines/{preset}/{chain}/models/fold{fold}/it{iteration}/{name}"


def chain_list(results: str, preset: str, chain: str, iteration: int | str) -> str:
    """The trusted-clip list a chain trains iteration ``iteration + 1`` on."""
    if chain in STATIC_LISTS:
        return f"{results}/baselines/{STATIC_LISTS[chain]}"
    return f"{results}/baselines/{preset}/no_threshold/self_verify/it{iteration}/train_self_verified.csv"


def system_models(results: str, preset: str, system: str, folds: Sequence[int],
                  iterations: Sequence[int]) -> dict[tuple[int, int], str]:
    """{(iteration, fold): best.pt} whose test posteriors make ``baselines/{preset}/{system}/test.csv``."""
    if system == "noisy_it0":
        return {(0, k): f"{results}/models/{preset}/fold{k}/it0/best.pt" for k in folds}
    if system in CHAINS:
        return {(i, k): chain_file(results, preset, system, k, i) for i in iterations for k in folds}
    raise ValueError(f"unknown baseline system {system!r}")


def systems_spec(results: str, presets: Sequence[str], iterations: Sequence[int],
                 no_threshold: bool) -> list[dict]:
    """What ``systems`` reads, per preset and system (the input of rule baseline_systems)."""
    judged = list(iterations)[:-1]
    spec = []
    for p in presets:
        base = f"{results}/baselines/{p}"
        spec.append({"preset": p, "system": "verified_only", "iteration": "chosen",
                     "selection": f"{base}/verified_only/selection.csv",
                     "test": f"{base}/verified_only/test.csv"})
        spec.append({"preset": p, "system": "noisy_it0", "iteration": 0,
                     "selection": f"{results}/selection/{p}.csv", "test": f"{base}/noisy_it0/test.csv"})
        spec.append({"preset": p, "system": "noisy_finetuned", "iteration": "chosen",
                     "selection": f"{base}/noisy/selection.csv", "test": f"{base}/noisy/test.csv"})
        spec.append({"preset": p, "system": "self_verification", "iteration": "chosen",
                     "selection": f"{results}/selection/{p}.csv",
                     "test": f"{results}/predictions/{p}/test.csv",
                     "self_verify": {str(i): f"{results}/self_verify/{p}/it{i}/per_class.csv"
                                     for i in judged}})
        if no_threshold:
            spec.append({"preset": p, "system": "self_verification_no_threshold",
                         "iteration": "chosen", "selection": f"{base}/no_threshold/selection.csv",
                         "test": f"{base}/no_threshold/test.csv",
                         "self_verify": {str(i): f"{base}/no_threshold/self_verify/it{i}/per_class.csv"
                                         for i in judged}})
    return spec


def spec_files(spec: Sequence[Mapping]) -> list[str]:
    """Every file a systems spec names."""
    files: set[str] = set()
    for item in spec:
        files.update([item["selection"], item["test"], *item.get("self_verify", {}).values()])
    return sorted(files)


# --------------------------------------------------------------------------- job functions


def train_list(folds_csv: Path, out_csv: Path, kind: str) -> pd.DataFrame:
    """train.csv layout naming the clips a baseline chain trusts, with their given labels.

    ``training_sets`` keeps the ``manually_verified == 1`` clips of a fold's training part, so
    ``verified_only`` trains on the verified clips only and ``noisy`` on every clip as labelled.
    """
    import pandas as pd

    from .io import read_csv_str, write_csv

    if kind not in STATIC_LISTS:
        raise UserError(f"unknown list kind {kind!r}; one of {sorted(STATIC_LISTS)}")
    folds = read_csv_str(folds_csv)
    trusted = folds["verified"].astype(int) if kind == "verified_only" else 1
    table = pd.DataFrame({"fname": folds["fname"], "label": folds["label"],
                          "manually_verified": trusted})
    write_csv(table, out_csv)
    return table


def predict_test(models: Mapping[tuple[int, int], Path], selection_csv: Path | None,
                 test_manifest: Path, classes_csv: Path, out_csv: Path, frames: int,
                 batch_size: int, device: str = "auto", threads: int = 1,
                 lock_dir: Path = Path(".gpu_locks")) -> int:
    """Fold-averaged test posteriors of one iteration's fold models; returns the iteration.

    The iteration is the chosen one of ``selection_csv``, or the only one given.
    """
    from .devices import select_device
    from .selection import chosen_iteration
    from .stages import _fold_models, read_classes, write_test_posteriors

    iterations = sorted({i for i, _ in models})
    if selection_csv is not None:
        iteration = chosen_iteration(selection_csv)
    elif len(iterations) == 1:
        iteration = iterations[0]
    else:
        raise UserError(f"models of iterations {iterations} given but no --selection")
    paths = {k: path for (i, k), path in models.items() if i == iteration}
    if not paths:
        raise UserError(f"no model of the chosen iteration {iteration} was given")
    choice = select_device(device, lock_dir, threads)
    classes = read_classes(classes_csv)
    write_test_posteriors(_fold_models(paths, choice.device), test_manifest, classes, frames,
                          batch_size, choice.device, out_csv)
    choice.release()
    return iteration


def _self_verify_tables(paths: Mapping[str, str]) -> dict[int, pd.Series]:
    """{judging iteration: the totals row of its per_class.csv}."""
    import pandas as pd

    tables = {}
    for iteration, path in paths.items():
        table = pd.read_csv(path, dtype={"label": str})
        tables[int(iteration)] = table.loc[table["label"] == TOTAL_ROW].iloc[0]
    return dict(sorted(tables.items()))


def _test_scores(test: pd.DataFrame, probs_csv: str, classes: list[str]) -> dict:
    import numpy as np
    import pandas as pd

    from .evaluation import evaluate_systems

    frame = pd.read_csv(probs_csv, dtype={"fname": str})
    scored = test[test["fname"].isin(set(frame["fname"]))]
    if scored["label"].eq("").all():
        return {"n_test": 0, "test_accuracy": np.nan, "test_map3": np.nan}
    scores = evaluate_systems(scored, {"system": frame}, classes)
    row = scores[scores["set"] == SCORED_SET].iloc[0]
    return {"n_test": int(row["n"]), "test_accuracy": float(row["accuracy"]),
            "test_map3": float(row["map3"])}


def systems_tables(spec: Sequence[Mapping], test_csv: Path, classes_csv: Path,
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per system, one row per system and iteration).

    ``spec`` items: ``system``, ``preset``, ``selection`` (CSV), ``iteration`` ("chosen" or an
    int), ``test`` (posteriors CSV) and optionally ``self_verify`` ({iteration: per_class.csv}).
    """
    import numpy as np
    import pandas as pd

    from .io import read_csv_str
    from .stages import read_classes

    classes = read_classes(classes_csv)
    test = read_csv_str(test_csv)
    rows, per_iteration = [], []
    for item in spec:
        selection = pd.read_csv(item["selection"])
        chosen = selection.loc[selection["chosen"].astype(bool)].iloc[0]
        used = chosen if item["iteration"] == "chosen" else \
            selection.loc[selection["iteration"] == int(item["iteration"])].iloc[0]
        iteration = int(used["iteration"])
        row = {"preset": item["preset"], "system": item["system"],
               "description": SYSTEMS.get(item["system"], ""), "iteration": iteration,
               "cv_accuracy": float(used["mean_valid_acc"]), "cv_map3": float(used["mean_valid_map3"]),
               "cv_loss": float(used["mean_valid_loss"]),
               **_test_scores(test, item["test"], classes)}
        tables = _self_verify_tables(item.get("self_verify") or {})
        if tables:
            first = next(iter(tables.values()))
            row["given_label_precision"] = float(first.get("unverified_precision", np.nan))
            trained_on = tables.get(iteration - 1)
            row["self_verified_clips"] = int(trained_on["n_accepted"]) if trained_on is not None else 0
            row["self_verified_precision"] = (float(trained_on.get("precision", np.nan))
                                              if trained_on is not None else np.nan)
            for judge, overall in tables.items():
                row[f"self_verified_by_it{judge}"] = int(overall["n_accepted"])
                row[f"self_verified_by_it{judge}_precision"] = float(overall.get("precision", np.nan))
        if item["iteration"] == "chosen":   # a chain of iterations: its model-selection curve
            for _, line in selection.sort_values("iteration").iterrows():
                judge = int(line["iteration"])
                overall = tables.get(judge)
                per_iteration.append({
                    "preset": item["preset"], "system": item["system"], "iteration": judge,
                    "chosen": bool(line["chosen"]), "cv_accuracy": float(line["mean_valid_acc"]),
                    "cv_map3": float(line["mean_valid_map3"]), "cv_loss": float(line["mean_valid_loss"]),
                    "n_judged": np.nan if overall is None else int(overall["n_unverified"]),
                    "self_verified": np.nan if overall is None else int(overall["n_accepted"]),
                    "self_verified_correct": (np.nan if overall is None
                                              else overall.get("n_accepted_correct", np.nan)),
                    "self_verified_precision": (np.nan if overall is None
                                                else overall.get("precision", np.nan)),
                })
        rows.append(row)
    systems = pd.DataFrame(rows)
    for column in [c for c in systems.columns if c.startswith("self_verified")
                   and not c.endswith("precision")] + ["n_test"]:
        systems[column] = systems[column].astype("Int64")   # blank where not applicable
    iterations = pd.DataFrame(per_iteration, columns=[
        "preset", "system", "iteration", "chosen", "cv_accuracy", "cv_map3", "cv_loss", "n_judged",
        "self_verified", "self_verified_correct", "self_verified_precision"])
    for column in ("n_judged", "self_verified", "self_verified_correct"):
        iterations[column] = pd.to_numeric(iterations[column]).astype("Int64")
    return systems, iterations


def plot_systems(systems: pd.DataFrame, iterations: pd.DataFrame, out: Path) -> None:
    """Scores per system; CV accuracy, self-verified clips and their precision per iteration."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (integer iteration ticks)

    from .plots import _save

    several = systems["preset"].nunique() > 1
    names = [f"{p}\n{s}" if several else s.replace("_", "\n")
             for p, s in zip(systems["preset"], systems["system"])]
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    bars = axes[0]
    x = np.arange(len(systems))
    for shift, (column, label) in zip((-0.27, 0.0, 0.27), (("cv_accuracy", "CV accuracy (verified)"),
                                                            ("test_accuracy", "test accuracy"),
                                                            ("test_map3", "test MAP@3"))):
        values = systems[column].to_numpy(dtype=float)
        bars.bar(x + shift, values, width=0.27, label=label)
        for xi, value in zip(x + shift, values):
            if np.isfinite(value):
                bars.text(xi, value + 0.005, f"{value:.3f}", ha="center", va="bottom", fontsize=6,
                          rotation=90)
    finite = systems[["cv_accuracy", "test_accuracy", "test_map3"]].to_numpy(dtype=float)
    low = np.nanmin(finite) if np.isfinite(finite).any() else 0.0
    bars.set_ylim(max(0.0, low - 0.1), 1.08)   # room for the value labels above 1.0
    bars.set_xticks(x, names, fontsize=7)
    bars.legend(fontsize=7, loc="upper center", ncol=3)
    bars.set_title("systems (same folds, net and budget)")

    curves, counts = axes[1], axes[2]
    twin = counts.twinx()
    variants = list(iterations.groupby(["preset", "system"], sort=False))
    width = 0.8 / max(1, len(variants))
    for n, ((preset, system), table) in enumerate(variants):
        label = f"{preset}/{system}" if several else system
        color = f"C{n}"
        curves.plot(table["iteration"], table["cv_accuracy"], "-o", color=color, label=label)
        chosen = table[table["chosen"]]
        curves.plot(chosen["iteration"], chosen["cv_accuracy"], "*", color=color, markersize=14)
        judged = table.dropna(subset=["self_verified"])
        if judged.empty:   # a chain without self-verification: no bars, no legend entries
            continue
        counts.bar(judged["iteration"] + (n - (len(variants) - 1) / 2) * width,
                   judged["self_verified"].astype(float), width=width, color=color, alpha=0.5,
                   label=f"{label}: clips")
        twin.plot(judged["iteration"], judged["self_verified_precision"].astype(float), "-o",
                  color=color, label=f"{label}: precision")
    for n, row in systems.reset_index(drop=True).iterrows():
        if row["system"] == "noisy_it0":
            curves.axhline(row["cv_accuracy"], linestyle="--", linewidth=0.8, color=f"C{n + 3}",
                           label=f"{row['system']}" if not several else f"{row['preset']}/{row['system']}")
    if "given_label_precision" in systems:
        given = systems["given_label_precision"].dropna()
        if len(given):
            twin.axhline(float(given.iloc[0]), color="grey", linestyle=":", linewidth=1,
                         label="given unverified labels")
    for ax in (curves, counts):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    curves.set_xlabel("iteration (star: chosen)")
    curves.set_ylabel("CV accuracy, verified validation clips")
    curves.legend(fontsize=7)
    curves.set_title("model selection")
    counts.set_xlabel("self-verification by the models of iteration")
    counts.set_ylabel("self-verified clips")
    twin.set_ylabel("precision of self-verified labels")
    twin.set_ylim(0, 1.05)
    handles = counts.get_legend_handles_labels()
    twin_handles = twin.get_legend_handles_labels()
    counts.legend(handles[0] + twin_handles[0], handles[1] + twin_handles[1], fontsize=6,
                  loc="lower left")
    counts.set_title("self-verified labels")
    figure.tight_layout()
    _save(figure, out)


def systems_job(spec: Sequence[Mapping], test_csv: Path, classes_csv: Path, out_csv: Path,
                out_iterations: Path, out_plot: Path) -> pd.DataFrame:
    from .io import write_csv

    systems, iterations = systems_tables(spec, test_csv, classes_csv)
    write_csv(systems, out_csv)
    write_csv(iterations, out_iterations)
    plot_systems(systems, iterations, out_plot)
    return systems
