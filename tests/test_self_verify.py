"""Self-verification (docs/method.md "Self-verification"): the three conditions, the per-class cap,
the threshold switch, the new training list, the precision table, the K-excerpt posteriors and
the rule that each fold model judges only its own fold's held-out unverified clips.

Fast unit tests: hand-made posteriors, a tiny network and fake fold models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from workflow_lib.data import ClipBank
from workflow_lib.policies import PolicySettings
from workflow_lib.self_verify import (
    ACCEPTED,
    BELOW_THRESHOLD,
    CLASS_CAP,
    DECISION_COLUMNS,
    LABEL_MISMATCH,
    TrustSettings,
    decide,
    excerpt_posteriors,
    new_training_list,
    precision_table,
    self_verify,
)

# --- helpers -------------------------------------------------------------------------------


def judged(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """Rows (fname, given_label, predicted_label, p_given) -> the table decide() expects.

    p_max is p_given when the given label is the argmax, else something larger.
    """
    frame = pd.DataFrame(rows, columns=["fname", "given_label", "predicted_label", "p_given"])
    frame["p_max"] = np.where(
        frame["given_label"] == frame["predicted_label"],
        frame["p_given"],
        np.maximum(frame["p_given"] + 0.01, 0.5),
    )
    return frame


def reasons(decisions: pd.DataFrame) -> dict[str, str]:
    return dict(zip(decisions["fname"], decisions["reason"]))


def accepted_set(decisions: pd.DataFrame) -> set[str]:
    return set(decisions.loc[decisions["accepted"], "fname"])


def check_consistent(decisions: pd.DataFrame) -> None:
    """accepted <=> reason 'accepted'; every reason one of the four."""
    assert decisions["accepted"].dtype == bool
    assert ((decisions["reason"] == ACCEPTED) == decisions["accepted"]).all()
    assert set(decisions["reason"]) <= {ACCEPTED, LABEL_MISMATCH, BELOW_THRESHOLD, CLASS_CAP}


def bank_from_arrays(arrays: list[np.ndarray], frames: int) -> ClipBank:
    """A ClipBank from (n_bins, T) arrays, exactly as ClipBank.from_store lays it out."""
    parts = [a[:, :frames].T for a in arrays]
    lengths = np.array([p.shape[0] for p in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    stacked = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)
    return ClipBank(torch.from_numpy(stacked), torch.from_numpy(offsets), torch.from_numpy(lengths), frames)


def length_fixed(array: np.ndarray, frames: int) -> np.ndarray:
    """docs/method.md "Preprocessing" 5 by hand: tile along time to at least ``frames``, cut at ``frames``."""
    reps = -(-frames // array.shape[1])
    return np.tile(array, (1, reps))[:, :frames]


class TinyNet(nn.Module):
    """A small fully convolutional net with batch norm and dropout (eval mode must be used)."""

    def __init__(self, n_classes: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_classes = n_classes
        self.body = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(6, n_classes, 1),
        )
        # non-trivial running statistics, so train/eval mode would differ
        self.body[1].running_mean.uniform_(-0.5, 0.5)
        self.body[1].running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


class FakeFoldModel(nn.Module):
    """Fold model k: always votes for class ``fold % n_classes``, more confidently for a higher
    clip id. Each input excerpt is constant (the clip's id), so the model records which clips
    it was shown."""

    def __init__(self, fold: int, n_classes: int, strength: float = 6.0):
        super().__init__()
        self.fold, self.n_classes, self.strength = fold, n_classes, strength
        self.seen: list[float] = []
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        ids = x.mean(dim=(1, 2, 3))
        assert torch.allclose(x, ids.view(-1, 1, 1, 1).expand_as(x)), "an excerpt mixed clips"
        self.seen.extend(ids.round().tolist())
        logits = torch.zeros(len(x), self.n_classes)
        logits[:, self.fold % self.n_classes] = self.strength + 0.01 * ids
        return logits


def sv_settings(threshold: float | None = 0.95, max_per_class: int | None = 40, **overrides) -> TrustSettings:
    """The judging settings, and the paper's rule with ``threshold`` and ``max_per_class``."""
    values = {
        "excerpts": 5,
        "excerpt_frames": 8,
        "seed": 7,
        "batch_size": 1000,
        "amp": False,
        "policy": PolicySettings.of("paper", threshold=threshold, max_per_class=max_per_class),
    }
    values.update(overrides)
    return TrustSettings(**values)


# --- decide(): the three conditions --------------------------------------------------------


def test_each_condition_alone_gives_its_reason():
    table = judged(
        [
            ("ok.wav", "dog", "dog", 0.99),  # passes everything
            ("mismatch.wav", "dog", "cat", 0.30),  # argmax is another class
            ("low.wav", "cat", "cat", 0.90),  # argmax, but below 0.95
            ("bird1.wav", "bird", "bird", 0.99),  # bird: two pass, cap 1 -> the lower one capped
            ("bird2.wav", "bird", "bird", 0.97),
        ]
    )
    out = decide(table, threshold=0.95, max_per_class=1)
    check_consistent(out)
    assert reasons(out) == {
        "ok.wav": ACCEPTED,
        "mismatch.wav": LABEL_MISMATCH,
        "low.wav": BELOW_THRESHOLD,
        "bird1.wav": ACCEPTED,
        "bird2.wav": CLASS_CAP,
    }
    assert len(out) == len(table)
    # the input columns are kept
    for column in table.columns:
        pd.testing.assert_series_equal(out[column], table[column])


def test_the_first_failed_condition_is_reported():
    # a mismatching clip is also low: label_mismatch wins
    out = decide(judged([("a.wav", "dog", "cat", 0.10)]), threshold=0.95, max_per_class=40)
    assert reasons(out) == {"a.wav": LABEL_MISMATCH}


def test_rejected_clips_do_not_use_up_the_cap():
    table = judged(
        [
            ("low.wav", "dog", "dog", 0.90),  # below the threshold
            ("wrong.wav", "dog", "cat", 0.45),  # mismatch
            ("good.wav", "dog", "dog", 0.96),
        ]
    )
    out = decide(table, threshold=0.95, max_per_class=1)
    assert reasons(out) == {"low.wav": BELOW_THRESHOLD, "wrong.wav": LABEL_MISMATCH, "good.wav": ACCEPTED}


def test_cap_keeps_the_highest_posteriors_of_each_class_separately():
    rng = np.random.default_rng(0)
    dog = [(f"dog{i}.wav", "dog", "dog", p) for i, p in enumerate([0.96, 0.999, 0.97, 0.995, 0.98])]
    cat = [(f"cat{i}.wav", "cat", "cat", p) for i, p in enumerate([0.951, 0.96])]
    rows = dog + cat
    table = judged([rows[i] for i in rng.permutation(len(rows))])
    out = decide(table, threshold=0.95, max_per_class=2)
    check_consistent(out)
    # dog: the two highest (0.999, 0.995) are kept, the other three hit the cap
    assert accepted_set(out) == {"dog1.wav", "dog3.wav", "cat0.wav", "cat1.wav"}
    assert {f for f, r in reasons(out).items() if r == CLASS_CAP} == {"dog0.wav", "dog2.wav", "dog4.wav"}
    # per class: dog's full cap does not stop cat
    counts = out[out["accepted"]].groupby("given_label").size().to_dict()
    assert counts == {"dog": 2, "cat": 2}


def test_cap_ties_are_broken_by_file_name():
    rows = [("b.wav", "dog", "dog", 0.97), ("a.wav", "dog", "dog", 0.97), ("c.wav", "dog", "dog", 0.97)]
    out = decide(judged(rows), threshold=0.95, max_per_class=2)
    assert accepted_set(out) == {"a.wav", "b.wav"}
    assert reasons(out)["c.wav"] == CLASS_CAP


def test_threshold_none_reproduces_the_authors_script():
    """No threshold: ranking and cap only; a low-posterior argmax match is accepted."""
    table = judged(
        [
            ("low_match.wav", "dog", "dog", 0.12),  # argmax of a flat posterior: accepted
            ("mismatch.wav", "dog", "cat", 0.40),  # still rejected
            ("cat_a.wav", "cat", "cat", 0.30),
            ("cat_b.wav", "cat", "cat", 0.55),
            ("cat_c.wav", "cat", "cat", 0.20),  # lowest of three cats, cap 2 -> capped
        ]
    )
    out = decide(table, threshold=None, max_per_class=2)
    check_consistent(out)
    assert reasons(out) == {
        "low_match.wav": ACCEPTED,
        "mismatch.wav": LABEL_MISMATCH,
        "cat_a.wav": ACCEPTED,
        "cat_b.wav": ACCEPTED,
        "cat_c.wav": CLASS_CAP,
    }
    assert BELOW_THRESHOLD not in set(out["reason"])
    # the same table with the threshold on: the low ones are rejected for it
    on = decide(table, threshold=0.95, max_per_class=2)
    assert accepted_set(on) == set()
    assert reasons(on)["low_match.wav"] == BELOW_THRESHOLD


@pytest.mark.parametrize(
    "p, accepted",
    [
        (0.949, False),
        (0.9499999, False),
        (float(np.nextafter(0.95, 0.0)), False),
        (0.95, True),
        (float(np.nextafter(0.95, 1.0)), True),
        (1.0, True),
    ],
)
def test_threshold_boundary(p, accepted):
    out = decide(judged([("x.wav", "dog", "dog", p)]), threshold=0.95, max_per_class=40)
    assert bool(out["accepted"].iloc[0]) is accepted
    assert out["reason"].iloc[0] == (ACCEPTED if accepted else BELOW_THRESHOLD)


def test_threshold_boundary_on_an_averaged_posterior():
    """0.95 reached as an average of excerpt posteriors (as excerpt_posteriors computes it)."""
    p_exact = np.mean([0.9, 1.0])  # 0.95 exactly in float64
    p_below = np.mean([0.9, 0.9999998])  # 0.9499999
    out = decide(
        judged([("exact.wav", "dog", "dog", p_exact), ("below.wav", "dog", "dog", p_below)]),
        threshold=0.95,
        max_per_class=40,
    )
    assert reasons(out) == {"exact.wav": ACCEPTED, "below.wav": BELOW_THRESHOLD}


def test_decisions_do_not_depend_on_row_order():
    rng = np.random.default_rng(3)
    labels = ["a", "b", "c"]
    rows = []
    for i in range(60):
        given = labels[rng.integers(3)]
        predicted = given if rng.random() < 0.7 else labels[rng.integers(3)]
        p = float(rng.choice([0.9, 0.96, 0.97, 0.99]))  # many ties at the cap
        rows.append((f"{i:03d}.wav", given, predicted, p))
    table = judged(rows)
    reference = decide(table, threshold=0.95, max_per_class=4).set_index("fname").sort_index()
    assert reference["accepted"].sum() > 0 and (reference["reason"] == CLASS_CAP).sum() > 0
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(table))
        for shuffled in (table.iloc[order], table.iloc[order].reset_index(drop=True)):
            out = decide(shuffled, threshold=0.95, max_per_class=4).set_index("fname").sort_index()
            pd.testing.assert_series_equal(out["reason"], reference["reason"])
            pd.testing.assert_series_equal(out["accepted"], reference["accepted"])


