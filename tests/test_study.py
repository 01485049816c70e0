"""The study's tables (workflow_lib/study.py) and model selection's near-tie rule, on hand-made
numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow_lib.selection import choose, selection_table
from workflow_lib.study import collect, paired, sign_test, summarise, wilcoxon_p


def runs() -> dict[str, pd.DataFrame]:
    accuracy = {"r1": (0.80, 0.85, 0.90), "r2": (0.70, 0.72, 0.71), "r3": (0.90, 0.95, 0.99)}
    return {
        name: pd.DataFrame(
            {
                "preset": "p",
                "system": ["all_labels", "self_verification", "agreement"],
                "test_accuracy": list(values),
                "test_map3": list(values),
                "cv_accuracy": 0.9,
                "cv_loss": 0.2,
            }
        )
        for name, values in accuracy.items()
    }


def test_summary_per_chain():
    table = summarise(collect(runs())).set_index("system")
    assert table.loc["agreement", "n"] == 3
    assert table.loc["agreement", "test_accuracy_mean"] == pytest.approx((0.90 + 0.71 + 0.99) / 3)
    assert table.loc["agreement", "test_accuracy_std"] == pytest.approx(np.std([0.90, 0.71, 0.99], ddof=1))
    assert table.loc["all_labels", "test_accuracy_min"] == pytest.approx(0.70)


def test_paired_differences_and_p_values():
    from scipy.stats import binomtest, wilcoxon

    table = paired(collect(runs()), ["self_verification", "all_labels"])
    row = table.set_index(["system", "reference"]).loc[("agreement", "all_labels")]
    diffs = np.array([0.10, 0.01, 0.09])
    assert row["n"] == 3 and row["wins"] == 3 and row["losses"] == 0
    assert row["mean_difference"] == pytest.approx(diffs.mean())
    assert row["wilcoxon_p"] == pytest.approx(wilcoxon(diffs).pvalue)
    assert row["sign_test_p"] == pytest.approx(binomtest(3, 3).pvalue) == pytest.approx(0.25)
    mixed = table.set_index(["system", "reference"]).loc[("agreement", "self_verification")]
    assert (mixed["wins"], mixed["losses"]) == (2, 1)
    assert ("self_verification", "self_verification") not in set(zip(table["system"], table["reference"]))


def test_tests_without_differences():
    assert sign_test(np.zeros(4)) == 1.0
    assert np.isnan(wilcoxon_p(np.zeros(4)))


def write_history(path, losses, accs):
    pd.DataFrame(
        {"epoch": range(1, len(losses) + 1), "valid_loss": losses, "valid_acc": accs, "valid_map3": accs}
    ).to_csv(path, index=False)


def test_near_ties_go_to_the_higher_accuracy_then_the_earlier_iteration(tmp_path):
    histories = {}
    for it, (loss, acc) in enumerate([(0.30, 0.90), (0.2001, 0.95), (0.2000, 0.92), (0.2003, 0.95)]):
        histories[(it, 0)] = tmp_path / f"h{it}.csv"
        write_history(histories[(it, 0)], [loss + 0.1, loss], [acc - 0.1, acc])
    exact = selection_table(histories)
    assert exact.loc[exact["chosen"], "iteration"].item() == 2  # lowest loss
    assert exact["near_tie"].sum() == 0
    tied = selection_table(histories, tolerance=0.0005)
    assert tied["near_tie"].tolist() == [False, True, True, True]
    assert tied.loc[tied["chosen"], "iteration"].item() == 1  # higher accuracy, earlier
    narrow = selection_table(histories, tolerance=0.00015)
    assert narrow.loc[narrow["chosen"], "iteration"].item() == 1  # 0.2001 within 0.00015
    assert choose(pd.DataFrame({"mean_valid_loss": [np.nan, np.nan], "mean_valid_acc": [0.1, 0.2]}), 0.1) == 1


def test_driver_study_tables_from_finished_repetitions_only(tmp_path):
    """run_experiment.py --study: tables from the repetitions that finished (experiment.json),
    copies of the small files, and the per-repetition overlay (chains, seed)."""
    import argparse
    import importlib.util

    import yaml

    from conftest import REPO

    spec = importlib.util.spec_from_file_location(
        "run_experiment", REPO / "experiments/fsdd/run_experiment.py"
    )
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    out = tmp_path / "study"
    for name, table in runs().items():
        (out / name).mkdir(parents=True)
        table.to_csv(out / name / "systems.csv", index=False)
        if name != "r3":  # r3 is still running
            (out / name / "experiment.json").write_text("{}")
    driver.study_tables(out, ["r1", "r2", "r3"])
    long = pd.read_csv(out / "study_runs.csv")
    assert sorted(set(long["repetition"])) == ["r1", "r2"]
    summary = pd.read_csv(out / "study_summary.csv").set_index("system")
    assert summary.loc["agreement", "n"] == 2
    paired_table = pd.read_csv(out / "study_paired.csv")
    assert set(paired_table["metric"]) == {"test_accuracy", "test_map3"}
    assert set(paired_table["reference"]) == {"self_verification", "all_labels"}
    driver.copy_small_files(out, ["r1", "r2", "r3"], tmp_path / "kept")
    assert (tmp_path / "kept/r1/systems.csv").is_file() and not (tmp_path / "kept/r3").exists()
    assert (tmp_path / "kept/study_summary.csv").is_file()
    args = argparse.Namespace(chains=["self_verification", "all_labels"])
    overlay = driver.write_overlay(args, tmp_path / "rep", 7)
    assert yaml.safe_load(overlay.read_text()) == {
        "run_chains": ["self_verification", "all_labels"],
        "method": {"seed": 7},
    }
    assert driver.write_overlay(argparse.Namespace(chains=None), tmp_path / "x", None) is None
