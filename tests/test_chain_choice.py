"""chain_choice: cv (workflow_lib/choice.py) on hand-made tables: the criterion, model
selection's near-tie rule, no test column read, results/chosen/ and the chain the export uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow_lib.choice import choose_chain_job, cv_rows, pick_chain, picked_chain
from workflow_lib.errors import UserError


def systems(loss, accuracy, test, chains=("a", "b", "c"), presets=("p",)) -> pd.DataFrame:
    """A systems.csv-like table: one row per chain and preset (values repeated per preset)."""
    rows = [
        {"preset": p, "system": c, "cv_loss": lo, "cv_accuracy": a, "test_accuracy": t, "test_map3": t}
        for p in presets
        for c, lo, a, t in zip(chains, loss, accuracy, test)
    ]
    return pd.DataFrame(rows)


def test_lowest_cv_loss_wins_with_runner_up_and_margin():
    choice, per_chain = pick_chain(systems([0.30, 0.20, 0.25], [0.9, 0.8, 0.95], [0.7, 0.6, 0.9]))
    assert choice["chain"] == "b" and choice["criterion"] == "cv_loss"
    assert choice["value"] == pytest.approx(0.20)
    assert choice["runner_up"] == "c" and choice["runner_up_value"] == pytest.approx(0.25)
    assert choice["margin"] == pytest.approx(0.05)
    assert choice["reason"] == "lowest mean CV loss"
    assert per_chain["picked"].tolist() == [False, True, False]
    assert per_chain["near_tie"].tolist() == [False, False, False]


def test_near_ties_as_model_selection_resolves_them():
    """Within the tolerance: the higher CV accuracy, then the earlier chain of run_chains."""
    table = systems([0.2001, 0.2000, 0.2003, 0.5], [0.95, 0.92, 0.95, 0.99], [0.1, 0.2, 0.3, 0.4], "abcd")
    assert pick_chain(table, 0.0)[0]["chain"] == "b"
    choice, per_chain = pick_chain(table, 0.0005)
    assert choice["chain"] == "a"  # a and c share the highest accuracy: a comes first
    assert "near-tie" in choice["reason"] and "a, b, c" in choice["reason"]
    assert choice["runner_up"] == "b" and choice["margin"] == pytest.approx(-0.0001)
    assert per_chain["near_tie"].tolist() == [True, True, True, False]
    exact = systems([0.2, 0.2, 0.3], [0.5, 0.9, 0.9], [0, 0, 0])
    assert pick_chain(exact, 0.0)[0]["chain"] == "a"  # tolerance 0: the lowest loss, earliest


def test_multi_label_picks_the_highest_cv_lwlrap_averaged_over_presets():
    table = pd.DataFrame(
        {
            "system": ["a", "a", "b", "b"],
            "preset": ["p", "q", "p", "q"],
            "cv_loss": [0.1, 0.1, 0.9, 0.9],  # a has the lower loss, but lwlrap decides
            "cv_accuracy": [0.5] * 4,
            "cv_lwlrap": [0.80, 0.60, 0.72, 0.70],  # means: a 0.70, b 0.71
            "test_lwlrap": [0.9, 0.9, 0.1, 0.1],
        }
    )
    choice, per_chain = pick_chain(table)
    assert choice["chain"] == "b" and choice["criterion"] == "cv_lwlrap"
    assert choice["value"] == pytest.approx(0.71) and choice["margin"] == pytest.approx(0.01)
    assert per_chain.set_index("chain").loc["a", "cv_lwlrap"] == pytest.approx(0.70)


def test_test_columns_are_never_read():
    """Permuting (or dropping) the test columns leaves the pick as it was, while the same
    permutation of the CV columns moves it."""
    table = systems([0.30, 0.20, 0.25, 0.22], [0.9, 0.8, 0.95, 0.85], [0.1, 0.2, 0.3, 0.4], "abcd")
    rng = np.random.default_rng(0)
    reference = pick_chain(table, 0.03)[0]
    for _ in range(5):
        shuffled = table.copy()
        order = rng.permutation(len(table))
        shuffled[["test_accuracy", "test_map3"]] = table[["test_accuracy", "test_map3"]].to_numpy()[order]
        assert pick_chain(shuffled, 0.03)[0] == reference
    assert pick_chain(table.drop(columns=["test_accuracy", "test_map3"]), 0.03)[0] == reference
    moved = table.copy()
    moved[["cv_loss", "cv_accuracy"]] = table[["cv_loss", "cv_accuracy"]].to_numpy()[[3, 1, 2, 0]]
    assert pick_chain(moved, 0.03)[0]["chain"] != reference["chain"]


def test_no_cv_scores_takes_the_first_chain_and_missing_columns_are_refused():
    choice, _ = pick_chain(systems([np.nan] * 3, [np.nan] * 3, [0.1, 0.2, 0.9]))
    assert choice["chain"] == "a" and "no chain has a CV score" in choice["reason"]
    with pytest.raises(UserError, match="cv_loss and cv_accuracy"):
        pick_chain(pd.DataFrame({"system": ["a"], "test_accuracy": [0.5]}))


def write_selection(path, rows):
    pd.DataFrame(rows, columns=["iteration", "mean_valid_loss", "mean_valid_acc", "chosen"]).to_csv(
        path, index=False
    )
    return path


def test_choose_chain_job_writes_results_chosen(tmp_path):
    """From the selection tables (validation figures only): the chosen iteration's CV row per
    chain and preset; choice.csv, chains.csv and the picked chain's summary.csv."""
    selections = {
        "first": {"p": write_selection(tmp_path / "f.csv", [(0, 0.5, 0.8, False), (1, 0.3, 0.85, True)])},
        "second": {"p": write_selection(tmp_path / "s.csv", [(0, 0.2, 0.9, True), (1, 0.1, 0.7, False)])},
    }
    rows = cv_rows(selections)
    assert rows[["system", "cv_loss"]].values.tolist() == [["first", 0.3], ["second", 0.2]]
    summaries = {}
    for chain in selections:
        summaries[chain] = tmp_path / f"{chain}_summary.csv"
        pd.DataFrame({"preset": ["fusion"], "test_accuracy": [len(chain)]}).to_csv(
            summaries[chain], index=False
        )
    choice = choose_chain_job(selections, summaries, 0.0, tmp_path / "chosen")
    assert choice["chain"] == "second"
    written = pd.read_csv(tmp_path / "chosen/choice.csv")
    assert written.columns.tolist() == [
        "chain",
        "criterion",
        "value",
        "runner_up",
        "runner_up_value",
        "margin",
        "tolerance",
        "reason",
    ]
    assert written.loc[0, "chain"] == "second" and written.loc[0, "runner_up"] == "first"
    assert written.loc[0, "margin"] == pytest.approx(0.1)
    assert pd.read_csv(tmp_path / "chosen/chains.csv")["picked"].tolist() == [False, True]
    assert pd.read_csv(tmp_path / "chosen/summary.csv")["test_accuracy"].item() == len("second")
    assert picked_chain(["first", "second"], tmp_path / "chosen/choice.csv") == "second"
    assert picked_chain(["first", "second"], None) == "first"
    with pytest.raises(UserError, match="choose_chain"):
        picked_chain(["first"], tmp_path / "nowhere.csv")


