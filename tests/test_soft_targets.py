"""Soft relabelling's target arithmetic (workflow_lib/soft_targets.py, issue 22 item 2).

What is checked: the co-occurrence table against a hand computation; multi-label soft targets
stay in [0, 1], keep labelled classes at 1 and agree with a hand computation; single-label soft
targets sum to 1 and keep the true class at >= 1 - strength; strength 0 is the identity;
strengths outside [0, 1] are refused. Smoothing towards the confusion rows (``towards:
confusion``): the rows against a hand computation, an unseen class one-hot, rows summing to 1;
a fine-tuning job takes them from the other folds' verified clips only, fails without the
posteriors file or with a bad one, and only that chain's jobs read the file (dry run).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_multilabel_training import CLASSES, job_for, store  # noqa: F401 (a fixture)
from test_training import N_CLASSES, band_bank

from workflow_lib.config import ConfigError, resolve_settings
from workflow_lib.errors import UserError
from workflow_lib.io import read_csv_str, write_csv
from workflow_lib.job_settings import chain_fit_options, fit_settings
from workflow_lib.model import build_model
from workflow_lib.soft_targets import (
    SoftRelabelSettings,
    class_prior,
    confusion_rows,
    confusion_smoothing,
    cooccurrence,
    multilabel_soft_targets,
    prior_smoothing,
    soften,
)
from workflow_lib.stages import (
    TrainingJob,
    confusion_table,
    fingerprint,
    run_training_job,
    training_sets,
    training_targets,
)
from workflow_lib.task import MULTI, SINGLE
from workflow_lib.training import CheckpointPolicy, FitSettings, RunOptions, fit

from conftest import REPO, TINY_FIT, fold_one_job

#: Four verified clips over three classes (class 2 never verified).
VERIFIED = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])


def test_cooccurrence_matches_hand_computation() -> None:
    """Class 0: 3 clips, 2 also carry class 1; class 1: 3 clips, 2 also carry class 0;
    class 2: no verified clip, so its row is the identity row."""
    expected = np.array([[1.0, 2 / 3, 0.0], [2 / 3, 1.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(cooccurrence(VERIFIED), expected)


def test_multilabel_soft_targets_hand_values_and_bounds() -> None:
    table = cooccurrence(VERIFIED)
    targets = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=float)
    soft = multilabel_soft_targets(targets, table, 0.1)
    # row 0: S = P(.|0) = [1, 2/3, 0]; row 1: S = mean(P(.|0), P(.|2)) = [0.5, 1/3, 0.5]
    np.testing.assert_allclose(soft[0], [1.0, 0.1 * 2 / 3, 0.0])
    np.testing.assert_allclose(soft[1], [0.9 + 0.05, 0.1 / 3, 0.9 + 0.05])
    np.testing.assert_array_equal(soft[2], [0.0, 0.0, 0.0])
    assert (soft >= 0).all() and (soft <= 1 + 1e-12).all()
    assert (soft[targets == 1] >= 0.9 - 1e-12).all()


def test_multilabel_random_rows_bounded() -> None:
    rng = np.random.default_rng(0)
    verified = (rng.random((40, 6)) < 0.3).astype(float)
    targets = (rng.random((30, 6)) < 0.3).astype(float)
    for strength in (0.0, 0.1, 0.5, 1.0):
        soft = multilabel_soft_targets(targets, cooccurrence(verified), strength)
        assert (soft >= 0).all() and (soft <= 1 + 1e-12).all()
        assert (soft[targets == 1] >= 1 - strength - 1e-12).all()
    np.testing.assert_array_equal(multilabel_soft_targets(targets, cooccurrence(verified), 0.0), targets)


def test_single_label_rows_sum_to_one() -> None:
    prior = class_prior(np.array([0, 0, 1, 2, 2, 2]), 4)
    np.testing.assert_allclose(prior, [2 / 6, 1 / 6, 3 / 6, 0.0])
    labels = np.array([0, 3, 2, 1])
    soft = prior_smoothing(labels, prior, 0.2)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    assert (soft[np.arange(4), labels] >= 0.8).all()
    np.testing.assert_allclose(class_prior(np.array([], dtype=int), 4), 0.25)


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_out_of_range_refused(strength: float) -> None:
    with pytest.raises(ValueError, match="strength must be in"):
        prior_smoothing(np.array([0]), np.array([1.0]), strength)
    with pytest.raises(ValueError, match="strength must be in"):
        multilabel_soft_targets(VERIFIED, cooccurrence(VERIFIED), strength)


#: Three out-of-fold posterior rows over three classes: two clips of class 0, one of class 1,
#: none of class 2.
CONFUSED_LABELS = np.array([0, 0, 1])
CONFUSED_POSTERIORS = np.array([[0.8, 0.2, 0.0], [0.6, 0.3, 0.1], [0.1, 0.9, 0.0]])


def test_confusion_rows_match_hand_computation() -> None:
    """Row 0: mean of (0.8, 0.2, 0) and (0.6, 0.3, 0.1); row 1: its one clip; class 2 has no
    clip, so no spread (e_2)."""
    table = confusion_rows(CONFUSED_LABELS, CONFUSED_POSTERIORS, 3)
    np.testing.assert_allclose(table, [[0.7, 0.25, 0.05], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]])
    # rounded posteriors (a CSV's) are renormalised: rows still sum to 1
    rounded = confusion_rows(np.array([0]), np.array([[0.333, 0.333, 0.333]]), 3)
    np.testing.assert_allclose(rounded[0], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(rounded.sum(axis=1), 1.0)


def test_confusion_smoothing_hand_values_and_rows_sum_to_one() -> None:
    table = confusion_rows(CONFUSED_LABELS, CONFUSED_POSTERIORS, 3)
    soft = confusion_smoothing(np.array([0, 2, 1]), table, 0.2)
    np.testing.assert_allclose(soft[0], [0.8 + 0.2 * 0.7, 0.2 * 0.25, 0.2 * 0.05])
    np.testing.assert_allclose(soft[1], [0.0, 0.0, 1.0])  # unseen class: one-hot
    np.testing.assert_allclose(soft[2], [0.02, 0.98, 0.0])
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    rng = np.random.default_rng(1)
    posteriors = rng.dirichlet(np.ones(5), size=40)
    labels = rng.integers(0, 4, size=40)  # class 4 never a true class
    for strength in (0.0, 0.3, 1.0):
        soft = confusion_smoothing(labels, confusion_rows(labels, posteriors, 5), strength)
        np.testing.assert_allclose(soft.sum(axis=1), 1.0)
        assert (soft[np.arange(40), labels] >= 1 - strength - 1e-12).all()


@pytest.mark.parametrize(
    "posteriors,message",
    [
        (np.array([[0.5, np.nan, 0.5]]), "finite and non-negative"),
        (np.array([[1.5, -0.5, 0.0]]), "finite and non-negative"),
        (np.array([[0.5, 0.5]]), "shape"),
        (np.array([[0.0, 0.0, 0.0]]), "all-zero"),
    ],
)
def test_confusion_rows_refuse_bad_posteriors(posteriors, message) -> None:
    with pytest.raises(ValueError, match=message):
        confusion_rows(np.array([0]), posteriors, 3)


def test_confusion_smoothing_refuses_a_table_that_is_not_row_stochastic() -> None:
    with pytest.raises(ValueError, match="probability vector"):
        confusion_smoothing(np.array([0]), np.array([[0.5, 0.4], [0.0, 1.0]]), 0.1)
    with pytest.raises(ValueError, match="single-label only"):
        soften(VERIFIED, np.ones(4, bool), np.ones(4, bool), 0.1, 3, confusion=np.eye(3))


# --- the chain option: settings, schema, training targets, a fit ----------------------------

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
PRESET = "vgg_gap_spec1_1"


def _config(soft_relabel=None) -> dict:
    config = copy.deepcopy(CONFIG)
    config["run_preset"] = "paper"
    if soft_relabel is not None:
        config["chains"]["warmup"]["soft_relabel"] = soft_relabel
    return config


def test_soften_rows_single_and_multi() -> None:
    """Only the chosen rows change; S from the verified rows only."""
    labels = np.array([0, 0, 1, 1])
    verified = np.array([True, True, True, False])
    soft = soften(labels, verified, ~verified, 0.3, 3)
    np.testing.assert_array_equal(soft[:3], np.eye(3)[[0, 0, 1]])
    np.testing.assert_allclose(soft[3], 0.7 * np.eye(3)[1] + 0.3 * np.array([2 / 3, 1 / 3, 0.0]), rtol=1e-6)
    assert soft.dtype == np.float32
    rows = np.eye(3, dtype=np.float32)[labels]
    multi = soften(rows, verified, np.ones(4, bool), 0.3, 3)
    np.testing.assert_allclose(multi, rows)  # single labels never co-occur: nothing spreads


def test_fit_settings_are_unchanged_without_the_key() -> None:
    """Every chain of config.yaml: the settings of before; with the key only the chain's
    fine-tuning jobs get ``fit.soft_relabel``, and records without it keep their fingerprint."""
    plain = resolve_settings(_config())
    on = resolve_settings(_config({"strength": 0.1}))
    assert fit_settings(plain, PRESET, 0, "soft_relabel") == fit_settings(plain, PRESET, 0)
    example = fit_settings(plain, PRESET, 1, "soft_relabel")["fit"]["soft_relabel"]
    assert example == {"strength": 0.1, "verified": False}
    confusion = fit_settings(plain, PRESET, 1, "soft_confusion")["fit"]["soft_relabel"]
    assert confusion == {"strength": 0.1, "verified": False, "towards": "confusion"}
    for chain in plain["chains"]:
        if "soft_relabel" in CONFIG["chains"][chain]:
            continue
        for iteration in (0, 1, 2):
            assert "soft_relabel" not in fit_settings(plain, PRESET, iteration, chain)["fit"]
            if chain != "warmup":
                assert fit_settings(on, PRESET, iteration, chain) == fit_settings(
                    plain, PRESET, iteration, chain
                )
    assert fit_settings(on, PRESET, 0, "warmup") == fit_settings(plain, PRESET, 0)
    tuned = fit_settings(on, PRESET, 1, "warmup")
    assert tuned["fit"]["soft_relabel"] == {"strength": 0.1, "verified": False}
    assert FitSettings(**tuned["fit"]).soft_relabel == SoftRelabelSettings(strength=0.1)
    assert "soft_relabel" in FitSettings(**tuned["fit"]).record()
    assert "soft_relabel" not in FitSettings(**fit_settings(plain, PRESET, 1, "warmup")["fit"]).record()


@pytest.mark.parametrize(
    "value,fragment",
    [
        ({"verified": True}, "soft_relabel"),
        ({"strength": 0}, "soft_relabel.strength"),
        ({"strength": 1.5}, "soft_relabel.strength"),
        ({"strength": 0.1, "verified": "no"}, "soft_relabel.verified"),
        ({"strength": 0.1, "partner": 1}, "soft_relabel"),
    ],
)
def test_config_refuses_bad_soft_relabel_naming_the_key(value, fragment) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_settings(_config(value))
    assert f"config key chains.warmup.{fragment}" in str(raised.value), str(raised.value)


def test_config_accepts_soft_relabel() -> None:
    settings = resolve_settings(_config({"strength": 0.2, "verified": True}))
    assert settings["chains"]["warmup"]["soft_relabel"] == {"strength": 0.2, "verified": True}


def _fit(tmp_path, name, task, soft, epochs=3, kill_after=None):
    """The band problem of tests/test_training.py fine-tuned on soft targets, seed 5,
    checkpoints every 2 epochs; ``kill_after``: stop as a kill."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train_bank, labels = band_bank(4, 256, rng)
    valid_bank, valid_targets = band_bank(2, 256, rng)
    if task is MULTI:
        labels, valid_targets = (np.eye(N_CLASSES, dtype=np.float32)[t] for t in (labels, valid_targets))
    verified = np.arange(len(labels)) % 2 == 0
    if task is MULTI:  # verified clips carry a second label, so classes co-occur
        labels = np.clip(labels + verified[:, None] * np.roll(labels, 1, axis=1), 0, 1)
    targets = soften(labels, verified, ~verified, 0.3, N_CLASSES) if soft else labels
    model = build_model(4, N_CLASSES, dropout=(0.1, 0.2))
    fit_ = {"epochs": epochs, "lr": 3e-3, "constant_epochs": 2, "batch_size": 6, "excerpt_frames": 192}
    settings = FitSettings(**fit_, mixup_alpha=None, seed=5, soft_relabel={"strength": 0.3} if soft else None)

    def on_epoch(history):
        if kill_after is not None and len(history) == kill_after:
            raise KeyboardInterrupt

    options = RunOptions(CheckpointPolicy(epochs=2, minutes=None))
    args = (train_bank, targets, valid_bank, valid_targets, settings, tmp_path / name, "fp")
    return fit(model, *args, on_epoch=on_epoch, options=options, task=task)