# --- the new training list --------------------------------------------------------------------


@pytest.fixture
def folds_table() -> pd.DataFrame:
    # as read_csv_str reads results/folds.csv: every column a string
    return pd.DataFrame(
        {
            "fname": ["v1.wav", "v2.wav", "u1.wav", "u2.wav", "u3.wav", "u4.wav"],
            "label": ["dog", "cat", "dog", "cat", "dog", "cat"],
            "verified": ["1", "1", "0", "0", "0", "0"],
            "fold": ["0", "1", "0", "1", "0", "1"],
        }
    )


def decisions_for(accepted: dict[str, bool]) -> pd.DataFrame:
    return pd.DataFrame({"fname": list(accepted), "accepted": list(accepted.values())})


def test_new_training_list_marks_original_and_accepted_clips(folds_table):
    decisions = decisions_for({"u1.wav": True, "u2.wav": False, "u3.wav": True, "u4.wav": False})
    out = new_training_list(folds_table, decisions)
    assert list(out.columns) == ["fname", "label", "manually_verified", "weight"]  # train.csv layout
    assert dict(zip(out["fname"], out["weight"])) == {
        "v1.wav": 1,
        "v2.wav": 1,
        "u1.wav": 1,
        "u2.wav": 0,
        "u3.wav": 1,
        "u4.wav": 0,
    }
    assert sorted(out["fname"]) == sorted(folds_table["fname"]) and out["fname"].is_unique
    flags = dict(zip(out["fname"], out["manually_verified"]))
    assert flags == {"v1.wav": 1, "v2.wav": 1, "u1.wav": 1, "u2.wav": 0, "u3.wav": 1, "u4.wav": 0}
    # the given labels are kept as they are
    assert dict(zip(out["fname"], out["label"])) == dict(zip(folds_table["fname"], folds_table["label"]))


