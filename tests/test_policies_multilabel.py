"""Self-verification per label (multi-label mode, dataset.layout fsdkaggle2019).

Hand-made sigmoid posteriors and hand-built decision tables: each given label of a noisy clip
is judged on its own (workflow_lib/policies.py, multi-label section), the per-class caps rank
(clip, label) pairs, the precision table counts labels against the true sets, the next
training list carries each noisy clip's trusted subset; a tiny on-disk run of
stages.self_verify_job checks the files it writes; config.py refuses single-label-only
policies in multi-label mode.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from workflow_lib.config import ConfigError, resolve_settings
from workflow_lib.dataset import TOTAL_ROW
from workflow_lib.job_settings import smooths_towards_confusion
from workflow_lib.labels import split_labels
from workflow_lib.policies import (
    ACCEPTED,
    BELOW_THRESHOLD,
    CLASS_CAP,
    COMMON_KEYS,
    FLAGGED,
    LABEL_DECISION_COLUMNS,
    NOT_PREDICTED,
    NOT_TRUSTED,
    Clips,
    Context,
    PolicySettings,
    apply_policy,
    apply_sigmoid_temperature,
    calibrated_sigmoids,
    fit_sigmoid_temperature,
    multilabel_label_issues,
    names_for,
    policy_named,
)
from workflow_lib.self_verify import (
    TrustSettings,
    excerpt_posteriors,
    label_precision_table,
    new_label_list,
    self_verify,
    with_truth,
)
from workflow_lib.task import MULTI, SINGLE

CLASSES = ["a", "b", "c", "d"]


def clips(rows: list[tuple[str, int, str, list[float]]]) -> Clips:
    """(fname, fold, given set, sigmoids per class) -> judged clips."""
    table = pd.DataFrame(
        {"fname": [r[0] for r in rows], "fold": [r[1] for r in rows], "given_label": [r[2] for r in rows]}
    )
    return Clips(table, np.array([r[3] for r in rows], dtype=np.float64))


def policy(name: str, **values) -> PolicySettings:
    own = {k: v for k, v in values.items() if k in policy_named(name).keys or k in COMMON_KEYS}
    return PolicySettings.of(name, **{"max_per_class": None, **own})


def decided(
    judged: Clips, name: str, context: Context | None = None, reference=None, **values
) -> pd.DataFrame:
    context = context or Context()
    return apply_policy(judged, reference, CLASSES, policy(name, **values), context, task=MULTI)


def by_pair(decisions: pd.DataFrame, column: str) -> dict[tuple[str, str], object]:
    return dict(zip(zip(decisions["fname"], decisions["label"]), decisions[column]))


def random_judged(n: int, seed: int, folds: int = 2) -> Clips:
    """n noisy clips with 1-3 given labels and random sigmoids leaning towards the given ones."""
    rng = np.random.default_rng(seed)
    given = [sorted(rng.choice(CLASSES, size=int(rng.integers(1, 4)), replace=False)) for _ in range(n)]
    logits = rng.normal(scale=1.5, size=(n, len(CLASSES)))
    for i, labels in enumerate(given):
        logits[i, [CLASSES.index(x) for x in labels]] += rng.normal(1.0, 1.5, size=len(labels))
    table = pd.DataFrame(
        {
            "fname": [f"n{i:04d}.wav" for i in range(n)],
            "fold": rng.integers(0, folds, n),
            "given_label": [",".join(g) for g in given],
        }
    )
    return Clips(table, 1 / (1 + np.exp(-logits)))


# --- one row per (clip, given label) -----------------------------------------------------------


def test_every_given_label_is_judged_on_its_own_score():
    judged = clips(
        [
            ("x.wav", 0, "a,b", [0.9, 0.3, 0.7, 0.1]),
            ("y.wav", 1, "c", [0.2, 0.2, 0.6, 0.8]),
            ("z.wav", 1, "a,c,d", [0.55, 0.1, 0.95, 0.4]),
        ]
    )
    out = decided(judged, "paper", threshold=0.7)
    assert list(out.columns) == LABEL_DECISION_COLUMNS
    assert list(zip(out["fname"], out["label"])) == [
        ("x.wav", "a"),
        ("x.wav", "b"),
        ("y.wav", "c"),
        ("z.wav", "a"),
        ("z.wav", "c"),
        ("z.wav", "d"),
    ]
    assert list(out["given_label"]) == ["a,b", "a,b", "c", "a,c,d", "a,c,d", "a,c,d"]
    assert list(out["fold"]) == [0, 0, 1, 1, 1, 1]
    np.testing.assert_allclose(out["score"], [0.9, 0.3, 0.6, 0.55, 0.95, 0.4])
    # the predicted set: every class whose sigmoid reaches 0.5 (given or not)
    assert list(out["predicted_label"]) == ["a,c", "a,c", "c,d", "a,c", "a,c", "a,c"]
    reason = by_pair(out, "reason")
    assert reason == {
        ("x.wav", "a"): ACCEPTED,
        ("x.wav", "b"): NOT_PREDICTED,
        ("y.wav", "c"): BELOW_THRESHOLD,
        ("z.wav", "a"): BELOW_THRESHOLD,
        ("z.wav", "c"): ACCEPTED,
        ("z.wav", "d"): NOT_PREDICTED,
    }
    assert ((out["reason"] == ACCEPTED) == out["accepted"]).all()
    assert out["accepted"].dtype == bool
    # a clip is trusted with a subset of its given labels
    assert set(out.loc[out["accepted"] & (out["fname"] == "z.wav"), "label"]) == {"c"}


@pytest.mark.parametrize("score, accepted", [(0.7, True), (0.7 - 1e-9, False), (0.7 + 1e-9, True)])
def test_paper_threshold_boundary(score, accepted):
    out = decided(clips([("x.wav", 0, "b", [0.1, score, 0.1, 0.1])]), "paper", threshold=0.7)
    assert bool(out["accepted"].iloc[0]) is accepted


def test_paper_without_threshold_and_agreement_trust_the_predicted_labels():
    judged = random_judged(60, seed=1)
    agreement = decided(judged, "agreement")
    paper_off = decided(judged, "paper", threshold=None)
    pd.testing.assert_frame_equal(agreement, paper_off)
    # agreement = the label is in the clip's predicted set (sigmoid >= 0.5), computed directly
    index = {c: i for i, c in enumerate(CLASSES)}
    rows = judged.table.set_index("fname")
    expected = [
        judged.posteriors[rows.index.get_loc(f), index[label]] >= 0.5
        for f, label in zip(agreement["fname"], agreement["label"])
    ]
    assert list(agreement["accepted"]) == expected
    assert all(
        (label in split_labels(pred)) == ok
        for label, pred, ok in zip(agreement["label"], agreement["predicted_label"], agreement["accepted"])
    )
    assert 0 < agreement["accepted"].sum() < len(agreement)


@pytest.mark.parametrize("iteration, expected", [(0, 0.5), (1, 0.7), (2, 0.9)])
def test_scheduled_threshold_is_paper_with_the_iterations_threshold(iteration, expected):
    judged = random_judged(80, seed=2)
    scheduled = decided(
        judged, "scheduled_threshold", Context(iteration, 3), threshold_start=0.5, threshold_end=0.9
    )
    paper = decided(judged, "paper", threshold=expected)
    pd.testing.assert_frame_equal(scheduled, paper)
    assert (scheduled.loc[scheduled["accepted"], "score"] >= expected - 1e-12).all()


def test_all_and_none():
    judged = random_judged(20, seed=3)
    every = decided(judged, "all")
    nothing = decided(judged, "none")
    n_labels = sum(len(split_labels(c)) for c in judged.table["given_label"])
    assert len(every) == len(nothing) == n_labels
    assert every["accepted"].all() and (every["weight"] == 1.0).all()
    assert not nothing["accepted"].any() and (nothing["reason"] == NOT_TRUSTED).all()
    assert (nothing["weight"] == 0.0).all()


def test_decisions_do_not_depend_on_row_order():
    judged = random_judged(50, seed=4)
    first = decided(judged, "paper", threshold=0.6, max_per_class=5)
    order = np.random.default_rng(0).permutation(len(judged.table))
    shuffled = Clips(judged.table.iloc[order].reset_index(drop=True), judged.posteriors[order])
    second = decided(shuffled, "paper", threshold=0.6, max_per_class=5)
    key = ["fname", "label"]
    pd.testing.assert_frame_equal(
        first.sort_values(key).reset_index(drop=True), second.sort_values(key).reset_index(drop=True)
    )


@pytest.mark.parametrize("name", ["label_spreading", "weighted", "no_such_policy"])
def test_a_single_label_only_policy_is_refused_by_name(name):
    with pytest.raises(ValueError, match=name):
        decided(random_judged(5, seed=5), name)


def test_single_label_mode_is_untouched_by_the_flag():
    """The single-label task (the default) still gives one row per clip under the argmax rule."""
    table = pd.DataFrame({"fname": ["u.wav", "v.wav"], "fold": [0, 1], "given_label": ["a", "b"]})
    posteriors = np.array([[0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1]])
    out = apply_policy(Clips(table, posteriors), None, CLASSES, policy("paper", threshold=0.5))
    assert list(out["accepted"]) == [True, False] and "label" not in out


# --- caps per class over (clip, label) pairs ------------------------------------------------------


def test_the_cap_keeps_the_highest_scores_of_each_class_separately():
    judged = clips(
        [
            ("p.wav", 0, "a,b", [0.95, 0.61, 0.1, 0.1]),
            ("q.wav", 1, "a,b", [0.80, 0.99, 0.1, 0.1]),
            ("r.wav", 0, "a", [0.90, 0.10, 0.1, 0.1]),
            ("s.wav", 1, "a,b", [0.30, 0.75, 0.1, 0.1]),  # a refused: must not use up a's cap
        ]
    )
    out = decided(judged, "paper", threshold=0.6, max_per_class=2)
    reason = by_pair(out, "reason")
    assert reason[("p.wav", "a")] == ACCEPTED and reason[("r.wav", "a")] == ACCEPTED
    assert reason[("q.wav", "a")] == CLASS_CAP
    assert reason[("s.wav", "a")] == NOT_PREDICTED
    assert reason[("q.wav", "b")] == ACCEPTED and reason[("s.wav", "b")] == ACCEPTED
    assert reason[("p.wav", "b")] == CLASS_CAP
    # q keeps b although its a hit the cap: a subset again
    assert set(out.loc[out["accepted"] & (out["fname"] == "q.wav"), "label"]) == {"b"}


def test_cap_ties_go_to_the_smaller_file_name():
    judged = clips([(f"{n}.wav", 0, "c", [0.1, 0.1, 0.8, 0.1]) for n in ("m", "k", "z", "b")])
    out = decided(judged, "all", max_per_class=2)
    assert set(out.loc[out["accepted"], "fname"]) == {"b.wav", "k.wav"}


def test_the_fraction_cap_counts_the_class_judged_labels():
    # class a is given on 5 clips, class b on 2: max_fraction 0.5 -> 2 a's, 1 b
    rows = [
        (f"c{i}.wav", 0, "a,b" if i < 2 else "a", [0.5 + 0.05 * i, 0.9 - 0.1 * i, 0, 0]) for i in range(5)
    ]
    out = decided(clips(rows), "all", max_fraction=0.5)
    accepted = out[out["accepted"]]
    assert sorted(zip(accepted["fname"], accepted["label"])) == [
        ("c0.wav", "b"),
        ("c3.wav", "a"),
        ("c4.wav", "a"),
    ]


# --- calibrated: per-fold temperature on logit(p), fitted with BCE ----------------------------


def synthetic_sigmoids(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets drawn from sigmoid(z); the model reports sigmoid(z * temperature), i.e. its
    logits are ``temperature`` times too large: the fitted temperature should recover it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, len(CLASSES)))
    targets = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return 1 / (1 + np.exp(-z * temperature)), targets


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_fit_sigmoid_temperature_recovers_an_overconfidence(temperature):
    posteriors, targets = synthetic_sigmoids(4000, temperature, seed=7)
    assert fit_sigmoid_temperature(posteriors, targets) == pytest.approx(temperature, rel=0.08)


def test_fit_sigmoid_temperature_minimises_the_bce():
    posteriors, targets = synthetic_sigmoids(300, 1.7, seed=8)
    fitted = fit_sigmoid_temperature(posteriors, targets)

    def bce(t: float) -> float:
        p = np.clip(apply_sigmoid_temperature(posteriors, t), 1e-12, 1 - 1e-12)
        return float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean())

    assert all(bce(fitted) <= bce(t) + 1e-9 for t in np.linspace(0.3, 5.0, 60))
    assert fit_sigmoid_temperature(np.zeros((0, 4)), np.zeros((0, 4))) == 1.0
    np.testing.assert_allclose(apply_sigmoid_temperature(posteriors, 1.0), posteriors, atol=1e-6)


def reference_clips(n_per_fold: int, temperature: float, seed: int) -> Clips:
    rng = np.random.default_rng(seed)
    posteriors, targets = synthetic_sigmoids(2 * n_per_fold, temperature, seed)
    cells = [",".join(c for c, t in zip(CLASSES, row) if t) for row in targets]
    table = pd.DataFrame(
        {
            "fname": [f"v{i:04d}.wav" for i in range(len(cells))],
            "fold": np.repeat([0, 1], n_per_fold),
            "label": cells,
        }
    )
    keep = table["label"] != ""
    del rng
    return Clips(table[keep].reset_index(drop=True), posteriors[keep.to_numpy()])


def test_calibration_is_per_fold_and_never_looks_at_the_judged_clips():
    judged = random_judged(40, seed=9)
    # fold 0's reference is over-confident (T 2), fold 1's under-confident (T 0.5)
    ref0, ref1 = reference_clips(800, 2.0, seed=10), reference_clips(800, 0.5, seed=11)
    reference = Clips(
        pd.concat(
            [ref0.table[ref0.table["fold"] == 0], ref1.table[ref1.table["fold"] == 1]], ignore_index=True
        ),
        np.concatenate([ref0.posteriors[ref0.table["fold"] == 0], ref1.posteriors[ref1.table["fold"] == 1]]),
    )
    calibrated, temperatures = calibrated_sigmoids(judged, reference, CLASSES)
    assert temperatures[0] == pytest.approx(2.0, rel=0.15)
    assert temperatures[1] == pytest.approx(0.5, rel=0.15)
    for fold, t in temperatures.items():
        rows = judged.fold_rows(fold)
        np.testing.assert_allclose(calibrated[rows], apply_sigmoid_temperature(judged.posteriors[rows], t))
    # other judged posteriors: the same temperatures
    other = Clips(judged.table, np.clip(judged.posteriors[::-1].copy(), 0.01, 0.99))
    assert calibrated_sigmoids(other, reference, CLASSES)[1] == temperatures
    # a judged clip among the calibration clips is an error
    leaked = Clips(reference.table.rename(columns={"label": "given_label"}), reference.posteriors)
    with pytest.raises(ValueError, match="must not be judged"):
        calibrated_sigmoids(leaked, reference, CLASSES)


def test_calibrated_is_paper_on_the_calibrated_scores():
    judged = random_judged(40, seed=12)
    reference = reference_clips(300, 2.0, seed=13)
    out = decided(judged, "calibrated", reference=reference, threshold=0.7)
    calibrated, _ = calibrated_sigmoids(judged, reference, CLASSES)
    expected = decided(Clips(judged.table, calibrated), "paper", threshold=0.7)
    pd.testing.assert_frame_equal(out, expected)
    with pytest.raises(ValueError, match="curated validation"):
        decided(judged, "calibrated", threshold=0.7)


# --- confident learning: cleanlab's multi-label issues per class --------------------------------


def test_confident_learning_trusts_the_labels_cleanlab_does_not_flag():
    judged = random_judged(120, seed=14)
    out = decided(judged, "confident_learning")
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class

    labels = [[CLASSES.index(x) for x in split_labels(c)] for c in judged.table["given_label"]]
    direct = find_multilabel_issues_per_class(labels=labels, pred_probs=judged.posteriors)
    direct = np.asarray(direct).T if isinstance(direct, list) else np.asarray(direct)  # (n, K)
    row = {f: i for i, f in enumerate(judged.table["fname"])}
    flagged = [bool(direct[row[f], CLASSES.index(lab)]) for f, lab in zip(out["fname"], out["label"])]
    assert list(out["reason"] == FLAGGED) == flagged
    assert list(out["accepted"]) == [not f for f in flagged]
    assert 0 < sum(flagged) < len(out)
    assert multilabel_label_issues(pd.Series([], dtype=str), np.zeros((0, 4)), CLASSES).shape == (0, 4)


# --- truth, precision table, training list --------------------------------------------------------


@pytest.fixture
def hand_decisions() -> pd.DataFrame:
    """Three noisy clips; true sets: x {a,b}, y {a,c}, z {b}."""
    rows = [
        # fname, given, label, accepted
        ("x.wav", "a,b", "a", True),
        ("x.wav", "a,b", "b", False),
        ("y.wav", "a,b", "a", True),
        ("y.wav", "a,b", "b", True),  # wrong label trusted
        ("z.wav", "b,c", "b", True),
        ("z.wav", "b,c", "c", False),  # wrong label refused
    ]
    table = pd.DataFrame(rows, columns=["fname", "given_label", "label", "accepted"])
    truth = pd.Series({"x.wav": "a,b", "y.wav": "a,c", "z.wav": "b", "cur.wav": "d"})
    return with_truth(table.assign(weight=np.where(table["accepted"], 1.0, 0.0)), truth, MULTI)


def test_with_truth_marks_each_label_against_the_true_set(hand_decisions):
    assert list(hand_decisions["correct"]) == [1, 1, 1, 0, 1, 0]
    assert list(hand_decisions["true_label"]) == ["a,b", "a,b", "a,c", "a,c", "b", "b"]
    partial = with_truth(
        hand_decisions.drop(columns=["true_label", "correct"]), pd.Series({"x.wav": "a"}), MULTI
    )
    assert "correct" not in partial and "true_label" not in partial  # unknown for y and z


def test_label_precision_table_counts_labels_against_the_true_sets(hand_decisions):
    table = label_precision_table(hand_decisions, ["a", "b", "c", "d"]).set_index("label")
    assert list(table.index) == ["a", "b", "c", "d", TOTAL_ROW]
    a, b, c, d, total = (table.loc[x] for x in ["a", "b", "c", "d", TOTAL_ROW])
    assert (a["n_unverified"], a["n_accepted"], a["n_accepted_correct"], a["n_correct"]) == (2, 2, 2, 2)
    assert a["precision"] == 1.0 and a["recall"] == 1.0 and a["n_true"] == 2 and a["true_recall"] == 1.0
    # b: given on x, y, z; true on x, z; trusted on y (wrong) and z (right)
    assert (b["n_unverified"], b["n_accepted"], b["n_accepted_correct"], b["n_correct"]) == (3, 2, 1, 2)
    assert b["precision"] == 0.5 and b["recall"] == 0.5
    assert b["unverified_precision"] == pytest.approx(2 / 3)
    # c: given on z (wrong); true on y where it was not given: no policy could trust it
    assert (c["n_unverified"], c["n_accepted"], c["n_correct"], c["n_true"]) == (1, 0, 0, 1)
    assert math.isnan(c["precision"]) and math.isnan(c["recall"]) and c["true_recall"] == 0.0
    assert d["n_unverified"] == 0 and d["n_true"] == 0 and math.isnan(d["true_recall"])
    assert (total["n_unverified"], total["n_accepted"], total["n_accepted_correct"]) == (6, 4, 3)
    assert total["precision"] == 0.75 and total["recall"] == 0.75
    assert total["unverified_precision"] == pytest.approx(4 / 6)
    assert total["n_true"] == 5 and total["true_recall"] == pytest.approx(3 / 5)


def test_label_precision_table_without_true_labels(hand_decisions):
    table = label_precision_table(hand_decisions.drop(columns=["true_label", "correct"]), CLASSES)
    assert list(table.columns) == ["label", "n_unverified", "n_accepted"]
    assert table.set_index("label").loc[TOTAL_ROW, "n_accepted"] == 4
    empty = label_precision_table(hand_decisions.iloc[:0], CLASSES)
    assert list(empty["n_unverified"]) == [0] * 5


def test_new_label_list_keeps_curated_sets_and_trusted_subsets(hand_decisions):
    folds = pd.DataFrame(
        {
            "fname": ["cur.wav", "x.wav", "y.wav", "z.wav", "w.wav"],
            "label": ["a,d", "a,b", "a,b", "b,c", "c"],
            "verified": ["1", "0", "0", "0", "0"],
            "fold": ["0", "0", "1", "1", "0"],
        }
    )
    decisions = hand_decisions.copy()
    decisions.loc[decisions["fname"] == "z.wav", "accepted"] = False  # nothing of z trusted
    listing = new_label_list(folds, decisions)
    assert list(listing.columns) == ["fname", "label", "manually_verified", "weight"]
    assert list(listing["fname"]) == list(folds["fname"])
    assert list(listing["label"]) == ["a,d", "a", "a,b", "b,c", "c"]
    assert list(listing["manually_verified"]) == [1, 1, 1, 0, 0]
    assert list(listing["weight"]) == [1.0, 1.0, 1.0, 0.0, 0.0]
    # recomputed from the original listing every time: nothing accumulates
    none = new_label_list(folds, decisions.assign(accepted=False))
    assert list(none["manually_verified"]) == [1, 0, 0, 0, 0]


# --- judging with sigmoids ---------------------------------------------------------------------


class ConstantNet(torch.nn.Module):
    """Logits that depend on the clip (its constant value) and not on the excerpt."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)
        self.n_classes = self.logits.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.mean(dim=(1, 2, 3)).round().long()
        return self.logits[ids]


