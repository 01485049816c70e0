"""Soft relabelling's target arithmetic (workflow_lib/soft_targets.py, issue 22 item 2).

What is checked: the co-occurrence table against a hand computation; multi-label soft targets
stay in [0, 1], keep labelled classes at 1 and agree with a hand computation; single-label soft
targets sum to 1 and keep the true class at >= 1 - strength; strength 0 is the identity;
strengths outside [0, 1] are refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from workflow_lib.soft_targets import class_prior, cooccurrence, multilabel_soft_targets, prior_smoothing

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