def test_new_training_list_is_recomputed_from_the_original_list(folds_table):
    first = new_training_list(
        folds_table, decisions_for({"u1.wav": True, "u2.wav": True, "u3.wav": False, "u4.wav": False})
    )
    second = new_training_list(
        folds_table, decisions_for({"u1.wav": False, "u2.wav": True, "u3.wav": True, "u4.wav": False})
    )
    f1, f2 = (dict(zip(t["fname"], t["manually_verified"])) for t in (first, second))
    assert f1["u1.wav"] == 1 and f2["u1.wav"] == 0  # accepted at i, not at i+1: 0 in i+1's list
    assert f2["u3.wav"] == 1 and f1["u3.wav"] == 0
    assert f1["v1.wav"] == f2["v1.wav"] == 1  # originally verified stay verified
    # the input is not modified (the next iteration starts from the same original)
    assert list(folds_table["verified"]) == ["1", "1", "0", "0", "0", "0"]


def test_new_training_list_with_integer_flags_and_no_decisions(folds_table):
    folds = folds_table.assign(verified=folds_table["verified"].astype(int))
    out = new_training_list(
        folds, pd.DataFrame({"fname": pd.Series(dtype=str), "accepted": pd.Series(dtype=bool)})
    )
    assert list(out["manually_verified"]) == [1, 1, 0, 0, 0, 0]


