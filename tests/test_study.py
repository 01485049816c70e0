"""The study's tables (workflow_lib/study.py) and model selection's near-tie rule, on hand-made
numbers."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_lib.noisy_dataset import NoisyDatasetSettings
from workflow_lib.selection import choose, selection_table
from workflow_lib.study import (
    collect,
    main,
    paired,
    plot_paired,
    regret,
    regret_summary,
    sign_test,
    summarise,
    t_interval,
    trust_by_iteration,
    verdict,
    wilcoxon_p,
)


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
    driver.study_tables(out)
    long = pd.read_csv(out / "study_runs.csv")
    assert sorted(set(long["repetition"])) == ["r1", "r2"]
    summary = pd.read_csv(out / "study_summary.csv").set_index("system")
    assert summary.loc["agreement", "n"] == 2
    paired_table = pd.read_csv(out / "study_paired.csv")
    assert set(paired_table["metric"]) == {"test_accuracy", "test_map3"}
    assert set(paired_table["reference"]) == {"self_verification", "all_labels"}
    driver.copy_small_files(out, tmp_path / "kept")
    assert (tmp_path / "kept/r1/systems.csv").is_file() and not (tmp_path / "kept/r3").exists()
    assert (tmp_path / "kept/study_summary.csv").is_file()
    assert (tmp_path / "kept/study_paired.png").is_file() and (tmp_path / "kept/study_regret.csv").is_file()
    assert (tmp_path / "kept/study_report.html").is_file()
    args = argparse.Namespace(chains=["self_verification", "all_labels"])
    overlay = driver.write_overlay(args, tmp_path / "rep", 7)
    assert yaml.safe_load(overlay.read_text()) == {
        "run_chains": ["self_verification", "all_labels"],
        "method": {"seed": 7},
    }
    assert driver.write_overlay(argparse.Namespace(chains=None), tmp_path / "x", None) is None


def _driver_module():
    import importlib.util

    from conftest import REPO

    path = REPO / "experiments/fsdd/run_experiment.py"
    spec = importlib.util.spec_from_file_location("run_experiment", path)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    return driver


def test_a_killed_repetition_resumes_past_its_stale_snakemake_lock(tmp_path):
    """A study killed mid-repetition leaves Snakemake's lock; rerunning the driver must resume,
    not fail on "Directory cannot be locked". Under the driver's own flock the lock is stale
    and is removed; a second driver on the same repetition is refused instead."""
    import subprocess
    import sys

    driver = _driver_module()
    out, work = tmp_path / "rep", tmp_path / "rep" / "work"
    work.mkdir(parents=True)
    (tmp_path / "Snakefile").write_text('rule all:\n    output: "done.txt"\n    shell: "touch {output}"\n')
    command = [driver.snakemake_binary(), "--snakefile", str(tmp_path / "Snakefile")]
    command += ["--directory", str(work), "--cores", "1"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    locks = work / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("done.txt\n")  # as a killed run leaves it
    refused = subprocess.run(command, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "lock" in (refused.stdout + refused.stderr).lower()
    with driver.repetition_lock(out):
        with pytest.raises(SystemExit, match="another driver is running"), driver.repetition_lock(out):
            pass
        driver.clear_stale_snakemake_lock(command + ["-n"], out, env)
    assert not locks.exists() or not any(locks.iterdir())
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    assert (work / "done.txt").is_file()
    driver.clear_stale_snakemake_lock(command, out, env)  # no lock: nothing to do


def test_t_interval_by_hand():
    """[1, 2, 3]: mean 2, sd 1, standard error 1/sqrt(3), t(0.975, 2) = 4.302653."""
    low, high = t_interval(np.array([1.0, 2.0, 3.0]))
    half = 4.302653 / np.sqrt(3)
    assert (low, high) == (pytest.approx(2 - half, abs=1e-6), pytest.approx(2 + half, abs=1e-6))
    assert all(np.isnan(t_interval(np.array([1.0]))))
    row = paired(collect(runs()), ["all_labels"]).set_index("system").loc["agreement"]
    assert (row["ci95_low"], row["ci95_high"]) == tuple(
        pytest.approx(v) for v in t_interval(np.array([0.10, 0.01, 0.09]))
    )


def cv_runs() -> dict[str, pd.DataFrame]:
    """r1: CV picks b (lowest loss), c is best on test; r2: CV picks a, b is best on test."""
    table = {"r1": ((0.3, 0.2, 0.25), (0.8, 0.7, 0.9)), "r2": ((0.1, 0.2, 0.3), (0.6, 0.9, 0.5))}
    return {
        name: pd.DataFrame(
            {
                "preset": "p",
                "system": ["a", "b", "c"],
                "cv_loss": loss,
                "cv_accuracy": 0.9,
                "test_accuracy": test,
            }
        )
        for name, (loss, test) in table.items()
    }


def test_regret_of_the_cv_pick_and_of_each_fixed_chain():
    table = regret(collect(cv_runs()))
    by = table.set_index(["repetition", "strategy"])
    assert by.loc[("r1", "cv"), "chain"] == "b" and by.loc[("r1", "cv"), "best_chain"] == "c"
    assert by.loc[("r1", "cv"), "regret"] == pytest.approx(0.2)
    assert by.loc[("r2", "cv"), "chain"] == "a" and by.loc[("r2", "cv"), "regret"] == pytest.approx(0.3)
    assert by.loc[("r2", "c"), "regret"] == pytest.approx(0.4) and by.loc[("r1", "c"), "regret"] == 0
    summary = regret_summary(table).set_index("strategy")
    assert summary.loc["cv", "mean_regret"] == pytest.approx(0.25) and summary.loc["cv", "took_best"] == 0
    assert summary.loc["a", "mean_regret"] == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert summary.loc["b", "mean_regret"] == pytest.approx(0.1) and summary.loc["b", "took_best"] == 1
    assert summary.loc["c", "max_regret"] == pytest.approx(0.4)
    unlabelled = {name: t.assign(test_accuracy=np.nan) for name, t in cv_runs().items()}
    assert regret(collect(unlabelled)).empty and regret_summary(regret(collect(unlabelled))).empty


def near_tie_runs() -> dict[str, pd.DataFrame]:
    """a and b within 0.002 of each other in CV loss, b the lower; a has the higher CV
    accuracy and c is best on test."""
    table = pd.DataFrame(
        {
            "preset": "p",
            "system": ["a", "b", "c"],
            "cv_loss": [0.1015, 0.1000, 0.3],
            "cv_accuracy": [0.99, 0.98, 0.9],
            "test_accuracy": [0.8, 0.7, 0.9],
        }
    )
    return {"r1": table}


def test_the_cv_pick_is_replayed_with_each_repetitions_own_tolerance():
    """A near-tie goes to the higher CV accuracy only where the run chose with a tolerance,
    as chain_choice: cv would have chosen in that run; an explicit tolerance overrides."""
    strict = regret(collect(near_tie_runs())).set_index("strategy")
    assert strict.loc["cv", "chain"] == "b" and strict.loc["cv", "regret"] == pytest.approx(0.2)
    tolerant = collect(near_tie_runs()).assign(selection_tolerance=0.002)
    by = regret(tolerant).set_index("strategy")
    assert by.loc["cv", "chain"] == "a" and by.loc["cv", "regret"] == pytest.approx(0.1)
    assert by.loc["cv", "tolerance"] == 0.002 and strict.loc["cv", "tolerance"] == 0.0
    overridden = regret(tolerant, tolerance=0.0).set_index("strategy").loc["cv"]
    assert (overridden["chain"], overridden["tolerance"]) == ("b", 0.0)


def write_repetition(folder: Path, table: pd.DataFrame, record: object) -> None:
    folder.mkdir(parents=True)
    table.to_csv(folder / "systems.csv", index=False)
    (folder / "experiment.json").write_text(json.dumps(record))


def test_read_study_takes_the_tolerance_from_each_repetitions_record(tmp_path, capsys):
    from workflow_lib.study import read_study

    table = near_tie_runs()["r1"]
    write_repetition(tmp_path / "tolerant", table, {"settings": {"trust": {"selection_tolerance": 0.002}}})
    write_repetition(tmp_path / "default", table, {"settings": {"trust": {}}})
    long = read_study(tmp_path)
    assert long.groupby("repetition")["selection_tolerance"].first().to_dict() == {
        "default": 0.0,
        "tolerant": 0.002,
    }
    picks = regret(long).query("strategy == 'cv'").set_index("repetition")["chain"].to_dict()
    assert picks == {"default": "b", "tolerant": "a"}
    assert main([str(tmp_path), "--out", str(tmp_path / "tables")]) == 0
    assert "selection_tolerance" in pd.read_csv(tmp_path / "tables/study_runs.csv").columns
    capsys.readouterr()


@pytest.mark.parametrize(
    "record",
    [
        {"settings": {"trust": {"selection_tolerance": -0.1}}},
        {"settings": {"trust": {"selection_tolerance": "0.002; rm -rf /"}}},
        {"settings": {"trust": {"selection_tolerance": True}}},
        {"settings": "not a mapping"},
        ["not", "a", "record"],
    ],
)
def test_a_hostile_tolerance_record_is_one_clear_error(tmp_path, capsys, record):
    write_repetition(tmp_path / "r1", near_tie_runs()["r1"], record)
    assert main([str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "experiment.json" in error and "selection_tolerance" in error and "Traceback" not in error


def test_an_unreadable_record_is_one_clear_error(tmp_path, capsys):
    write_repetition(tmp_path / "r1", near_tie_runs()["r1"], {})
    (tmp_path / "r1/experiment.json").write_bytes(b"{\xff")
    assert main([str(tmp_path)]) == 1
    assert "not a readable JSON record" in capsys.readouterr().err


def test_paired_plot_is_a_png(tmp_path):
    plot_paired(collect(runs()), ["self_verification", "all_labels"], "test_accuracy", tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))


def test_trusted_labels_per_iteration_by_hand():
    """study_trust.csv: mean, min and max over repetitions of each judging iteration's count,
    precision and recall; a chain that judged nothing (verified_only: no precision) keeps its
    zero counts, a chain without trust columns (NaN counts) is left out."""
    long = collect(
        {
            name: pd.DataFrame(
                {
                    "preset": "p",
                    "system": ["self_verification", "verified_only", "fused"],
                    "trusted_by_it0": [count, 0, np.nan],
                    "trusted_by_it0_precision": [precision, np.nan, np.nan],
                    "trusted_by_it0_recall": [recall, 0.0, np.nan],
                    "trusted_by_it1": [count + 10, 0, np.nan],
                    "trusted_by_it1_precision": [1.0, np.nan, np.nan],
                    "trusted_by_it1_recall": [recall + 0.1, 0.0, np.nan],
                }
            )
            for name, count, precision, recall in (("r1", 100, 1.0, 0.2), ("r2", 120, 0.9, 0.3))
        }
    )
    table = trust_by_iteration(long).set_index(["system", "iteration"])
    assert set(trust_by_iteration(long)["judged"]) == {"unverified"}
    assert set(table.index) == {
        ("self_verification", 0),
        ("self_verification", 1),
        ("verified_only", 0),
        ("verified_only", 1),
    }
    first = table.loc[("self_verification", 0)]
    assert (first["n"], first["trusted_mean"]) == (2, 110.0)
    assert (first["precision_mean"], first["precision_min"], first["precision_max"]) == pytest.approx(
        (0.95, 0.9, 1.0)
    )
    assert (first["recall_mean"], first["recall_min"], first["recall_max"]) == pytest.approx((0.25, 0.2, 0.3))
    assert table.loc[("self_verification", 1), "recall_mean"] == pytest.approx(0.35)
    assert np.isnan(table.loc[("verified_only", 0), "precision_mean"])
    assert table.loc[("verified_only", 1), "trusted_mean"] == 0
    assert trust_by_iteration(collect(runs())).empty  # a study without trust columns


def test_a_pool_chains_pool_trust_is_a_row_of_its_own():
    """pool_trusted_by_it<k> (a pool chain's systems.csv): judged 'pool' beside the same
    chain's 'unverified' row of that iteration."""
    long = collect(
        {
            name: pd.DataFrame(
                {
                    "preset": "p",
                    "system": ["pseudo_labels"],
                    "trusted_by_it0": [100],
                    "trusted_by_it0_precision": [1.0],
                    "trusted_by_it0_recall": [0.2],
                    "pool_trusted_by_it0": [pool],
                    "pool_trusted_by_it0_precision": [precision],
                    "pool_trusted_by_it0_recall": [0.5],
                }
            )
            for name, pool, precision in (("r1", 10, 0.9), ("r2", 30, 0.7))
        }
    )
    table = trust_by_iteration(long).set_index(["judged", "iteration"])
    assert table.loc[("unverified", 0), "trusted_mean"] == 100
    assert table.loc[("pool", 0), "trusted_mean"] == 20
    assert table.loc[("pool", 0), "precision_min"] == pytest.approx(0.7)


def test_the_claim_rule_needs_ten_pairs_and_both_p_values():
    """verdict: 'beats' only with n >= 10 and both p < 0.05; the direction from the mean."""
    assert verdict(10, 0.03, 0.002, 0.002) == "beats"
    assert verdict(10, -0.03, 0.002, 0.002) == "is beaten by"
    assert verdict(9, 0.03, 0.004, 0.004) == "no difference shown"  # too few pairs
    assert verdict(12, 0.03, 0.01, 0.07) == "no difference shown"  # the sign test disagrees
    assert verdict(12, 0.03, 0.05, 0.01) == "no difference shown"  # 0.05 is not below 0.05
    ten = paired(
        collect({f"r{i}": runs()["r1"].assign(test_accuracy=[0.8, 0.85 + i / 1000, 0.9]) for i in range(10)}),
        ["all_labels"],
    )
    assert set(ten["verdict"]) == {"beats"} and (ten["n"] == 10).all()


def test_markdown_tables_for_the_readme(tmp_path, capsys):
    """--markdown: one row per chain plus the CV pick, the paired differences with verdicts,
    and the reference chains' difference once (self_verification minus all_labels only)."""
    for name, table in runs().items():
        (tmp_path / name).mkdir()
        table.to_csv(tmp_path / name / "systems.csv", index=False)
        (tmp_path / name / "experiment.json").write_text("{}")
    assert main([str(tmp_path), "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert "| `agreement` | 3 | 0.867 (0.143) | 0.867 (0.143) | 0.003 |" in printed
    assert "| CV pick (`chain_choice: cv`) | 3 | - | - |" in printed
    assert "`self_verification` minus `all_labels`" in printed
    assert "`all_labels` minus `self_verification`" not in printed
    assert printed.count("no difference shown") == 3


def test_a_third_reference_chain_pairs_every_chain_with_it_too(tmp_path, capsys):
    """--references: the pool study pairs its chains with `agreement` as well; between two
    reference chains only the earlier minus the later is printed, and the written files and
    the plot take the same references."""
    for name, table in runs().items():
        (tmp_path / name).mkdir()
        table.to_csv(tmp_path / name / "systems.csv", index=False)
        (tmp_path / name / "experiment.json").write_text("{}")
    out = tmp_path / "out"
    argv = [str(tmp_path), "--references", "self_verification", "agreement", "--out", str(out), "--markdown"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "`all_labels` minus `agreement` | -0.067 [" in printed  # (-0.10, -0.01, -0.09) / 3
    assert "`self_verification` minus `agreement`" in printed
    assert "`agreement` minus `self_verification`" not in printed
    written = pd.read_csv(out / "study_paired.csv")
    assert set(written["reference"]) == {"self_verification", "agreement"}
    assert (out / "study_paired.png").stat().st_size > 0


def test_a_reference_chain_the_study_never_ran_is_one_clear_error(tmp_path, capsys):
    for name, table in runs().items():
        (tmp_path / name).mkdir()
        table.to_csv(tmp_path / name / "systems.csv", index=False)
        (tmp_path / name / "experiment.json").write_text("{}")
    assert main([str(tmp_path), "--references", "self_verification", "agreement_pool"]) == 1
    error = capsys.readouterr().err
    assert "--references: agreement_pool not in this study" in error
    assert "all_labels, self_verification, agreement" in error


def test_a_repetition_records_the_code_that_ran_it(tmp_path):
    """experiment.json's ``code``: the version always; in a git checkout the commit and whether
    the files that decide a result had uncommitted changes (a study's reference folder
    filling up is not such a change)."""
    import subprocess

    from workflow_lib import __version__

    driver = _driver_module()
    assert driver.code_record(tmp_path) == {"workflow_lib": __version__}  # not a checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "workflow_lib").mkdir()
    (tmp_path / "workflow_lib" / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (tmp_path / "experiments/fsdd/reference/r1").mkdir(parents=True)
    (tmp_path / "experiments/fsdd/reference/r1/systems.csv").write_text("a\n")
    assert driver.code_record(tmp_path) == {
        "workflow_lib": __version__,
        "git_commit": head,
        "uncommitted_changes": False,
    }
    (tmp_path / "workflow_lib" / "a.py").write_text("x = 2\n")
    assert driver.code_record(tmp_path)["uncommitted_changes"] is True


def test_recompute_command_prints_and_writes_the_tables(tmp_path, capsys):
    """python -m workflow_lib.study FOLDER: finished repetitions only; --out writes the files."""
    for name, table in {**runs(), "unfinished": next(iter(runs().values()))}.items():
        (tmp_path / name).mkdir()
        table.to_csv(tmp_path / name / "systems.csv", index=False)
        if name != "unfinished":
            (tmp_path / name / "experiment.json").write_text("{}")
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "paired differences" in printed and "regret" in printed and "unfinished" not in printed
    written = pd.read_csv(tmp_path / "out/study_paired.csv")
    assert {"ci95_low", "ci95_high"} <= set(written.columns)
    assert set(pd.read_csv(tmp_path / "out/study_runs.csv")["repetition"]) == {"r1", "r2", "r3"}
    assert (tmp_path / "out/study_paired.png").is_file()
    assert (tmp_path / "out/study_trust.csv").is_file() and "trusted unverified labels" in printed


def test_recompute_reproduces_the_readme_single_label_study(capsys):
    """The committed reference study: the README's means, sds and paired means come back."""
    from workflow_lib.study import read_study, study_tables

    from conftest import REPO

    tables = study_tables(read_study(REPO / "experiments/fsdd/reference/study_singlelabel"))
    summary = tables["study_summary.csv"].set_index("system")
    assert round(summary.loc["agreement", "test_accuracy_mean"], 3) == 0.891
    assert round(summary.loc["agreement", "test_accuracy_std"], 3) == 0.036
    assert round(summary.loc["self_verification", "test_accuracy_mean"], 3) == 0.863
    assert round(summary.loc["all_labels", "test_accuracy_std"], 3) == 0.064
    pairs = tables["study_paired.csv"].set_index(["system", "reference", "metric"])
    assert round(pairs.loc[("agreement", "all_labels", "test_accuracy"), "mean_difference"], 3) == 0.037
    assert (
        round(pairs.loc[("agreement", "self_verification", "test_accuracy"), "mean_difference"], 3) == 0.028
    )
    assert pairs.loc[("agreement", "self_verification", "test_accuracy"), "sign_test_p"] == 0.25
    cv = tables["study_regret.csv"].query("strategy == 'cv'")
    assert set(cv["chain"]) == {"agreement"} and (cv["regret"] == 0).all()


#: The repetitions the README's single-label section reports: the study's twelve (six speakers,
#: seeds 2018 and 7).
README_REPETITIONS = (
    *[f"{s}_s2018" for s in ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")],
    *[f"{s}_s7" for s in ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")],
)


def test_the_readme_claims_of_the_single_label_study():
    """The README's verdicts ("The single-label study: six held-out speakers, two seeds"),
    recomputed from the committed per-repetition systems.csv of the repetitions it reports."""
    from workflow_lib.study import read_study, study_tables

    from conftest import REPO

    long = read_study(REPO / "experiments/fsdd/reference/study_single_label_full")
    tables = study_tables(long[long["repetition"].isin(README_REPETITIONS)])
    assert set(tables["study_runs.csv"]["repetition"]) == set(README_REPETITIONS)
    pairs = tables["study_paired.csv"].set_index(["system", "reference", "metric"])
    verdicts = pairs["verdict"].to_dict()
    for chain in ("agreement", "confident_learning"):
        for metric in ("test_accuracy", "test_map3"):
            assert verdicts[(chain, "all_labels", metric)] == "beats", (chain, metric)
        assert verdicts[(chain, "self_verification", "test_accuracy")] == "no difference shown"
    assert verdicts[("self_verification", "all_labels", "test_map3")] == "beats"
    assert verdicts[("self_verification", "all_labels", "test_accuracy")] == "no difference shown"
    for metric in ("test_accuracy", "test_map3"):
        assert verdicts[("verified_only", "self_verification", metric)] == "is beaten by", metric
    row = pairs.loc[("agreement", "all_labels", "test_accuracy")]
    assert (round(row["mean_difference"], 3), row["wins"], row["losses"]) == (0.031, 10, 1)
    row = pairs.loc[("self_verification", "all_labels", "test_accuracy")]
    assert (round(row["mean_difference"], 3), row["wins"], row["losses"], row["ties"]) == (0.027, 8, 2, 2)
    assert round(row["sign_test_p"], 3) == 0.109
    regrets = regret_summary(tables["study_regret.csv"]).set_index("strategy")["mean_regret"].round(3)
    assert (regrets["cv"], regrets["self_verification"], regrets["all_labels"]) == (0.012, 0.015, 0.042)


def test_the_readme_figures_of_the_pool_study():
    """README "With an unlabelled pool": the seven-chain means, the paired rows it quotes and the
    CV pick, recomputed from the committed per-repetition files of study_pool_all (and the six-chain
    CV regret from study_pool), with the reference order the README's command gives."""
    from workflow_lib.study import read_study, study_tables

    from conftest import REPO

    root = REPO / "experiments/fsdd/reference"
    references = ["self_verification", "all_labels", "agreement"]
    tables = study_tables(read_study(root / "study_pool_all"), references=references)
    means = tables["study_summary.csv"].set_index("system")["test_accuracy_mean"].round(3)
    assert (means["agreement_pool_all"], means["agreement"], means["all_labels"]) == (0.860, 0.852, 0.825)
    pairs = tables["study_paired.csv"].set_index(["system", "reference", "metric"])
    row = pairs.loc[("agreement_pool_all", "agreement", "test_accuracy")]
    assert (round(row["mean_difference"], 3), row["wins"], row["losses"]) == (0.008, 3, 3)
    row = pairs.loc[("agreement_pool_all", "all_labels", "test_accuracy")]
    assert (round(row["mean_difference"], 3), row["wins"], round(row["wilcoxon_p"], 3)) == (0.034, 6, 0.031)
    assert row["verdict"] == "no difference shown"  # six pairs: under the claim rule's ten
    row = pairs.loc[("pseudo_labels", "self_verification", "test_accuracy")]
    assert (round(row["mean_difference"], 3), row["wins"], row["losses"]) == (0.0, 1, 5)
    cv = tables["study_regret.csv"].query("strategy == 'cv'")
    assert set(cv["chain"]) == {"agreement_pool_all"} and round(cv["regret"].mean(), 3) == 0.010
    six = study_tables(read_study(root / "study_pool"), references=references)["study_regret.csv"]
    assert round(six.query("strategy == 'cv'")["regret"].mean(), 3) == 0.011


def test_iteration0_confidence_by_hand(tmp_path, capsys):
    """experiments/fsdd/iteration0_confidence.py on a hand-made run: four correctly labelled
    clips (posteriors 0.5, 0.91, 0.96, 0.8), one wrong one trusted; two folds' histories."""
    import importlib.util

    from conftest import REPO

    path = REPO / "experiments/fsdd/iteration0_confidence.py"
    spec = importlib.util.spec_from_file_location("iteration0_confidence", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    trust = tmp_path / "results/chains/self_verification/trust/p/it0"
    trust.mkdir(parents=True)
    pd.DataFrame(
        {
            "given_label": ["a", "a", "b", "b", "c"],
            "true_label": ["a", "a", "b", "b", "a"],
            "trusted_label": ["a", "a", "b", "b", "c"],
            "p_given": [0.5, 0.91, 0.96, 0.8, 0.97],
            "accepted": [False, True, True, False, True],
        }
    ).to_csv(trust / "decisions.csv", index=False)
    for fold, (acc, loss) in enumerate([(0.9, 0.3), (0.8, 0.5)]):
        history = tmp_path / f"results/initial/all/p/fold{fold}"
        history.mkdir(parents=True)
        pd.DataFrame({"valid_acc": [0.1, acc], "valid_loss": [2.0, loss]}).to_csv(history / "history.csv")
    row = script.confidence_row(tmp_path, "self_verification", "p", folds=2)
    assert row["correct"] == 4 and row["reach_0.9"] == 0.5 and row["reach_0.95"] == 0.25
    assert row["median_p"] == pytest.approx(0.855) and row["trusted"] == 3
    assert row["precision"] == pytest.approx(2 / 3) and row["recall"] == 0.5
    assert row["cv_acc"] == pytest.approx(0.85) and row["cv_loss"] == pytest.approx(0.4)
    script.main([f"mine={tmp_path}", "--preset", "p", "--folds", "2"])
    assert "mine" in capsys.readouterr().out


def test_a_study_resumes_on_a_new_machine_from_its_kept_files(tmp_path, monkeypatch):
    """Only the kept small files (``--copy-to``) survive a new machine; the same command must
    count their repetitions as finished, not rerun them, and the study tables must span every
    finished repetition of the folder, whichever command ran it (so resuming with a subset of
    groups or seeds never narrows them). Repetitions run seed-major, every group once per seed."""
    driver = _driver_module()
    assert driver.study_repetitions(["a", "b"], [2018, 7]) == [("a", 2018), ("b", 2018), ("a", 7), ("b", 7)]
    kept, out = tmp_path / "kept", tmp_path / "out"
    for name, table in runs().items():
        (kept / name).mkdir(parents=True)
        table.to_csv(kept / name / "systems.csv", index=False)
        if name != "r3":  # r3 never finished: only its table was left behind
            (kept / name / "experiment.json").write_text("{}")
    (out / "r2").mkdir(parents=True)
    (out / "r2" / "experiment.json").write_text('{"here": 1}')
    runs()["r2"].assign(cv_loss=0.123).to_csv(out / "r2" / "systems.csv", index=False)  # its own
    driver.restore_kept_repetitions(kept, out)
    assert (out / "r1" / "experiment.json").is_file()
    assert (pd.read_csv(out / "r2" / "systems.csv")["cv_loss"] == 0.123).all()  # never overwritten
    assert not (out / "r3").exists()
    ran: list[str] = []
    args = argparse.Namespace(
        test_groups=["r1", "r3"], test_group=None, seeds=[5], seed=5, dry_run=False,
        copy_to=None, overlay=[], chains=None, pool_fraction=0.0,
    )  # fmt: skip
    for name in ("r1", "r3"):  # the study's names are group_sSEED
        (out / f"{name}_s5").mkdir(exist_ok=True)
    (out / "r1_s5" / "experiment.json").write_text("{}")
    table = runs()["r1"]
    table.to_csv(out / "r1_s5" / "systems.csv", index=False)

    def fake_run_one(one, rep, build):
        ran.append(rep.name)
        table.to_csv(rep / "systems.csv", index=False)
        (rep / "experiment.json").write_text("{}")
        return 0

    monkeypatch.setattr(driver, "run_one", fake_run_one)
    assert driver.run_study(args, out) == 0
    assert ran == ["r3_s5"]
    # the tables span every finished repetition in the folder, not only this command's
    assert sorted(set(pd.read_csv(out / "study_runs.csv")["repetition"])) == ["r1", "r1_s5", "r2", "r3_s5"]


def _finished_repetition(folder: Path, settings: dict) -> None:
    """A finished repetition as the driver leaves it: dataset with its build record, a work
    folder with a result, Snakemake's metadata and the run state a copy must leave behind."""
    (folder / "dataset").mkdir(parents=True)
    build_info = {"settings": settings, "source": {"audio_dir": "/audio"}}
    (folder / "dataset" / "build_info.json").write_text(json.dumps(build_info))
    for part in ("results", ".snakemake/metadata", ".snakemake/locks", ".snakemake/log"):
        (folder / "work" / part).mkdir(parents=True)
    (folder / "work" / "results" / "model.pt").write_bytes(b"weights")
    os.utime(folder / "work" / "results" / "model.pt", (1_000_000, 1_000_000))
    (folder / "work" / ".snakemake" / "metadata" / "record").write_text("{}")
    (folder / "work" / ".snakemake" / "locks" / "0.input.lock").write_text("stale")
    (folder / "work" / ".snakemake" / "log" / "run.log").write_text("old log")
    (folder / "experiment.json").write_text("{}")


def test_a_study_starts_from_the_finished_repetitions_of_an_earlier_one(tmp_path, monkeypatch):
    """--reuse-from: a repetition finished in the earlier study starts from its work (same
    dataset path, files with their times, Snakemake's metadata; not its locks or logs), so only
    the new chains train; one not finished there is skipped, not run from scratch; the earlier
    study is only read; a dataset built with other settings is refused, never rebuilt there."""
    driver = _driver_module()
    earlier, out = tmp_path / "earlier", tmp_path / "out"
    built, other = (
        NoisyDatasetSettings(test_groups=("a",), seed=5),
        NoisyDatasetSettings(test_groups=("a",), seed=6),
    )
    _finished_repetition(earlier / "a_s5", built.to_json())
    (earlier / "b_s5").mkdir(parents=True)  # still running there: no experiment.json
    ran: list[str] = []

    def fake_run_one(one, rep, build):
        ran.append(rep.name)
        runs()["r1"].to_csv(rep / "systems.csv", index=False)
        (rep / "experiment.json").write_text("{}")
        return 0

    monkeypatch.setattr(driver, "run_one", fake_run_one)
    args = argparse.Namespace(
        test_groups=["a", "b"], test_group=None, seeds=[5], seed=5, dry_run=False, copy_to=None,
        overlay=[], chains=["self_verification", "augmented"], pool_fraction=0.0, reuse_from=earlier,
    )  # fmt: skip
    assert driver.run_study(args, out) == 0
    assert ran == ["a_s5"] and not (out / "b_s5" / "work").exists()
    rep = out / "a_s5"
    assert (rep / "dataset").resolve() == (earlier / "a_s5" / "dataset").resolve()
    copied = rep / "work" / "results" / "model.pt"
    assert copied.read_bytes() == b"weights" and copied.stat().st_mtime == 1_000_000
    assert (rep / "work" / ".snakemake" / "metadata" / "record").is_file()
    assert not (rep / "work" / ".snakemake" / "locks").exists()
    assert not (rep / "work" / ".snakemake" / "log").exists()
    assert (earlier / "a_s5" / "work" / ".snakemake" / "locks" / "0.input.lock").is_file()
    assert driver.start_from_earlier(earlier, rep)  # already started: resumes as it is
    assert driver.reusable_build(rep / "dataset", built, Path("/audio")) is not None
    with pytest.raises(SystemExit, match="linked from .*other dataset settings"):
        driver.reusable_build(rep / "dataset", other, Path("/audio"))
    assert (earlier / "a_s5" / "dataset" / "build_info.json").is_file()


def test_study_page_escapes_what_the_repetitions_name(tmp_path):
    """study_report.html: chain names come from systems.csv files that may come from elsewhere,
    so markup in them is shown, not run; `code` spans and numbers render as documented."""
    from workflow_lib.study_report import Figure, Page, Table, render

    hostile = '<script>alert("x")</script>'
    page = render(
        Page(
            "Study <b>",
            ["see `chain`"],
            [Table("Per chain", ["chain", "score"], [[f"`{hostile}`", "+0.010 [-0.020, +0.030]"]])],
        )
    )
    assert "<script>" not in page and "&lt;script&gt;" in page and "<title>Study &lt;b&gt;</title>" in page
    assert "<code>chain</code>" in page and '<td class="num">+0.010 [-0.020, +0.030]</td>' in page
    for name in ("../secret.png", "/etc/passwd", "sub/plot.png", ".hidden.png"):
        with pytest.raises(ValueError, match="beside the page"):
            render(Page("t", [], [Figure("plot", name, "alt")]))


def test_write_study_writes_the_page_beside_its_tables(tmp_path):
    from workflow_lib.study import read_study, write_study

    for name, table in runs().items():
        write_repetition(
            tmp_path / "study" / name, table, {"settings": {"trust": {"selection_tolerance": 0.002}}}
        )
    write_study(read_study(tmp_path / "study"), tmp_path / "study")
    page = (tmp_path / "study/study_report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and '<img src="study_paired.png"' in page
    assert (tmp_path / "study/study_paired.png").is_file()
    assert "3 finished repetitions (r1, r2, r3)" in page
    assert (
        "<h2>Paired differences: test_accuracy</h2>" in page and "<h2>The CV pick per repetition</h2>" in page
    )
    assert "<code>agreement</code> minus <code>all_labels</code>" in page
    assert '<td class="num">0.002</td>' in page  # the near-tie tolerance each pick was replayed with
    assert not list((tmp_path / "study").glob("*.tmp*"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"preset,test_accuracy\np,0.9\n", "needs the columns system"),
        (b"preset,system,cv_loss\np,a,0.1\n", "needs the columns one of test_accuracy"),
        (b"preset,system,test_accuracy\np,a,0.9\np,a,0.1\n", "more than one row for (preset, chain)"),
        (b"preset,system,test_accuracy\np,a,0.9\np,b,=HYPERLINK()\n", "must hold numbers"),
        (b"preset,system,test_accuracy,trusted_by_it0\np,a,0.9,lots\n", "must hold numbers"),
        (b"", "not a readable systems table"),
        (b'preset,system\n"p,a\n', "not a readable systems table"),
    ],
)
def test_a_hostile_systems_table_is_one_clear_error(tmp_path, capsys, content, message):
    """A study folder may come from elsewhere: each repetition's systems.csv is checked before
    any table is computed (a repeated row would otherwise be averaged away unseen)."""
    folder = tmp_path / "r1"
    write_repetition(folder, near_tie_runs()["r1"], {})
    (folder / "systems.csv").write_bytes(content)
    assert main([str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert message in error and "systems.csv" in error and "Traceback" not in error


def test_the_readme_figures_of_the_multilabel_new_chains_study():
    """README "The chains beyond the paper on the multi-label pairs" and its "Which chain" bullet:
    the means, the consistency-isolating pairs (`ssl_consistency` and the paper's rule against
    `warmup`), augmented's kept iteration and the CV pick, recomputed from the committed files."""
    from workflow_lib.study import read_study, study_tables

    from conftest import REPO

    folder = REPO / "experiments/fsdd/reference/study_multilabel_new_chains"
    runs = read_study(folder)
    assert runs["repetition"].nunique() == 6
    assert (runs.query("system == 'augmented'")["iteration"] == 0).all()  # its fine-tuning never kept
    tables = study_tables(runs, references=["self_verification", "all_labels", "warmup"])
    means = tables["study_summary.csv"].set_index("system")["test_lwlrap_mean"].round(3)
    expected = {
        "all_labels": 0.740,
        "agreement": 0.731,
        "mixup_noisy": 0.717,
        "self_verification": 0.707,
        "soft_relabel": 0.705,
        "augmented": 0.698,
        "warmup": 0.666,
        "ssl_consistency": 0.639,
    }
    assert means.to_dict() == expected
    pairs = tables["study_paired.csv"].set_index(["system", "reference", "metric"])
    row = pairs.loc[("ssl_consistency", "warmup", "test_lwlrap")]
    assert (round(row["mean_difference"], 3), row["wins"], row["losses"]) == (-0.027, 2, 4)
    row = pairs.loc[("warmup", "self_verification", "test_lwlrap")]
    assert (round(row["mean_difference"], 3), row["wins"], row["losses"]) == (-0.041, 0, 6)
    assert round(row["wilcoxon_p"], 3) == 0.031 and row["verdict"] == "no difference shown"
    cv = tables["study_regret.csv"].query("strategy == 'cv'")
    assert sorted(cv["chain"]) == ["agreement"] * 3 + ["all_labels"] * 3
    assert round(cv["regret"].mean(), 3) == 0.010 and round(cv["regret"].max(), 3) == 0.034


def test_the_machine_record_names_the_cpu_and_the_load():
    """experiment.json's ``machine``: a CPU model string, the CPU count and three load averages
    (or "unknown" where /proc is missing), so a wall time can be read against what ran it."""
    from workflow_lib.machine import machine_record

    record = machine_record()
    assert set(record) == {"cpu", "cpus", "load_average"}
    assert isinstance(record["cpu"], str) and record["cpu"]
    assert record["cpus"] is None or record["cpus"] >= 1
    load = record["load_average"]
    assert load == "unknown" or [float(x) >= 0 for x in load.split()] == [True] * 3
