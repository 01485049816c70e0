"""Label sets (workflow_lib/labels.py) and lwlrap (workflow_lib/metrics.py)."""

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from workflow_lib.labels import join_labels, label_sets, multi_hot, split_labels
from workflow_lib.metrics import lwlrap, per_class_lwlrap


def test_label_cells_round_trip():
    assert split_labels("Dog,Bark, Dog") == ["Bark", "Dog"]
    assert split_labels("") == []
    assert join_labels(["b", "a", "b"]) == "a,b"
    matrix = multi_hot(["a,c", "b", ""], ["a", "b", "c"])
    assert matrix.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert label_sets(matrix, ["a", "b", "c"]) == ["a,c", "b", ""]


def test_unknown_label_is_an_error():
    with pytest.raises(KeyError, match="'z'"):
        multi_hot(["a,z"], ["a", "b"])


def test_lwlrap_hand_made_cases():
    # one clip, one true label ranked 3rd of 3: precision 1/3
    assert lwlrap(np.array([[1, 0, 0]]), np.array([[0.1, 0.5, 0.2]])) == pytest.approx(1 / 3)
    # two true labels ranked 1st and 3rd: (1/1 + 2/3) / 2
    assert lwlrap(np.array([[1, 0, 1]]), np.array([[0.9, 0.5, 0.1]])) == pytest.approx((1 + 2 / 3) / 2)
    # label-weighted: clip A (2 labels, both perfect) counts twice as much as clip B (1 label at rank 2)
    truth = np.array([[1, 1, 0], [0, 0, 1]])
    scores = np.array([[0.9, 0.8, 0.1], [0.1, 0.9, 0.5]])
    assert lwlrap(truth, scores) == pytest.approx((1 + 1 + 0.5) / 3)
    per_class, weights = per_class_lwlrap(truth, scores)
    assert per_class.tolist() == pytest.approx([1, 1, 0.5])
    assert weights.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    # ties are pessimistic: a true label tied with a false one is ranked 2nd
    assert lwlrap(np.array([[1, 0]]), np.array([[0.5, 0.5]])) == pytest.approx(0.5)
    assert np.isnan(lwlrap(np.zeros((2, 3)), np.ones((2, 3))))


def test_lwlrap_is_label_weighted_lrap():
    """The identity of the DCASE 2019 reference: lwlrap = LRAP with each clip weighted by its
    number of true labels (scikit-learn as the independent reference)."""
    rng = np.random.default_rng(7)
    truth = rng.random((300, 9)) < 0.25
    truth[truth.sum(axis=1) == 0, 3] = True
    scores = rng.random((300, 9))
    scores[::5] = np.round(scores[::5], 1)  # with ties
    expected = label_ranking_average_precision_score(truth, scores, sample_weight=truth.sum(axis=1))
    assert lwlrap(truth, scores) == pytest.approx(expected)
    per_class, weights = per_class_lwlrap(truth, scores)
    assert np.nansum(per_class * weights) == pytest.approx(expected)