def _scores(state) -> np.ndarray:
    return pd.DataFrame(state.history)[["train_loss", "train_acc", "valid_loss", "valid_acc"]].to_numpy(float)


@pytest.mark.parametrize("task", [SINGLE, MULTI], ids=lambda t: t.name)
def test_fit_with_soft_targets_is_deterministic_and_resumes_exactly(tmp_path, task) -> None:
    torch.set_num_threads(1)
    first = _fit(tmp_path, "a.pt", task, True)
    np.testing.assert_array_equal(_scores(first), _scores(_fit(tmp_path, "b.pt", task, True)))
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, "killed.pt", task, True, epochs=4, kill_after=3)
    resumed = _fit(tmp_path, "killed.pt", task, True, epochs=4)
    straight = _fit(tmp_path, "straight.pt", task, True, epochs=4)
    np.testing.assert_allclose(_scores(resumed), _scores(straight), rtol=0, atol=1e-6)
    assert not np.allclose(_scores(first), _scores(_fit(tmp_path, "hard.pt", task, False)))


def test_training_targets_soften_trusted_unverified_clips_from_verified_training_clips(tmp_path) -> None:
    """Fold 1 trains on v0, v2 (verified, classes a, b) and the trusted unverified u1 (a);
    validation clips (v1 of class c) never shape S: the prior is (1/2, 1/2, 0)."""
    folds = pd.DataFrame(
        {
            "fname": ["v0", "v2", "u1", "v1", "u2"],
            "label": ["a", "b", "a", "c", "c"],
            "verified": ["1", "1", "0", "1", "0"],
            "fold": ["0", "0", "0", "1", "1"],
        }
    )
    listing = folds[["fname", "label"]].assign(manually_verified="1")
    settings = FitSettings(**{**TINY_FIT, "mixup_alpha": None, "soft_relabel": {"strength": 0.2}})
    job = fold_one_job(tmp_path, folds, listing, settings)
    classes = ["a", "b", "c"]
    train, valid = training_sets(job, classes)
    assert set(train["fname"]).isdisjoint(valid["fname"])
    soft = training_targets(job, train, classes)
    rows = dict(zip(train["fname"], soft))
    np.testing.assert_array_equal(rows["v0"], [1, 0, 0])
    np.testing.assert_allclose(rows["u1"], [0.8 + 0.1, 0.1, 0.0], rtol=1e-6)
    plain = replace(job, fit=replace(settings, soft_relabel=None))
    np.testing.assert_array_equal(training_targets(plain, train, classes), train["target"].to_numpy())


