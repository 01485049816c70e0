"""Trust policies (workflow_lib/policies.py) on hand-made out-of-fold posteriors.

The paper policy is compared with the decision code the workflow used before policies existed
(copied below verbatim from workflow_lib/self_verify.py at commit bb9a247); calibration is
checked never to look at a judged clip; confident learning against a direct cleanlab call.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow_lib.policies import (
    ACCEPTED,
    CLASS_CAP,
    CORRECTED,
    FLAGGED,
    LABEL_MISMATCH,
    NOT_TRUSTED,
    SPREAD_DISAGREES,
    Clips,
    Context,
    PolicySettings,
    apply_policy,
    apply_temperature,
    calibrated_posteriors,
    class_caps,
    fit_temperature,
    low_trust,
    policy_named,
    scheduled_value,
)

CLASSES = ["a", "b", "c", "d"]


# --- the reference: self_verify.decide before this change (verbatim) --------------------------


def old_decide(judged: pd.DataFrame, threshold: float | None, max_per_class: int) -> pd.DataFrame:
    out = judged.copy()
    match = out["given_label"] == out["predicted_label"]
    confident = match if threshold is None else match & (out["p_given"] >= threshold)
    out["reason"] = np.where(~match, "label_mismatch", np.where(~confident, "below_threshold", ""))
    candidates = out[confident].sort_values(
        ["given_label", "p_given", "fname"], ascending=[True, False, True]
    )
    rank = candidates.groupby("given_label").cumcount()
    out.loc[candidates.index, "reason"] = np.where(rank < max_per_class, "accepted", "class_cap")
    out["accepted"] = out["reason"] == "accepted"
    return out


def random_clips(n: int, seed: int, sharp: float = 3.0, folds: int = 2) -> Clips:
    """n judged clips with Dirichlet-like posteriors leaning towards a 'true' class and given
    labels right 70 % of the time."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, len(CLASSES), n)
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), true] += sharp
    posteriors = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = np.where(rng.random(n) < 0.7, true, rng.integers(0, len(CLASSES), n))
    table = pd.DataFrame(
        {
            "fname": [f"u{i:04d}.wav" for i in range(n)],
            "fold": rng.integers(0, folds, n),
            "given_label": [CLASSES[g] for g in given],
        }
    )
    centres = 2.0 * np.eye(6)[true]  # embeddings cluster by true class
    clips = Clips(table, posteriors, rng.normal(scale=0.5, size=(n, 6)) + centres)
    clips.extra["true"] = true
    return clips


def reference_clips(n: int, seed: int, folds: int = 2, sharp: float = 3.0) -> Clips:
    clips = random_clips(n, seed, sharp, folds)
    table = pd.DataFrame(
        {
            "fname": [f"v{i:04d}.wav" for i in range(n)],
            "fold": clips.table["fold"],
            "label": [CLASSES[t] for t in clips.extra["true"]],
        }
    )
    return Clips(table, clips.posteriors, clips.embeddings)


# --- paper --------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold,cap", [(0.6, 5), (0.9, 40), (None, 3), (0.3, 0), (0.5, 1000)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_policy_reproduces_the_earlier_decisions_exactly(threshold, cap, seed):
    judged = random_clips(300, seed)
    # a few exact ties of posteriors, so the file-name tie break is exercised
    judged.posteriors[:40:4] = judged.posteriors[1:41:4]
    judged.table.loc[:40:4, "given_label"] = judged.table.loc[1:41:4, "given_label"].to_numpy()
    new = apply_policy(
        judged, None, CLASSES, PolicySettings.of("paper", threshold=threshold, max_per_class=cap)
    )
    base = new[["fname", "given_label", "fold", "predicted_label", "p_given", "p_max"]]
    old = old_decide(base, threshold, cap)
    assert (new["reason"].to_numpy() == old["reason"].to_numpy()).all()
    assert (new["accepted"].to_numpy() == old["accepted"].to_numpy()).all()
    assert new["accepted"].sum() > 0 or cap == 0
    assert (new.loc[new["accepted"], "trusted_label"] == new.loc[new["accepted"], "given_label"]).all()
    assert (new.loc[new["accepted"], "weight"] == 1.0).all() and (
        new.loc[~new["accepted"], "weight"] == 0
    ).all()


