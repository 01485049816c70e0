"""Automatic model selection, fusion, the submission and the evaluation tables
(docs/method.md "Model selection, prediction, fusion, submission" and "Metrics").

MAP@3 itself (hand case and brute force) is tested in tests/test_training.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_lib.evaluation import evaluate_systems, preset_summary, scored_rows
from workflow_lib.fusion import (
    apply_learned_fusion,
    fit_learned_fusion,
    mean_fusion,
    probabilities,
    probability_frame,
    submission,
)
from workflow_lib.io import write_csv
from workflow_lib.metrics import accuracy, map_at_3
from workflow_lib.selection import chosen_iteration, selection_table

HISTORY_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "valid_loss",
    "valid_acc",
    "valid_map3",
    "seconds",
]


# --- selection -------------------------------------------------------------------------------


def history(path: Path, valid_loss: list[float], valid_acc: list[float] | None = None) -> Path:
    """A history.csv with the given validation losses (epochs 1 ... E)."""
    n = len(valid_loss)
    acc = valid_acc if valid_acc is not None else [0.5 + 0.01 * e for e in range(n)]
    frame = pd.DataFrame(
        {
            "epoch": range(1, n + 1),
            "lr": [1e-3] * n,
            "train_loss": [1.0] * n,
            "train_acc": [0.5] * n,
            "valid_loss": valid_loss,
            "valid_acc": acc,
            "valid_map3": [a + 0.02 for a in acc],
            "seconds": [1.0] * n,
        }
    )[HISTORY_COLUMNS]
    write_csv(frame, path)
    return path


def test_selection_takes_each_folds_best_epoch_and_averages(tmp_path):
    h = {
        # iteration 0: fold 0 best at epoch 2 (0.8), fold 1 best at epoch 3 (0.6) -> mean 0.7
        (0, 0): history(tmp_path / "i0f0.csv", [1.0, 0.8, 0.9], [0.1, 0.2, 0.3]),
        (0, 1): history(tmp_path / "i0f1.csv", [1.2, 0.7, 0.6], [0.4, 0.5, 0.6]),
        # iteration 1: fold 0 best 0.5 (epoch 1), fold 1 best 0.7 (epoch 2) -> mean 0.6: chosen
        (1, 0): history(tmp_path / "i1f0.csv", [0.5, 0.55], [0.7, 0.65]),
        (1, 1): history(tmp_path / "i1f1.csv", [0.9, 0.7], [0.8, 0.9]),
        # iteration 2: last epochs are lower than iteration 1's best in fold 0 but mean 0.65
        (2, 0): history(tmp_path / "i2f0.csv", [0.6, 0.45], [0.75, 0.76]),
        (2, 1): history(tmp_path / "i2f1.csv", [0.85, 0.95], [0.85, 0.7]),
    }
    table = selection_table(h)
    assert table["iteration"].tolist() == [0, 1, 2]
    assert table["fold0_best_epoch"].tolist() == [2, 1, 2]
    assert table["fold1_best_epoch"].tolist() == [3, 2, 1]
    np.testing.assert_allclose(table["mean_valid_loss"], [0.7, 0.6, 0.65])
    # the other metrics are read at the same (kept) epoch, not their own best
    np.testing.assert_allclose(table["fold0_valid_acc"], [0.2, 0.7, 0.76])
    np.testing.assert_allclose(table["mean_valid_acc"], [(0.2 + 0.6) / 2, (0.7 + 0.9) / 2, (0.76 + 0.85) / 2])
    np.testing.assert_allclose(table["mean_valid_map3"], table["mean_valid_acc"] + 0.02)
    assert table["chosen"].tolist() == [False, True, False]
    out = tmp_path / "selection.csv"
    write_csv(table, out)
    assert chosen_iteration(out) == 1
    reread = pd.read_csv(out)
    assert reread["chosen"].sum() == 1


def test_selection_ties_go_to_the_earliest_iteration(tmp_path):
    h = {}
    for it, losses in {
        0: ([0.9], [0.9]),
        1: ([0.5, 0.4], [0.6]),
        2: ([0.6], [0.5, 0.4]),
        3: ([0.45], [0.55]),
    }.items():
        for fold, loss in enumerate(losses):
            h[(it, fold)] = history(tmp_path / f"i{it}f{fold}.csv", loss)
    # iterations 1 and 2 both average 0.5 -> the earlier one; 3 also averages 0.5
    table = selection_table(h)
    np.testing.assert_allclose(table["mean_valid_loss"], [0.9, 0.5, 0.5, 0.5])
    assert table.loc[table["chosen"], "iteration"].tolist() == [1]
    write_csv(table, tmp_path / "sel.csv")
    assert chosen_iteration(tmp_path / "sel.csv") == 1


def test_selection_epoch_ties_take_the_first_epoch(tmp_path):
    h = {(0, 0): history(tmp_path / "a.csv", [0.7, 0.3, 0.3, 0.5], [0.1, 0.2, 0.9, 0.4])}
    table = selection_table(h)
    assert table["fold0_best_epoch"].tolist() == [2]
    assert table["fold0_valid_acc"].tolist() == [0.2]


def test_selection_table_is_independent_of_the_mapping_order(tmp_path):
    h = {
        (it, f): history(tmp_path / f"{it}{f}.csv", [1.0 / (it + 1) + 0.1 * f, 0.9])
        for it in range(3)
        for f in range(4)
    }
    reversed_h = dict(reversed(list(h.items())))
    pd.testing.assert_frame_equal(selection_table(h), selection_table(reversed_h))
    assert selection_table(h).loc[lambda t: t["chosen"], "iteration"].tolist() == [2]


# --- fusion and the submission ---------------------------------------------------------------


def random_posteriors(rng, n, c) -> np.ndarray:
    return rng.dirichlet(np.ones(c), size=n)


def test_mean_fusion_is_the_average():
    rng = np.random.default_rng(0)
    stack = np.stack([random_posteriors(rng, 7, 5) for _ in range(3)])
    fused = mean_fusion(stack)
    np.testing.assert_allclose(fused, (stack[0] + stack[1] + stack[2]) / 3)
    np.testing.assert_allclose(fused.sum(axis=1), 1.0)


def test_submission_has_the_top_three_labels_best_first():
    classes = ["Bark", "Cello", "Flute", "Gong"]
    probs = np.array([[0.1, 0.5, 0.15, 0.25], [0.7, 0.05, 0.2, 0.05], [0.0, 0.1, 0.3, 0.6]])
    table = submission(["x.wav", "y.wav", "z.wav"], probs, classes)
    assert list(table.columns) == ["fname", "label"]
    assert table["fname"].tolist() == ["x.wav", "y.wav", "z.wav"]
    assert table["label"].tolist() == ["Cello Gong Flute", "Bark Flute Cello", "Gong Flute Cello"]


def test_submission_round_trips_through_csv(tmp_path):
    rng = np.random.default_rng(1)
    classes = [f"class_{i}" for i in range(6)]
    probs = random_posteriors(rng, 20, 6)
    fnames = [f"{i:08x}.wav" for i in range(20)]
    write_csv(submission(fnames, probs, classes), tmp_path / "submission.csv")
    read = pd.read_csv(tmp_path / "submission.csv", dtype=str)
    assert list(read.columns) == ["fname", "label"]
    for row, p in zip(read["label"], probs):
        labels = row.split(" ")
        assert len(labels) == 3 and len(set(labels)) == 3
        assert labels == [classes[i] for i in np.argsort(-p)[:3]]


def test_probability_frame_round_trip():
    classes = ["b", "a", "c"]
    probs = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    frame = probability_frame(["1.wav", "2.wav"], probs, classes)
    assert list(frame.columns) == ["fname", "b", "a", "c"]
    np.testing.assert_array_equal(probabilities(frame, classes), probs)


def synthetic_models(rng, n=600, c=6):
    """An informative model (peaked on the truth 70 % of the time) and a pure-noise model."""
    targets = rng.integers(0, c, size=n)
    good = random_posteriors(rng, n, c) * 0.5
    hit = rng.random(n) < 0.7
    good[np.arange(n)[hit], targets[hit]] += 1.0
    miss = np.flatnonzero(~hit)
    good[miss, rng.integers(0, c, size=len(miss))] += 1.0
    good /= good.sum(axis=1, keepdims=True)
    noise = random_posteriors(rng, n, c)
    return np.stack([good, noise]), targets


def test_learned_fusion_upweights_the_informative_model():
    rng = np.random.default_rng(4)
    stack, targets = synthetic_models(rng)
    weights, bias = fit_learned_fusion(stack, targets, steps=300, lr=0.05)
    assert weights.shape == (2,) and bias.shape == (6,)
    assert weights[0] > weights[1]
    assert weights[0] > 2 * abs(weights[1])
    fused = apply_learned_fusion(stack, weights, bias)
    best_single = max(accuracy(stack[m], targets) for m in range(2))
    assert accuracy(fused, targets) >= best_single
    # and it generalises to fresh data drawn the same way
    test_stack, test_targets = synthetic_models(np.random.default_rng(5))
    fused_test = apply_learned_fusion(test_stack, weights, bias)
    assert accuracy(fused_test, test_targets) >= accuracy(test_stack[0], test_targets) - 0.01
    assert accuracy(fused_test, test_targets) > accuracy(mean_fusion(test_stack), test_targets) - 0.01


def test_learned_fusion_is_deterministic():
    stack, targets = synthetic_models(np.random.default_rng(6), n=100)
    a = fit_learned_fusion(stack, targets, steps=50, lr=0.05, seed=0)
    b = fit_learned_fusion(stack, targets, steps=50, lr=0.05, seed=0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_apply_learned_fusion_rows_sum_to_one():
    rng = np.random.default_rng(7)
    stack = np.stack([random_posteriors(rng, 9, 4) for _ in range(3)])
    weights, bias = np.array([3.0, -1.0, 200.0]), np.array([0.5, -2.0, 0.0, 1000.0])
    fused = apply_learned_fusion(stack, weights, bias)
    assert fused.shape == (9, 4) and np.isfinite(fused).all()
    np.testing.assert_allclose(fused.sum(axis=1), 1.0)
    # definition: softmax of the weighted sum plus the class bias
    logits = 3.0 * stack[0] - stack[1] + 200.0 * stack[2] + bias
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(fused, expected / expected.sum(axis=1, keepdims=True))


# --- evaluation --------------------------------------------------------------------------------


CLASSES = ["a", "b", "c"]


@pytest.fixture
def test_listing() -> pd.DataFrame:
    # read as read_csv_str reads results/data/test.csv: strings, '' for missing
    return pd.DataFrame(
        {
            "fname": ["p1", "p2", "q1", "q2", "q3", "i1", "i2"],
            "label": ["a", "b", "a", "c", "b", "c", "None"],
            "usage": ["Public", "Public", "Private", "Private", "Private", "Ignored", "Ignored"],
        }
    )


def system_frame(rows: dict[str, list[float]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=CLASSES)
    return frame.rename_axis("fname").reset_index()


@pytest.fixture
def systems() -> dict[str, pd.DataFrame]:
    good = system_frame(
        {
            "p1": [0.7, 0.2, 0.1],  # a: rank 1
            "p2": [0.5, 0.3, 0.2],  # b: rank 2
            "q1": [0.2, 0.3, 0.5],  # a: rank 3
            "q2": [0.1, 0.1, 0.8],  # c: rank 1
            "q3": [0.3, 0.6, 0.1],  # b: rank 1
            "i1": [1.0, 0.0, 0.0],  # Ignored: wrong, never scored
            "i2": [1.0, 0.0, 0.0],
        }
    )
    uniform = system_frame({f: [0.2, 0.3, 0.5] for f in good["fname"]})  # always c, b, a
    return {"good": good, "flat": uniform}


def test_scored_rows_drop_ignored_and_unknown_labels(test_listing):
    rows = scored_rows(test_listing, CLASSES)
    assert rows["fname"].tolist() == ["p1", "p2", "q1", "q2", "q3"]
    unlabelled = pd.DataFrame(
        {"fname": ["x", "y", "z"], "label": ["a", "", "b"], "usage": ["", "", "Ignored"]}
    )
    assert scored_rows(unlabelled, CLASSES)["fname"].tolist() == ["x"]


def test_evaluate_systems_per_set(test_listing, systems):
    scores = evaluate_systems(test_listing, systems, CLASSES)
    assert list(scores.columns) == ["system", "set", "n", "accuracy", "map3"]
    table = scores.set_index(["system", "set"])
    assert table.loc["good", "n"].to_dict() == {"Public": 2, "Private": 3, "Public+Private": 5}
    assert table.loc[("good", "Public"), "accuracy"] == pytest.approx(1 / 2)
    assert table.loc[("good", "Public"), "map3"] == pytest.approx((1 + 1 / 2) / 2)
    assert table.loc[("good", "Private"), "accuracy"] == pytest.approx(2 / 3)
    assert table.loc[("good", "Private"), "map3"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert table.loc[("good", "Public+Private"), "accuracy"] == pytest.approx(3 / 5)
    assert table.loc[("good", "Public+Private"), "map3"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 + 1) / 5)
    # flat: ranks c, b, a for every clip; truths a, b | a, c, b
    assert table.loc[("flat", "Public"), "accuracy"] == 0
    assert table.loc[("flat", "Public"), "map3"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert table.loc[("flat", "Private"), "accuracy"] == pytest.approx(1 / 3)
    assert table.loc[("flat", "Private"), "map3"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)


def test_ignored_rows_do_not_change_the_scores(test_listing, systems):
    scored_only = test_listing[test_listing["usage"] != "Ignored"]
    pd.testing.assert_frame_equal(
        evaluate_systems(test_listing, systems, CLASSES), evaluate_systems(scored_only, systems, CLASSES)
    )


def test_evaluate_systems_agrees_with_the_metrics(test_listing, systems):
    scores = evaluate_systems(test_listing, systems, CLASSES).set_index(["system", "set"])
    rows = scored_rows(test_listing, CLASSES)
    probs = systems["good"].set_index("fname").loc[rows["fname"], CLASSES].to_numpy()
    targets = rows["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    assert scores.loc[("good", "Public+Private"), "map3"] == pytest.approx(map_at_3(probs, targets))


def selection_frame(chosen: int, n_iterations: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "iteration": range(n_iterations),
            "mean_valid_loss": [0.5 - 0.1 * (i == chosen) for i in range(n_iterations)],
            "mean_valid_acc": [0.80 + 0.01 * i for i in range(n_iterations)],
            "mean_valid_map3": [0.85 + 0.01 * i for i in range(n_iterations)],
            "chosen": [i == chosen for i in range(n_iterations)],
        }
    )


def per_class(n_accepted: int, precision: float | None) -> pd.DataFrame:
    row = {"label": "__all__", "n_unverified": 50, "n_accepted": n_accepted}
    if precision is not None:
        row.update(
            n_accepted_correct=round(n_accepted * precision), precision=precision, unverified_precision=0.7
        )
    first = {"label": "a", "n_unverified": 50, "n_accepted": n_accepted}
    return pd.DataFrame([first, row])


def test_preset_summary_uses_the_chosen_iteration_and_the_list_it_was_trained_on():
    scores = pd.DataFrame(
        {
            "system": ["p", "p", "p", "fusion"],
            "set": ["Public", "Private", "Public+Private", "Public+Private"],
            "n": [2, 3, 5, 5],
            "accuracy": [0.5, 0.6, 0.55, 0.9],
            "map3": [0.6, 0.7, 0.65, 0.95],
        }
    )
    tables = {0: per_class(7, 0.9), 1: per_class(11, 0.95)}
    row = preset_summary("p", selection_frame(chosen=2), tables, scores)
    assert row["preset"] == "p" and row["chosen_iteration"] == 2
    assert row["it0_cv_accuracy"] == pytest.approx(0.80)
    assert row["it0_cv_map3"] == pytest.approx(0.85)
    assert row["chosen_cv_accuracy"] == pytest.approx(0.82)
    assert row["chosen_cv_map3"] == pytest.approx(0.87)
    # iteration 2 was fine-tuned on the list self-verified by iteration 1's models
    assert row["self_verified_clips"] == 11
    assert row["self_verified_precision"] == pytest.approx(0.95)
    assert row["test_accuracy"] == pytest.approx(0.55) and row["test_map3"] == pytest.approx(0.65)

    row1 = preset_summary("p", selection_frame(chosen=1), tables, scores)
    assert row1["self_verified_clips"] == 7 and row1["self_verified_precision"] == pytest.approx(0.9)


def test_preset_summary_of_iteration_zero_and_without_truth_or_scores():
    tables = {0: per_class(7, None), 1: per_class(11, None)}
    row0 = preset_summary("p", selection_frame(chosen=0), tables, None)
    assert row0["chosen_iteration"] == 0 and row0["self_verified_clips"] == 0
    assert np.isnan(row0["self_verified_precision"])
    assert "test_accuracy" not in row0
    row2 = preset_summary("p", selection_frame(chosen=2), tables, None)
    assert row2["self_verified_clips"] == 11 and np.isnan(row2["self_verified_precision"])


def test_selection_reads_the_task_from_the_files_columns():
    """A history or selection table says its task: the multi-label selection metric among its
    columns (valid_lwlrap, or mean_valid_lwlrap), which is then maximised, not minimised."""
    from workflow_lib.selection import best_epoch_row, task_of_columns
    from workflow_lib.task import MULTI, SINGLE

    assert task_of_columns(pd.Index(["epoch", "valid_loss"])) is SINGLE
    assert task_of_columns(pd.Index(["valid_loss", "valid_lwlrap"])) is MULTI
    assert task_of_columns(pd.Index(["iteration", "mean_valid_lwlrap"])) is MULTI
    history = pd.DataFrame(
        {"epoch": [1, 2, 3], "valid_loss": [0.3, 0.1, 0.2], "valid_lwlrap": [0.5, 0.6, 0.7]}
    )
    assert int(best_epoch_row(history)["epoch"]) == 3
    assert int(best_epoch_row(history.drop(columns="valid_lwlrap"))["epoch"]) == 2
