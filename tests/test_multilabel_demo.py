"""The multi-label demo, end to end (docs/method.md "Multi-label mode (FSDKaggle2019)"): one real
`snakemake --cores 2` run of the demo in the FSDKaggle2019 layout per test session (the
``multilabel_demo`` fixture, tests/conftest.py: pairs of synthetic sounds, label sets, two
presets, two folds, one self-verification iteration), then its files are read back and checked
against what they claim to hold.

Slow (minutes): deselect with ``-m "not slow"``. To check an existing run directory instead,
set MULTILABEL_DEMO_E2E_DIR to it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow_lib.labels import multi_hot, split_labels
from workflow_lib.metrics import lwlrap

pytestmark = pytest.mark.slow

CHAIN = "chains/self_verification"
USABLE = {"clipped", "fallback_silent", "fallback_sox_failed", "fallback_clipped_all"}


def test_dataset_is_the_2019_layout(multilabel_demo):
    curated = multilabel_demo.csv("demo_data/train_curated.csv")
    noisy = multilabel_demo.csv("demo_data/train_noisy.csv")
    truth = multilabel_demo.csv("demo_data/train_true_labels.csv").set_index("fname")["true_label"]
    assert list(curated.columns) == list(noisy.columns) == ["fname", "labels"]
    assert not set(curated["fname"]) & set(noisy["fname"])
    # every mixture carries two labels; curated sets are true, some noisy sets are not
    for table in (curated, noisy):
        assert all(len(split_labels(cell)) == 2 for cell in table["labels"])
    assert (curated["labels"] == curated["fname"].map(truth)).all()
    wrong = (noisy["labels"] != noisy["fname"].map(truth)).mean()
    noise_rate = multilabel_demo.settings["demo_data"]["noise_rate"]
    assert wrong == pytest.approx(noise_rate, abs=0.02)


def test_listing_classes_and_folds_hold_label_sets(multilabel_demo):
    train = multilabel_demo.csv("data/train.csv")
    classes = multilabel_demo.classes
    noisy = multilabel_demo.csv("demo_data/train_noisy.csv").set_index("fname")["labels"]
    assert set(train.loc[train["verified"] == "0", "fname"]) == set(noisy.index)
    sets = multi_hot(train["label"], classes)  # every label is a known class
    table = multilabel_demo.csv("data/classes.csv").set_index("label")
    assert table.loc[classes, "n_train"].astype(int).tolist() == sets.sum(axis=0).astype(int).tolist()
    folds = multilabel_demo.csv("folds.csv")
    assert sorted(folds["fname"]) == sorted(train["fname"])
    # iterative stratification: every class in every fold; the curated clips (the validation
    # sets of model selection) spread within two clips per class
    pairs = folds.assign(label=folds["label"].str.split(",")).explode("label")
    assert (pd.crosstab(pairs["fold"], pairs["label"]) > 0).all().all()
    curated = pairs[pairs["verified"] == "1"]
    per_fold = pd.crosstab(curated["fold"], curated["label"])
    assert (per_fold.max() - per_fold.min()).max() <= 2


def test_training_history_scores_lwlrap(multilabel_demo):
    for preset in multilabel_demo.presets:
        history = multilabel_demo.numeric(f"initial/all/{preset}/fold0/history.csv")
        assert history.columns[-1] == "valid_lwlrap"
        assert history["valid_lwlrap"].between(0, 1).all()
        assert (history["train_loss"] > 0).all()


def test_trust_decides_per_label(multilabel_demo):
    """One decision per (noisy clip, given label); the next list trusts subsets of given sets."""
    preset = multilabel_demo.presets[0]
    trust = f"{CHAIN}/trust/{preset}/it0"
    decisions = multilabel_demo.csv(f"{trust}/decisions.csv")
    train = multilabel_demo.csv("data/train.csv").set_index("fname")
    noisy = train[train["verified"] == "0"]
    usable = multilabel_demo.csv("spectrograms/v1/train.csv")
    judged = noisy.index.intersection(usable.loc[usable["status"].isin(USABLE), "fname"])
    expected = sorted((f, label) for f in judged for label in split_labels(noisy.loc[f, "label"]))
    assert sorted(zip(decisions["fname"], decisions["label"])) == expected
    assert set(decisions["accepted"]) <= {"True", "False"}
    # the true sets are known (the mixture builder kept them): correct = label in the true set
    truth = train["true_label"]
    correct = [
        int(label in split_labels(truth[f])) for f, label in zip(decisions["fname"], decisions["label"])
    ]
    assert decisions["correct"].astype(int).tolist() == correct

    listing = multilabel_demo.csv(f"{trust}/train_list.csv").set_index("fname")
    accepted = decisions[decisions["accepted"] == "True"].groupby("fname")["label"].apply(sorted)
    for fname, row in listing.iterrows():
        given = split_labels(train.loc[fname, "label"])
        if train.loc[fname, "verified"] == "1":
            assert (row["label"], row["manually_verified"]) == (train.loc[fname, "label"], "1")
        elif fname in accepted.index:
            assert split_labels(row["label"]) == accepted[fname]
            assert set(accepted[fname]) <= set(given) and row["manually_verified"] == "1"
        else:
            assert row["manually_verified"] == "0"

    per_class = multilabel_demo.numeric(f"{trust}/per_class.csv").set_index("label")
    total = per_class.loc["__all__"]
    n_accepted = int((decisions["accepted"] == "True").sum())
    assert int(total["n_accepted"]) == n_accepted
    if n_accepted:
        hits = ((decisions["accepted"] == "True") & (decisions["correct"] == "1")).sum()
        assert total["precision"] == pytest.approx(hits / n_accepted)


def test_submission_is_the_2019_format(multilabel_demo):
    classes = multilabel_demo.classes
    submission = multilabel_demo.csv(f"{CHAIN}/submission.csv")
    test = multilabel_demo.csv("demo_data/test_post_competition.csv")
    assert list(submission.columns) == ["fname", *classes]
    assert sorted(submission["fname"]) == sorted(test["fname"])
    probabilities = submission[classes].astype(float).to_numpy()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    # sigmoids, not a softmax: the rows do not sum to one
    assert not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)


def test_evaluation_lwlrap_is_recomputable_and_beats_chance(multilabel_demo):
    """The reported test lwlrap is lwlrap of the submitted posteriors against the test sets,
    and the trained tagger ranks the true labels far above random scores."""
    classes = multilabel_demo.classes
    submission = multilabel_demo.csv(f"{CHAIN}/submission.csv").set_index("fname")
    test = multilabel_demo.csv("demo_data/test_post_competition.csv").set_index("fname")
    truth = multi_hot(test["labels"], classes)
    scores = submission.loc[test.index, classes].astype(float).to_numpy()
    ours = lwlrap(truth, scores)
    summary = multilabel_demo.numeric(f"{CHAIN}/summary.csv")
    fused = summary[summary["preset"] == "fusion"]
    assert float(fused["test_lwlrap"].iloc[0]) == pytest.approx(ours, abs=1e-6)
    rng = np.random.default_rng(0)
    chance = np.mean([lwlrap(truth, rng.random(scores.shape)) for _ in range(20)])
    assert ours > chance + 0.2, (ours, chance)


def test_systems_table_reports_lwlrap(multilabel_demo):
    systems = multilabel_demo.numeric("systems.csv")
    assert {"test_lwlrap", "cv_lwlrap"} <= set(systems.columns)
    assert "test_accuracy" not in systems.columns
    assert systems["test_lwlrap"].between(0, 1).all()