def settings(**values) -> TrustSettings:
    base = {
        "task": MULTI,
        "excerpts": 3,
        "policy": PolicySettings.of("paper", threshold=0.7, max_per_class=None),
        "excerpt_frames": 6,
        "seed": 1,
        "amp": False,
    }
    return TrustSettings(**{**base, **values})


def bank(ids: list[int]):
    from workflow_lib.data import ClipBank

    parts = [np.full((12, 8), float(i), np.float32) for i in ids]
    lengths = torch.tensor([12] * len(ids))
    offsets = torch.arange(len(ids)) * 12
    return ClipBank(torch.from_numpy(np.concatenate(parts)), offsets, lengths, 12)


def test_excerpt_posteriors_are_sigmoids_in_multi_label_mode():
    logits = np.array([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]])
    net = ConstantNet(logits)
    multi = excerpt_posteriors(net, bank([0, 1]), settings(), np.random.default_rng(0))
    np.testing.assert_allclose(multi, 1 / (1 + np.exp(-logits)), atol=1e-6)
    single = excerpt_posteriors(net, bank([0, 1]), settings(task=SINGLE), np.random.default_rng(0))
    np.testing.assert_allclose(single.sum(axis=1), 1.0, atol=1e-6)


def test_self_verify_judges_each_label_with_its_fold_model():
    # fold 0's model: a and b likely; fold 1's: c likely, a not
    logits = np.array([[3.0, 2.0, -3.0, -3.0], [-2.0, -3.0, 3.0, 0.1]])
    models = {0: ConstantNet(logits[[0, 0]]), 1: ConstantNet(logits[[1, 1]])}
    unverified = {
        0: pd.DataFrame({"fname": ["f0.wav", "f1.wav"], "label": ["a,b", "c"], "fold": ["0", "0"]}),
        1: pd.DataFrame({"fname": ["g0.wav"], "label": ["a,c"], "fold": ["1"]}),
    }
    banks = {0: bank([0, 1]), 1: bank([0])}
    out = self_verify(models, banks, unverified, CLASSES, settings())
    assert list(out.columns) == LABEL_DECISION_COLUMNS
    accepted = by_pair(out, "accepted")
    assert accepted == {
        ("f0.wav", "a"): True,
        ("f0.wav", "b"): True,
        ("f1.wav", "c"): False,
        ("g0.wav", "a"): False,
        ("g0.wav", "c"): True,
    }
    assert by_pair(out, "predicted_label")[("g0.wav", "c")] == "c,d"