def test_a_fine_tuning_job_trains_on_soft_targets(store, tmp_path) -> None:
    """run_training_job, multi-label, soft relabelling on: its fingerprint differs from the
    plain job's (whose stays as it was) and it trains through the soft rows."""
    folds = read_csv_str(store["folds"])
    write_csv(folds[["fname", "label"]].assign(manually_verified="1"), tmp_path / "train_list.csv")
    plain = job_for(store, tmp_path / "plain", train_list_csv=tmp_path / "train_list.csv")
    plain = replace(plain, fit=replace(plain.fit, mixup_alpha=None))
    job = replace(plain, out_dir=tmp_path / "on", fit=replace(plain.fit, soft_relabel={"strength": 0.1}))
    train, valid = training_sets(job, CLASSES)
    assert fingerprint(job, train, valid) != fingerprint(plain, train, valid)
    soft = training_targets(job, train, CLASSES)
    assert soft.shape == (len(train), len(CLASSES)) and (soft >= 0).all() and (soft <= 1).all()
    history = run_training_job(job)
    assert len(history) == job.fit.epochs and np.isfinite(history["train_loss"]).all()


# --- towards: confusion in a fine-tuning job -------------------------------------------------

#: Fold 1's job trains on fold 0: verified v0, v3 (a), v2 (b); trusted unverified u1 (a),
#: u2 (b), u4 (c). v1 (a) is fold 1's own verified validation clip.
CONFUSION_FOLDS = pd.DataFrame(
    {
        "fname": ["v0", "v3", "v2", "u1", "u2", "u4", "v1"],
        "label": ["a", "a", "b", "a", "b", "c", "a"],
        "verified": ["1", "1", "1", "0", "0", "0", "1"],
        "fold": ["0", "0", "0", "0", "0", "0", "1"],
    }
)
#: Out-of-fold posteriors of every verified clip (self_verify's valid_posteriors.csv); v1's row
#: would pull class a towards c if fold 1's own validation clip leaked into its targets.
CONFUSION_POSTERIORS = pd.DataFrame(
    {
        "fname": ["v0", "v3", "v2", "v1"],
        "fold": ["0", "0", "0", "1"],
        "label": ["a", "a", "b", "a"],
        "a": [0.6, 0.8, 0.1, 0.0],
        "b": [0.4, 0.0, 0.9, 0.0],
        "c": [0.0, 0.2, 0.0, 1.0],
    }
)
CONFUSION_CLASSES = ["a", "b", "c"]