def test_agreement_is_the_paper_rule_without_threshold_or_cap():
    judged = random_clips(200, 5)
    out = apply_policy(judged, None, CLASSES, PolicySettings.of("agreement"))
    match = out["given_label"] == out["predicted_label"]
    assert (out["accepted"] == match).all()
    assert set(out.loc[~match, "reason"]) == {LABEL_MISMATCH}


def test_scheduled_threshold_moves_linearly():
    assert scheduled_value(0.9, 0.5, Context(0, 3)) == pytest.approx(0.9)
    assert scheduled_value(0.9, 0.5, Context(1, 3)) == pytest.approx(0.7)
    assert scheduled_value(0.9, 0.5, Context(2, 3)) == pytest.approx(0.5)
    assert scheduled_value(0.9, 0.5, Context(0, 1)) == pytest.approx(0.9)
    judged = random_clips(300, 3)
    settings = PolicySettings.of("scheduled_threshold", threshold_start=0.9, threshold_end=0.5)
    counts = [
        apply_policy(judged, None, CLASSES, settings, Context(i, 3))["accepted"].sum() for i in range(3)
    ]
    paper = [
        apply_policy(judged, None, CLASSES, PolicySettings.of("paper", threshold=t))["accepted"].sum()
        for t in (0.9, 0.7, 0.5)
    ]
    assert counts == paper and counts[0] < counts[1] < counts[2]


# --- caps and label correction ---------------------------------------------------------------


def test_fraction_cap_per_class_and_absolute_cap_together():
    labels = pd.Series(["a"] * 10 + ["b"] * 3)
    caps = class_caps(labels, CLASSES, None, 0.5)
    assert caps == {"a": 5, "b": 1, "c": 0, "d": 0}
    assert class_caps(labels, CLASSES, 2, 0.5) == {"a": 2, "b": 1, "c": 0, "d": 0}
    assert class_caps(labels, CLASSES, None, None)["a"] == float("inf")
    judged = random_clips(400, 7, sharp=6.0)
    out = apply_policy(judged, None, CLASSES, PolicySettings.of("agreement", max_fraction=0.25))
    counts = judged.table["given_label"].value_counts()
    for label, group in out.groupby("given_label"):
        assert group["accepted"].sum() <= int(0.25 * counts[label])
        kept = group[group["accepted"]]["p_given"]
        capped = group[group["reason"] == CLASS_CAP]["p_given"]
        if len(kept) and len(capped):
            assert kept.min() >= capped.max()  # the highest posteriors win


def test_correct_labels_trusts_confident_contradictions_under_the_predicted_label():
    judged = random_clips(300, 11, sharp=5.0)
    off = apply_policy(judged, None, CLASSES, PolicySettings.of("paper", threshold=0.8))
    on = apply_policy(
        judged,
        None,
        CLASSES,
        PolicySettings.of("paper", threshold=0.8, correct_labels=True, correct_threshold=0.9),
    )
    fixed = on[on["reason"] == CORRECTED]
    assert len(fixed) > 0 and fixed["accepted"].all()
    assert (fixed["trusted_label"] == fixed["predicted_label"]).all()
    assert (fixed["given_label"] != fixed["predicted_label"]).all() and (fixed["p_max"] >= 0.9).all()
    unchanged = on["reason"] != CORRECTED
    assert (on.loc[unchanged, "accepted"] == off.loc[unchanged, "accepted"]).all()
    true = np.array(CLASSES)[judged.extra["true"]]
    corrected_right = (fixed["trusted_label"].to_numpy() == true[fixed.index]).mean()
    assert corrected_right > 0.8


# --- calibrated ---------------------------------------------------------------------------------


def test_temperature_sharpens_under_confident_posteriors():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(4000, 4))
    sharp = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # labels drawn from the posteriors themselves: these posteriors are calibrated (T = 1)
    targets = (rng.random((4000, 1)) > sharp.cumsum(axis=1)).sum(axis=1)
    assert fit_temperature(sharp, targets) == pytest.approx(1.0, rel=0.1)
    soft = apply_temperature(sharp, 3.0)  # made under-confident on purpose
    assert fit_temperature(soft, targets) == pytest.approx(1 / 3.0, rel=0.15)
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0, int)) == 1.0