# --- the job: files written ---------------------------------------------------------------------


def write_store(tmp: Path, names: list[str], frames: int = 200) -> Path:
    from workflow_lib.io import write_csv

    manifest = pd.DataFrame(
        {
            "fname": names,
            "status": "clipped",
            "shard": 0,
            "n_frames": frames,
            "offset": np.arange(len(names)) * frames,
        }
    )
    (tmp / "manifest").mkdir()
    rng = np.random.default_rng(0)
    np.save(
        tmp / "manifest" / "shard0.npy", rng.normal(size=(1, 128, frames * len(names))).astype(np.float32)
    )
    write_csv(manifest, tmp / "manifest.csv")
    return tmp / "manifest.csv"


def constant_model(path: Path, biases: list[float], multi_label: bool = True) -> Path:
    """A real VGG-GAP file whose logits are ``biases`` whatever the input (last batch norm
    scaled to 0), saved as stages.save_model does."""
    from workflow_lib.model import build_model

    model = build_model(1, len(biases), (0.0, 0.0))
    last = model.features[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(biases))
    saved = {"state_dict": model.state_dict(), "width": 1, "classes": CLASSES, "dropout": [0.0, 0.0]}
    if multi_label:
        saved["multi_label"] = True
    torch.save(saved, path)
    return path