# --- precision_table -----------------------------------------------------------------------


def hand_decisions(with_truth: bool) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "fname": [f"{i}.wav" for i in range(7)],
            "given_label": ["dog", "dog", "dog", "cat", "cat", "cat", "cat"],
            "accepted": [True, True, False, True, False, False, False],
            "true_label": ["dog", "cat", "dog", "cat", "cat", "dog", "bird"],
        }
    )
    return table if with_truth else table.drop(columns="true_label")


def test_precision_table_with_true_labels():
    out = precision_table(hand_decisions(True), ["bird", "cat", "dog"]).set_index("label")
    assert list(out.index) == ["bird", "cat", "dog", "__all__"]
    # dog: 3 judged, 2 accepted (1 correct); given dog labels correct 2 of 3
    assert out.loc["dog", ["n_unverified", "n_accepted", "n_accepted_correct"]].tolist() == [3, 2, 1]
    assert out.loc["dog", "precision"] == pytest.approx(1 / 2)
    assert out.loc["dog", "unverified_precision"] == pytest.approx(2 / 3)
    # cat: 4 judged, 1 accepted and correct; 2 of 4 given cat labels correct
    assert out.loc["cat", ["n_unverified", "n_accepted", "n_accepted_correct"]].tolist() == [4, 1, 1]
    assert out.loc["cat", "precision"] == pytest.approx(1.0)
    assert out.loc["cat", "unverified_precision"] == pytest.approx(2 / 4)
    # bird: nothing judged
    assert out.loc["bird", ["n_unverified", "n_accepted", "n_accepted_correct"]].tolist() == [0, 0, 0]
    assert np.isnan(out.loc["bird", "precision"]) and np.isnan(out.loc["bird", "unverified_precision"])
    # overall
    assert out.loc["__all__", ["n_unverified", "n_accepted", "n_accepted_correct"]].tolist() == [7, 3, 2]
    assert out.loc["__all__", "precision"] == pytest.approx(2 / 3)
    assert out.loc["__all__", "unverified_precision"] == pytest.approx(4 / 7)