def test_calibration_never_uses_a_judged_clip():
    judged = random_clips(200, 1, sharp=1.5)
    reference = reference_clips(200, 2, sharp=1.5)
    first, temps = calibrated_posteriors(judged, reference, CLASSES)
    # changing the judged clips' posteriors changes no temperature ...
    other = Clips(judged.table, np.roll(judged.posteriors, 1, axis=1))
    _, temps_other = calibrated_posteriors(other, reference, CLASSES)
    assert temps == temps_other
    # ... the temperatures come from the reference clips of the same fold only
    changed = Clips(reference.table, reference.posteriors.copy())
    rows = changed.fold_rows(1)
    changed.posteriors[rows] = apply_temperature(changed.posteriors[rows], 4.0)
    again, temps_changed = calibrated_posteriors(judged, changed, CLASSES)
    assert temps_changed[0] == temps[0] and temps_changed[1] != pytest.approx(temps[1])
    fold0 = judged.fold_rows(0)
    np.testing.assert_array_equal(again[fold0], first[fold0])
    # a judged clip among the calibration clips is refused
    leak = Clips(
        pd.concat(
            [reference.table, judged.table.head(1).rename(columns={"given_label": "label"})],
            ignore_index=True,
        ),
        np.concatenate([reference.posteriors, judged.posteriors[:1]]),
    )
    with pytest.raises(ValueError, match="must not be judged"):
        calibrated_posteriors(judged, leak, CLASSES)


def test_calibrated_policy_trusts_more_under_confident_clips_at_the_same_threshold():
    judged = random_clips(400, 4, sharp=2.5)
    judged.posteriors = apply_temperature(judged.posteriors, 2.5)
    reference = reference_clips(400, 8, sharp=2.5)
    reference.posteriors = apply_temperature(reference.posteriors, 2.5)
    paper = apply_policy(judged, reference, CLASSES, PolicySettings.of("paper", threshold=0.9))
    cal = apply_policy(judged, reference, CLASSES, PolicySettings.of("calibrated", threshold=0.9))
    assert cal["accepted"].sum() > 2 * max(1, paper["accepted"].sum())
    # calibration keeps the argmax: only clips whose argmax is the given label are trusted
    assert (cal.loc[cal["accepted"], "given_label"] == cal.loc[cal["accepted"], "predicted_label"]).all()


# --- confident learning -------------------------------------------------------------------------