@pytest.fixture
def trust_files(tmp_path: Path):
    from workflow_lib.io import write_csv

    folds = pd.DataFrame(
        {
            "fname": ["c0.wav", "c1.wav", "n0.wav", "n1.wav", "n2.wav", "n3.wav"],
            "label": ["a,b", "c", "a,b", "c,d", "a,c", "d"],
            "verified": ["1", "1", "0", "0", "0", "0"],
            "fold": ["0", "1", "0", "0", "1", "1"],
        }
    )
    write_csv(folds, tmp_path / "folds.csv")
    write_csv(pd.DataFrame({"index": range(4), "label": CLASSES}), tmp_path / "classes.csv")
    train = folds.assign(path="", true_label=["a,b", "c", "a,c", "c,d", "a", "b"])
    write_csv(train.drop(columns="fold"), tmp_path / "train.csv")
    manifest = write_store(tmp_path, list(folds["fname"]))
    # fold 0's model: a, c likely; fold 1's: a, d likely
    models = {
        0: constant_model(tmp_path / "m0.pt", [2.0, -2.0, 1.5, -1.0]),
        1: constant_model(tmp_path / "m1.pt", [1.0, -1.0, -2.0, 3.0]),
    }
    return tmp_path, manifest, models


def trust_job(tmp: Path, manifest: Path, models: dict, name: str = "agreement", **policy_values):
    from workflow_lib.stages import TrustJob

    return TrustJob(
        model_paths=models,
        manifest_csv=manifest,
        folds_csv=tmp / "folds.csv",
        classes_csv=tmp / "classes.csv",
        train_csv=tmp / "train.csv",
        out_dir=tmp / "out",
        settings=settings(
            excerpt_frames=192,
            excerpts=2,
            policy=PolicySettings.of(name, max_per_class=None, **policy_values),
            frames=200,
            device="cpu",
        ),
        lock_dir=tmp / "locks",
    )