def test_the_export_reads_the_pick(tmp_path):
    """tagger_settings carries chain_choice only when a job picks (cv, several chains), and
    run_layout (export, sv-tag --results) then names the chain of results/chosen/choice.csv."""
    import yaml

    from workflow_lib.config import resolve_settings
    from workflow_lib.export import run_layout
    from workflow_lib.job_settings import tagger_settings

    from conftest import REPO

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    first = tagger_settings(resolve_settings(config | {"run_chains": ["self_verification", "verified_only"]}))
    assert first["chain"] == "self_verification" and "chain_choice" not in first
    assert run_layout(tmp_path, first)[1] == "self_verification"
    alone = tagger_settings(resolve_settings(config | {"chain_choice": "cv"}))
    assert "chain_choice" not in alone  # one chain: nothing to wait for
    settings = resolve_settings(
        config | {"chain_choice": "cv", "run_chains": ["self_verification", "verified_only"]}
    )
    by_cv = tagger_settings(settings)
    assert by_cv["chain_choice"] == "cv" and by_cv["starts"]["verified_only"] == "verified"
    (tmp_path / "chosen").mkdir()
    pd.DataFrame({"chain": ["verified_only"]}).to_csv(tmp_path / "chosen/choice.csv", index=False)
    layout, chain = run_layout(tmp_path, by_cv)
    assert chain == "verified_only"
    assert layout.initial_dir(layout.starts[chain], "p", 0).endswith("initial/verified/p/fold0")


def test_an_unknown_chain_choice_is_refused_naming_the_key():
    import yaml

    from workflow_lib.config import ConfigError, resolve_settings

    from conftest import REPO

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert resolve_settings(config)["chain_choice"] == "first"  # the default: the paper's method
    with pytest.raises(ConfigError, match="chain_choice"):
        resolve_settings(config | {"chain_choice": "best_on_test"})


def test_choose_chain_command_with_a_single_chain(tmp_path):
    """The job's command line (rule choose_chain): one chain is recorded as the pick, with no
    runner-up."""
    import json

    from workflow_lib.cli import main

    selection = write_selection(tmp_path / "sel.csv", [(0, 0.4, 0.8, True)])
    summary = tmp_path / "summary.csv"
    pd.DataFrame({"preset": ["fusion"], "test_accuracy": [0.5]}).to_csv(summary, index=False)
    spec = {"selections": {"only": {"p": str(selection)}}, "summaries": {"only": str(summary)}}
    assert main(["choose-chain", "--spec", json.dumps(spec), "--out-dir", str(tmp_path / "chosen")]) == 0
    choice = pd.read_csv(tmp_path / "chosen/choice.csv", keep_default_na=False)
    assert choice.loc[0, "chain"] == "only" and choice.loc[0, "runner_up"] == ""
    assert choice.loc[0, "value"] == pytest.approx(0.4)