def _confusion_job(tmp_path, posteriors: pd.DataFrame | None = CONFUSION_POSTERIORS) -> TrainingJob:
    """Fold 1's fine-tuning job over :data:`CONFUSION_FOLDS`, every clip trusted, strength 0.2
    towards the confusion rows of ``posteriors`` (written to valid_posteriors.csv; None: no file)."""
    listing = CONFUSION_FOLDS[["fname", "label"]].assign(manually_verified="1")
    relabel = {"strength": 0.2, "towards": "confusion"}
    job = fold_one_job(
        tmp_path,
        CONFUSION_FOLDS,
        listing,
        FitSettings(**{**TINY_FIT, "mixup_alpha": None, "soft_relabel": relabel}),
    )
    if posteriors is None:
        return job
    posteriors.to_csv(tmp_path / "valid_posteriors.csv", index=False)
    return replace(job, valid_posteriors_csv=tmp_path / "valid_posteriors.csv")


def test_confusion_rows_come_from_the_other_folds_verified_clips_only(tmp_path) -> None:
    """Row a: mean of v0 and v3 = (0.7, 0.2, 0.1), v1 (fold 1's own) left out; row b: v2's;
    row c: no verified training clip, so one-hot."""
    job = _confusion_job(tmp_path)
    expected = np.array([[0.7, 0.2, 0.1], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(confusion_table(job, CONFUSION_CLASSES), expected)
    train, valid = training_sets(job, CONFUSION_CLASSES)
    assert list(valid["fname"]) == ["v1"]
    rows = dict(zip(train["fname"], training_targets(job, train, CONFUSION_CLASSES)))
    np.testing.assert_allclose(rows["u1"], [0.8 + 0.2 * 0.7, 0.2 * 0.2, 0.2 * 0.1], rtol=1e-6)
    np.testing.assert_allclose(rows["u2"], [0.02, 0.98, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(rows["u4"], [0, 0, 1])
    np.testing.assert_array_equal(rows["v0"], [1, 0, 0])  # verified: false keeps them hard
    np.testing.assert_allclose(np.stack(list(rows.values())).sum(axis=1), 1.0, rtol=1e-6)
    # fold 0's job takes v1 only: its row a is v1's posterior
    fold0 = replace(job, fold=0)
    np.testing.assert_allclose(confusion_table(fold0, CONFUSION_CLASSES)[0], [0.0, 0.0, 1.0])


def test_the_posteriors_file_is_part_of_the_fingerprint(tmp_path) -> None:
    job = _confusion_job(tmp_path)
    train, valid = training_sets(job, CONFUSION_CLASSES)
    before = fingerprint(job, train, valid)
    CONFUSION_POSTERIORS.assign(a=[0.5, 0.8, 0.1, 0.0], b=[0.5, 0.0, 0.9, 0.0]).to_csv(
        job.valid_posteriors_csv, index=False
    )
    assert fingerprint(job, train, valid) != before


def test_a_confusion_job_without_its_posteriors_fails_clearly(tmp_path) -> None:
    job = _confusion_job(tmp_path, None)
    train, _ = training_sets(job, CONFUSION_CLASSES)
    with pytest.raises(UserError, match="towards: confusion needs the previous iteration's valid_posteriors"):
        training_targets(job, train, CONFUSION_CLASSES)
    gone = replace(job, valid_posteriors_csv=tmp_path / "gone.csv")
    with pytest.raises(UserError, match=r"gone\.csv is missing: the self_verify job"):
        training_targets(gone, train, CONFUSION_CLASSES)


@pytest.mark.parametrize(
    "bad,message",
    [
        (CONFUSION_POSTERIORS.drop(columns="fold"), r"required column\(s\) \['fold'\] missing"),
        (CONFUSION_POSTERIORS.drop(columns="c"), r"missing: \['c'\]"),
        (CONFUSION_POSTERIORS.assign(d=0.0), r"unknown: \['d'\]"),
        (CONFUSION_POSTERIORS[["fname", "fold", "label", "b", "a", "c"]], "or order"),
        (CONFUSION_POSTERIORS.assign(a=[0.6, np.nan, 0.1, 0.0]), "not a finite non-negative number"),
        (CONFUSION_POSTERIORS.assign(a=["0.6", "x", "0.1", "0"]), "not a finite non-negative number"),
        (CONFUSION_POSTERIORS.assign(a=[0.6, np.inf, 0.1, 0.0]), "not a finite non-negative number"),
        (
            CONFUSION_POSTERIORS.assign(fname=["v0", "v3", "v2", "stranger"]),
            "clip stranger is not in folds.csv",
        ),
        (CONFUSION_POSTERIORS.assign(fold=["0", "0", "1", "1"]), "clip v2: its fold differs"),
        (CONFUSION_POSTERIORS.assign(label=["a", "b", "b", "a"]), "clip v3: its label differs"),
        (CONFUSION_POSTERIORS.assign(fname=["v0", "v0", "v2", "v1"]), "clip v0 appears twice"),
        (CONFUSION_POSTERIORS.assign(fname=["v0", "v3", "u2", "v1"]), "not verified"),
    ],
)
def test_a_bad_posteriors_file_is_refused_naming_the_problem(tmp_path, bad, message) -> None:
    job = _confusion_job(tmp_path, bad)
    train, _ = training_sets(job, CONFUSION_CLASSES)
    with pytest.raises(UserError, match=message) as raised:
        training_targets(job, train, CONFUSION_CLASSES)
    assert "valid_posteriors.csv" in str(raised.value)


def test_towards_confusion_is_refused_for_a_multi_label_job(tmp_path) -> None:
    job = replace(_confusion_job(tmp_path), task=MULTI)
    with pytest.raises(UserError, match="single-label only"):
        confusion_table(job, CONFUSION_CLASSES)


# --- towards: settings record, config, the rule's input --------------------------------------


def test_the_settings_record_is_unchanged_without_towards_or_with_the_prior() -> None:
    """Without the key, or naming the default, the job settings and the fit record are those
    of before the key existed, byte for byte; confusion adds the key."""
    before = {"strength": 0.1, "verified": False}
    for spec in ({"strength": 0.1}, {"strength": 0.1, "towards": "prior"}):
        options = chain_fit_options({"soft_relabel": spec}, None)
        assert json.dumps(options, sort_keys=True) == json.dumps({"soft_relabel": before}, sort_keys=True)
        record = FitSettings(**{**TINY_FIT, "mixup_alpha": None, **options}).record()
        assert record["soft_relabel"] == before
    confusion = chain_fit_options({"soft_relabel": {"strength": 0.1, "towards": "confusion"}}, None)
    assert confusion["soft_relabel"]["towards"] == "confusion"
    assert FitSettings(**{**TINY_FIT, "mixup_alpha": None, **confusion}).record()["soft_relabel"] == {
        **before,
        "towards": "confusion",
    }
    with pytest.raises(ValueError, match="towards 'posterior'"):
        SoftRelabelSettings(strength=0.1, towards="posterior")


def test_training_job_takes_the_posteriors_path_from_its_settings() -> None:
    settings = fit_settings(resolve_settings(_config()), PRESET, 1, "soft_confusion")
    where = {"manifest_csv": None, "folds_csv": None, "classes_csv": None, "fold": 0, "out_dir": None}
    assert TrainingJob.from_settings(settings, **where).valid_posteriors_csv is None
    job = TrainingJob.from_settings({**settings, "valid_posteriors": "x/valid_posteriors.csv"}, **where)
    assert job.valid_posteriors_csv == Path("x/valid_posteriors.csv")
    assert job.fit.soft_relabel.towards == "confusion"


def _multi_label(config: dict, run: list[str]) -> dict:
    config["dataset"]["layout"] = "fsdkaggle2019"
    config["run_chains"] = run
    return config


def test_config_refuses_confusion_in_multi_label_mode_naming_the_key() -> None:
    key = r"chains\.soft_confusion\.soft_relabel\.towards"
    with pytest.raises(ConfigError, match=rf"{key}: confusion is single-label"):
        resolve_settings(_multi_label(_config(), ["self_verification", "soft_confusion"]))
    resolve_settings(_multi_label(_config(), ["self_verification"]))  # defined, not run: free
    # the chain soft_relabel (towards the prior: co-occurrence rows) runs in both modes
    resolve_settings(_multi_label(_config(), ["self_verification", "soft_relabel"]))
    single = _config()
    single["run_chains"] = ["self_verification", "soft_relabel", "soft_confusion"]
    resolve_settings(single)


def test_config_refuses_an_unknown_towards_naming_the_key() -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_settings(_config({"strength": 0.1, "towards": "posterior"}))
    assert "config key chains.warmup.soft_relabel.towards" in str(raised.value), str(raised.value)


def _fine_tune_jobs(workdir: Path, run_chains: list[str]) -> list[dict]:
    """The fine_tune jobs of a dry run of the demo dataset: wildcards, input files, command."""
    workdir.mkdir(parents=True)
    config = {**copy.deepcopy(CONFIG), "run_chains": run_chains}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "-n", "-p", "--cores", "2"]
        + ["--snakefile", str(REPO / "Snakefile"), "--config", "run_preset=demo"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = []
    for block in done.stdout.split("rule fine_tune:")[1:]:
        lines = [line.strip() for line in block.strip("\n").split("\n\n")[0].splitlines()]
        field = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines if ": " in line}
        wildcards = dict(pair.split("=") for pair in field["wildcards"].split(", "))
        jobs.append({**wildcards, "input": field["input"].split(", "), "command": field["Shell command"]})
    return jobs


def test_a_dry_run_gives_the_posteriors_to_the_confusion_chain_only(tmp_path) -> None:
    jobs = _fine_tune_jobs(tmp_path / "run", ["self_verification", "soft_relabel", "soft_confusion"])
    assert {job["chain"] for job in jobs} == {"self_verification", "soft_relabel", "soft_confusion"}
    for job in jobs:
        posteriors = [f for f in job["input"] if f.endswith("valid_posteriors.csv")]
        if job["chain"] != "soft_confusion":
            assert not posteriors and "valid_posteriors" not in job["command"], job
            continue
        trust = f"results/chains/soft_confusion/trust/{job['preset']}"
        previous = f"{trust}/it{int(job['it']) - 1}/valid_posteriors.csv"
        assert posteriors == [previous], job
        assert f'"valid_posteriors": "{previous}"' in job["command"], job