def test_self_verify_job_writes_label_decisions_and_subsets(trust_files):
    from workflow_lib.io import read_csv_str
    from workflow_lib.stages import self_verify_job

    tmp, manifest, models = trust_files
    decisions = self_verify_job(trust_job(tmp, manifest, models))
    out = tmp / "out"
    written = read_csv_str(out / "decisions.csv")
    assert list(written.columns) == [*LABEL_DECISION_COLUMNS, "true_label", "correct"]
    assert len(written) == len(decisions) == 7  # labels of the four noisy clips
    accepted = {
        (f, lab)
        for f, lab, ok in zip(written["fname"], written["label"], written["accepted"])
        if ok == "True"
    }
    assert accepted == {("n0.wav", "a"), ("n1.wav", "c"), ("n2.wav", "a"), ("n3.wav", "d")}
    assert list(written["correct"]) == ["1", "0", "1", "1", "1", "0", "0"]
    listing = read_csv_str(out / "train_list.csv").set_index("fname")
    assert listing.loc["c0.wav", "label"] == "a,b" and listing.loc["n0.wav", "label"] == "a"
    assert listing.loc["n1.wav", "label"] == "c" and listing.loc["n2.wav", "label"] == "a"
    assert (listing["manually_verified"] == "1").all()
    table = read_csv_str(out / "per_class.csv").set_index("label")
    assert table.loc[TOTAL_ROW, "n_accepted"] == "4" and table.loc[TOTAL_ROW, "n_accepted_correct"] == "3"
    assert float(table.loc[TOTAL_ROW, "precision"]) == 0.75
    posteriors = read_csv_str(out / "posteriors.csv")
    assert list(posteriors.columns) == ["fname", "fold", "given_label", *CLASSES]
    np.testing.assert_allclose(
        posteriors[CLASSES].astype(float).to_numpy()[0],
        1 / (1 + np.exp(-np.array([2.0, -2.0, 1.5, -1.0]))),
        atol=1e-5,
    )