def test_confident_learning_agrees_with_a_direct_cleanlab_call():
    from cleanlab.filter import find_label_issues

    judged = random_clips(400, 6, sharp=2.0)
    labels = judged.table["given_label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    flagged = find_label_issues(labels=labels, pred_probs=judged.posteriors)
    out = apply_policy(judged, None, CLASSES, PolicySettings.of("confident_learning"))
    assert (out["accepted"].to_numpy() == ~flagged).all()
    assert set(out.loc[~out["accepted"], "reason"]) == {FLAGGED}
    assert 0 < flagged.sum() < len(flagged)


# --- label spreading, weighted, all, none ---------------------------------------------------


def test_label_spreading_trusts_clips_whose_spread_label_is_the_given_one():
    judged = random_clips(200, 9)
    reference = reference_clips(120, 10)
    out = apply_policy(judged, reference, CLASSES, PolicySettings.of("label_spreading", gamma=5.0))
    true = np.array(CLASSES)[judged.extra["true"]]
    right = out["given_label"].to_numpy() == true
    # the embeddings cluster by true class: correct given labels are kept, wrong ones refused
    assert out.loc[right, "accepted"].mean() > 0.8
    assert out.loc[~right, "accepted"].mean() < 0.2
    assert set(out.loc[~out["accepted"], "reason"]) <= {SPREAD_DISAGREES}
    # the spread labels depend on the reference labels, not on the judged posteriors
    shuffled = Clips(judged.table, np.roll(judged.posteriors, 1, axis=1), judged.embeddings)
    again = apply_policy(shuffled, reference, CLASSES, PolicySettings.of("label_spreading", gamma=5.0))
    assert (again["accepted"] == out["accepted"]).all()


def test_weighted_keeps_every_clip_with_its_given_label_posterior_as_weight():
    judged = random_clips(100, 12)
    out = apply_policy(judged, None, CLASSES, PolicySettings.of("weighted"))
    assert out["accepted"].all()
    np.testing.assert_allclose(out["weight"], out["p_given"])
    capped = apply_policy(judged, None, CLASSES, PolicySettings.of("weighted", max_per_class=3))
    assert capped.groupby("given_label")["accepted"].sum().max() == 3


def test_all_and_none():
    judged = random_clips(50, 13)
    assert apply_policy(judged, None, CLASSES, PolicySettings.of("all"))["accepted"].all()
    none = apply_policy(judged, None, CLASSES, PolicySettings.of("none"))
    assert not none["accepted"].any() and set(none["reason"]) == {NOT_TRUSTED}


def paper_threshold(name: str, threshold: float) -> dict[str, float]:
    """``threshold`` for the policies that read one (another policy refuses the key)."""
    return {"threshold": threshold} if "threshold" in policy_named(name).keys else {}


def test_empty_judged_set():
    empty = Clips(pd.DataFrame({"fname": [], "fold": [], "given_label": []}), np.zeros((0, 4)))
    for name in ("paper", "agreement", "confident_learning", "weighted", "all", "none"):
        out = apply_policy(empty, None, CLASSES, PolicySettings.of(name, **paper_threshold(name, 0.5)))
        assert len(out) == 0 and not out["accepted"].any()


def test_low_trust_flag():
    assert low_trust(0, 100, "paper", 0.0)
    assert not low_trust(1, 100, "paper", 0.0)
    assert low_trust(4, 100, "paper", 0.05) and not low_trust(5, 100, "paper", 0.05)
    assert not low_trust(0, 100, "none", 0.5)
    assert not low_trust(0, 0, "paper", 0.5)


def test_accepted_reasons_are_consistent():
    judged = random_clips(200, 14)
    for name in ("paper", "agreement", "confident_learning", "weighted", "all", "none"):
        out = apply_policy(
            judged, None, CLASSES, PolicySettings.of(name, max_per_class=10, **paper_threshold(name, 0.5))
        )
        assert (out["accepted"] == out["reason"].isin([ACCEPTED, CORRECTED])).all(), name


# --- per-clip loss weights (the weighted policy's training side) ----------------------------


def test_weighted_loss_is_the_plain_loss_at_weight_one_and_ignores_weight_zero():
    import torch

    from workflow_lib.stages import loss_weights
    from workflow_lib.training import soft_cross_entropy, weighted_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    targets = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float()
    ones = torch.ones(6)
    assert torch.allclose(weighted_cross_entropy(logits, targets, ones), soft_cross_entropy(logits, targets))
    half = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(
        weighted_cross_entropy(logits, targets, half), soft_cross_entropy(logits[:3], targets[:3]) / 2
    )
    assert loss_weights(pd.DataFrame({"weight": [1.0, 1.0]})) is None  # plain mean, bit for bit
    assert loss_weights(pd.DataFrame({"fname": ["a"]})) is None
    np.testing.assert_allclose(loss_weights(pd.DataFrame({"weight": [1.0, 0.4]})), [1.0, 0.4])


def test_embeddings_are_the_pooled_last_feature_layer_of_the_same_excerpts():
    """excerpt_posteriors(embeddings=True) on a real VGG-GAP net: the same posteriors as
    without, and per clip the K-excerpt mean of the global-average-pooled features that the
    last 1x1 convolution classifies."""
    import torch

    from workflow_lib.data import ClipBank
    from workflow_lib.model import build_model
    from workflow_lib.self_verify import TrustSettings, excerpt_posteriors

    torch.manual_seed(0)
    model = build_model(4, 3, (0.0, 0.0)).eval()
    frames, n = 200, 3
    data = torch.randn(n * frames, 128)
    bank = ClipBank(data, torch.arange(n) * frames, torch.full((n,), frames), frames)
    settings = TrustSettings(
        excerpts=2, excerpt_frames=192, seed=0, amp=False, policy=PolicySettings.of("paper", threshold=None)
    )
    plain = excerpt_posteriors(model, bank, settings, np.random.default_rng(5))
    probs, feats = excerpt_posteriors(model, bank, settings, np.random.default_rng(5), embeddings=True)
    np.testing.assert_allclose(probs, plain, atol=1e-6)
    assert feats.shape == (n, 8 * 4)
    starts = bank.random_starts(n * 2, 192, np.random.default_rng(5))
    x = bank.excerpts(torch.arange(n).repeat_interleave(2), starts, 192)
    with torch.no_grad():
        hidden = model.features[:-2](x).mean(dim=(2, 3))
    np.testing.assert_allclose(feats, hidden.view(n, 2, -1).mean(dim=1).numpy(), atol=1e-5)