def test_precision_table_without_true_labels():
    for decisions in (hand_decisions(False), hand_decisions(True).assign(true_label="")):
        out = precision_table(decisions, ["bird", "cat", "dog"]).set_index("label")
        assert set(out.columns) == {"n_unverified", "n_accepted"}
        assert out["n_unverified"].to_dict() == {"bird": 0, "cat": 4, "dog": 3, "__all__": 7}
        assert out["n_accepted"].to_dict() == {"bird": 0, "cat": 1, "dog": 2, "__all__": 3}


def test_precision_table_of_no_decisions():
    empty = pd.DataFrame(
        {
            "fname": pd.Series(dtype=str),
            "given_label": pd.Series(dtype=str),
            "accepted": pd.Series(dtype=bool),
        }
    )
    out = precision_table(empty, ["cat", "dog"])
    assert out["n_unverified"].tolist() == [0, 0, 0] and out["n_accepted"].tolist() == [0, 0, 0]


# --- excerpt_posteriors ----------------------------------------------------------------------


@pytest.fixture
def raw_clips() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    # shorter than, equal to and longer than the length-fixed 40 frames
    return [rng.normal(size=(8, t)).astype(np.float32) for t in (5, 17, 40, 63, 29)]


def manual_posteriors(
    model: nn.Module, raw: list[np.ndarray], starts: np.ndarray, k: int, length: int, frames: int
) -> np.ndarray:
    """One excerpt at a time, cut by hand from the tiled clip; K posteriors averaged."""
    model.eval()
    out = []
    with torch.no_grad():
        for i, clip in enumerate(raw):
            fixed = length_fixed(clip, frames)
            probs = []
            for j in range(k):
                s = int(starts[i * k + j])
                x = torch.from_numpy(np.ascontiguousarray(fixed[:, s : s + length]))[None, None]
                probs.append(torch.softmax(model(x).double(), dim=1)[0].numpy())
            out.append(np.mean(probs, axis=0))
    return np.array(out)


def test_excerpt_posteriors_average_k_excerpts(raw_clips):
    frames, length, k, seed = 40, 8, 6, 123
    model = TinyNet(n_classes=4)
    bank = bank_from_arrays(raw_clips, frames)
    settings = sv_settings(excerpts=k, excerpt_frames=length, batch_size=len(raw_clips) * k)
    got = excerpt_posteriors(model, bank, settings, np.random.default_rng(seed))
    assert got.shape == (len(raw_clips), 4)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    assert (got >= 0).all()
    # same generator draws: one batch holds every clip's K excerpts, clip-major
    starts = np.random.default_rng(seed).integers(0, frames - length + 1, size=len(raw_clips) * k)
    expected = manual_posteriors(model, raw_clips, starts, k, length, frames)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # an average of K differing excerpts, not one excerpt or the whole clip
    single = manual_posteriors(model, raw_clips, starts[::k].repeat(k), k, length, frames)
    assert np.abs(got - single).max() > 1e-4