def test_self_verify_job_refuses_a_model_of_the_other_mode(trust_files):
    from workflow_lib.errors import UserError
    from workflow_lib.stages import self_verify_job

    tmp, manifest, models = trust_files
    mixed = {**models, 1: constant_model(tmp / "single.pt", [0.0] * 4, multi_label=False)}
    with pytest.raises(UserError, match="mix single- and multi-label"):
        self_verify_job(trust_job(tmp, manifest, mixed))
    single = {k: constant_model(tmp / f"single{k}.pt", [0.0] * 4, multi_label=False) for k in models}
    with pytest.raises(UserError, match="hold single-label models, but this run is multi-label"):
        self_verify_job(trust_job(tmp, manifest, single))


# --- config: single-label-only policies are refused in multi-label mode --------------------------


@pytest.fixture(scope="module")
def base_config() -> dict:
    return yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())


def multi_label_config(base: dict, chains: dict, run: list[str]) -> dict:
    settings = copy.deepcopy(base)
    settings["dataset"]["layout"] = "fsdkaggle2019"
    settings["chains"].update(chains)
    settings["run_chains"] = run
    return settings


@pytest.mark.parametrize("name", ["label_spreading", "weighted"])
def test_config_refuses_a_single_label_policy_in_multi_label_mode(base_config, name):
    settings = multi_label_config(base_config, {}, ["self_verification", name])
    with pytest.raises(ConfigError, match=rf"chains\.{name}\.policy: {name} is single-label only"):
        resolve_settings(settings)
    # the same chains in single-label mode, and the chain defined but not run: accepted
    single = copy.deepcopy(settings)
    single["dataset"]["layout"] = "fsdkaggle2018"
    resolve_settings(single)
    resolve_settings(multi_label_config(base_config, {}, ["self_verification"]))


def test_config_refuses_label_correction_in_multi_label_mode(base_config):
    chain = {"fix": {"start": "all", "policy": "paper", "correct_labels": True}}
    with pytest.raises(ConfigError, match=r"chains\.fix\.correct_labels: single-label only"):
        resolve_settings(multi_label_config(base_config, chain, ["fix"]))


def test_config_accepts_every_multi_label_policy(base_config):
    # chains with `pool: true` (pseudo_labels) need a pool, which the demo has not
    # (tests/test_pool.py), and soft relabelling towards the confusion rows (soft_confusion) is
    # single-label (tests/test_soft_targets.py); each of their policies is also another chain's
    chains = base_config["chains"]
    run = [
        c
        for c, spec in chains.items()
        if spec["policy"] in names_for(MULTI) and not spec.get("pool") and not smooths_towards_confusion(spec)
    ]
    assert {chains[c]["policy"] for c in run} == set(names_for(MULTI))
    resolve_settings(multi_label_config(base_config, {}, run))


@pytest.mark.parametrize("name", names_for(MULTI))
def test_no_judged_clip_gives_empty_decisions_and_an_unchanged_list(name):
    """A run where no fold holds a noisy clip: empty decisions, the curated list as it was."""
    empty = Clips(pd.DataFrame({"fname": [], "fold": [], "given_label": []}), np.zeros((0, len(CLASSES))))
    reference = Clips(pd.DataFrame({"fname": ["v.wav"], "fold": [0], "label": ["a"]}), np.full((1, 4), 0.5))
    out = decided(empty, name, reference=reference, threshold=0.5, threshold_start=0.5, threshold_end=0.9)
    assert list(out.columns) == LABEL_DECISION_COLUMNS and len(out) == 0
    folds = pd.DataFrame({"fname": ["v.wav", "n.wav"], "label": ["a", "a,b"], "verified": ["1", "0"]})
    listing = new_label_list(folds, with_truth(out, pd.Series({"n.wav": "a"}), MULTI))
    assert list(listing["manually_verified"]) == [1, 0] and list(listing["label"]) == ["a", "a,b"]