def test_excerpt_posteriors_in_batches_of_one_clip(raw_clips):
    frames, length, k, seed = 40, 8, 4, 5
    model = TinyNet(n_classes=3, seed=1)
    bank = bank_from_arrays(raw_clips, frames)
    settings = sv_settings(excerpts=k, excerpt_frames=length, batch_size=k)  # one clip per pass
    got = excerpt_posteriors(model, bank, settings, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    starts = np.concatenate([rng.integers(0, frames - length + 1, size=k) for _ in raw_clips])
    np.testing.assert_allclose(got, manual_posteriors(model, raw_clips, starts, k, length, frames), atol=1e-5)


def test_excerpt_posteriors_are_deterministic_for_a_seed(raw_clips):
    model = TinyNet(n_classes=4)
    model.train()  # excerpt_posteriors must switch to eval mode (dropout off, running stats)
    bank = bank_from_arrays(raw_clips, 40)
    settings = sv_settings(excerpts=5, excerpt_frames=8)
    a = excerpt_posteriors(model, bank, settings, np.random.default_rng(9))
    b = excerpt_posteriors(model, bank, settings, np.random.default_rng(9))
    c = excerpt_posteriors(model, bank, settings, np.random.default_rng(10))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6  # other excerpts, other averages
    assert not model.training


# --- self_verify(): fold models judge their own fold only --------------------------------------


CLASSES = ["a", "b", "c", "d"]


def fold_setup(sizes: dict[int, int], labels: dict[int, list[str]] | None = None):
    """Per fold: unverified clips (fname, label, fold) and a bank whose clip ``id`` is constant."""
    unverified, banks, next_id = {}, {}, 1
    for k, n in sizes.items():
        ids = list(range(next_id, next_id + n))
        next_id += n
        given = labels[k] if labels else [CLASSES[(k + i) % len(CLASSES)] for i in range(n)]
        unverified[k] = pd.DataFrame(
            {"fname": [f"clip{i:03d}.wav" for i in ids], "label": given, "fold": [str(k)] * n}
        )
        banks[k] = bank_from_arrays([np.full((8, 10 + i % 7), float(i), np.float32) for i in ids], 30)
    return unverified, banks


def test_each_fold_model_judges_only_its_own_folds_clips():
    sizes = {0: 5, 1: 3, 2: 4, 3: 6}
    # half of each fold's clips carry the label its model votes for
    labels = {
        k: [CLASSES[k] if i % 2 == 0 else CLASSES[(k + 1) % 4] for i in range(n)] for k, n in sizes.items()
    }
    unverified, banks = fold_setup(sizes, labels)
    models = {k: FakeFoldModel(k, len(CLASSES)) for k in sizes}
    settings = sv_settings(excerpts=3, excerpt_frames=6, threshold=0.9)
    out = self_verify(models, banks, unverified, CLASSES, settings)

    assert list(out.columns) == DECISION_COLUMNS
    all_clips = pd.concat(unverified.values(), ignore_index=True)
    assert len(out) == len(all_clips) and out["fname"].is_unique
    assert set(out["fname"]) == set(all_clips["fname"])
    # the fold column is each clip's own fold ...
    fold_of = dict(zip(all_clips["fname"], all_clips["fold"].astype(int)))
    assert (out["fold"].astype(int) == out["fname"].map(fold_of)).all()
    # ... and each clip was judged by that fold's model (model k always predicts class k)
    assert (out["predicted_label"] == out["fold"].map(lambda k: CLASSES[int(k)])).all()
    # model k saw exactly fold k's clips, each K times, and no other fold's
    for k, model in models.items():
        ids = sorted(int(name[4:7]) for name in unverified[k]["fname"])
        assert sorted(set(model.seen)) == ids
        assert len(model.seen) == settings.excerpts * len(ids)
    # decisions follow the fake posteriors: label match -> accepted, else mismatch
    given_label = dict(zip(all_clips["fname"], all_clips["label"]))
    assert (out["given_label"] == out["fname"].map(given_label)).all()
    match = out["given_label"] == out["predicted_label"]
    assert (out.loc[match, "reason"] == ACCEPTED).all()
    assert (out.loc[~match, "reason"] == LABEL_MISMATCH).all()
    assert (out["p_max"] >= out["p_given"]).all()
    assert (out["p_max"] > 0.9).all()


def test_the_class_cap_is_shared_by_the_folds():
    """The cap counts a class's self-verified clips over all folds (docs/method.md: 40 per class)."""
    sizes = {0: 4, 1: 4}
    labels = {0: ["a"] * 4, 1: ["a"] * 4}
    unverified, banks = fold_setup(sizes, labels)
    models = {0: FakeFoldModel(0, 4), 1: FakeFoldModel(4, 4)}  # both vote for class "a"
    out = self_verify(
        models,
        banks,
        unverified,
        CLASSES,
        sv_settings(excerpts=2, excerpt_frames=6, threshold=0.9, max_per_class=3),
    )
    assert out["accepted"].sum() == 3
    # the highest posteriors win: the fake posterior grows with the clip id (fold 1's last three)
    assert accepted_set(out) == {"clip006.wav", "clip007.wav", "clip008.wav"}
    assert (out.loc[~out["accepted"], "reason"] == CLASS_CAP).all()


def test_self_verify_is_deterministic_for_a_seed():
    rng = np.random.default_rng(2)
    sizes = {0: 6, 1: 5}
    unverified, _ = fold_setup(sizes)
    banks = {
        k: bank_from_arrays(
            [rng.normal(size=(8, int(rng.integers(5, 50)))).astype(np.float32) for _ in range(n)], 40
        )
        for k, n in sizes.items()
    }
    models = {k: TinyNet(len(CLASSES), seed=k) for k in sizes}
    settings = sv_settings(excerpts=4, excerpt_frames=8, threshold=None, seed=31)
    first = self_verify(models, banks, unverified, CLASSES, settings)
    second = self_verify(models, banks, unverified, CLASSES, settings)
    pd.testing.assert_frame_equal(first, second)
    other = self_verify(
        models, banks, unverified, CLASSES, sv_settings(excerpts=4, excerpt_frames=8, threshold=None, seed=32)
    )
    assert not np.allclose(first["p_given"], other["p_given"])
    check_consistent(first)


def test_a_fold_without_unverified_clips_is_judged_as_empty():
    """Folds are stratified per class, so a fold can hold no unverified clip (a small or fully
    verified dataset): its model has nothing to judge, the other folds go on."""
    unverified, banks = fold_setup({0: 3})
    unverified[1] = pd.DataFrame(
        {"fname": pd.Series(dtype=str), "label": pd.Series(dtype=str), "fold": pd.Series(dtype=str)}
    )
    banks[1] = ClipBank(
        torch.zeros((0, 8)), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 30
    )
    models = {0: FakeFoldModel(0, 4), 1: FakeFoldModel(1, 4)}
    out = self_verify(models, banks, unverified, CLASSES, sv_settings(excerpts=2, excerpt_frames=6))
    assert len(out) == 3 and set(out["fold"].astype(int)) == {0}
    assert models[1].calls == 0


def test_an_empty_clip_list_gives_an_empty_bank():
    from workflow_lib.preprocess import SpectrogramStore

    clip = np.zeros((1, 128, 12), np.float32)
    manifest = pd.DataFrame(
        {"fname": ["c0.wav"], "status": "clipped", "shard": 0, "n_frames": 12, "offset": 0}
    )
    store = SpectrogramStore(manifest, {0: clip})
    bank = ClipBank.from_store(store, [], 30)
    assert len(bank) == 0
    posteriors = excerpt_posteriors(
        TinyNet(4), bank, sv_settings(excerpts=2, excerpt_frames=6), np.random.default_rng(0)
    )
    assert posteriors.shape == (0, 4)
