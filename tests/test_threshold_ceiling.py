"""threshold_ceiling (issue 22): the threshold policies refuse a clip (label) whose averaged
posterior of its given label is above the ceiling, reason ``above_ceiling``; absent, nothing
changes. Hand-made posteriors, both tasks; the config check that the ceiling lies above the
threshold."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_lib.config import ConfigError, resolve_settings
from workflow_lib.job_settings import chain_policy
from workflow_lib.policies import (
    ABOVE_CEILING,
    ACCEPTED,
    BELOW_THRESHOLD,
    LABEL_MISMATCH,
    NOT_PREDICTED,
    Clips,
    Context,
    PolicySettings,
    apply_policy,
    parameter_specs,
)
from workflow_lib.task import MULTI, SINGLE

from conftest import REPO

CLASSES = ["a", "b", "c"]


def single_clips() -> Clips:
    """Given label a throughout: p(a) 0.99 (above a 0.97 ceiling), 0.97 (at it), 0.8 (between),
    0.5 (below 0.6), and a mismatch."""
    posteriors = np.array(
        [[0.99, 0.005, 0.005], [0.97, 0.02, 0.01], [0.8, 0.1, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1]]
    )
    table = pd.DataFrame({"fname": [f"u{i}.wav" for i in range(5)], "fold": 0, "given_label": "a"})
    return Clips(table, posteriors)


def reasons(name: str, context: Context | None = None, **values) -> list[str]:
    """The single-label reasons of ``name`` on :func:`single_clips`."""
    settings = PolicySettings.of(name, max_per_class=None, **values)
    decisions = apply_policy(single_clips(), None, CLASSES, settings, context or Context(), task=SINGLE)
    return list(decisions["reason"])


def test_paper_refuses_clips_above_the_ceiling_only():
    assert reasons("paper", threshold=0.6, threshold_ceiling=0.97) == [
        ABOVE_CEILING,
        ACCEPTED,
        ACCEPTED,
        BELOW_THRESHOLD,
        LABEL_MISMATCH,
    ]


def test_without_a_ceiling_the_decisions_are_unchanged():
    settings = PolicySettings.of("paper", max_per_class=None, threshold=0.6)
    ceiling_none = PolicySettings.of("paper", max_per_class=None, threshold=0.6, threshold_ceiling=None)
    plain = apply_policy(single_clips(), None, CLASSES, settings)
    pd.testing.assert_frame_equal(plain, apply_policy(single_clips(), None, CLASSES, ceiling_none))
    assert list(plain["reason"]) == [ACCEPTED, ACCEPTED, ACCEPTED, BELOW_THRESHOLD, LABEL_MISMATCH]


def test_a_clip_above_the_ceiling_is_never_corrected_and_uses_no_cap():
    settings = PolicySettings.of(
        "paper", max_per_class=1, threshold=0.6, threshold_ceiling=0.97, correct_labels=True
    )
    decisions = apply_policy(single_clips(), None, CLASSES, settings)
    assert list(decisions["reason"][:3]) == [ABOVE_CEILING, ACCEPTED, "class_cap"]
    assert decisions["trusted_label"].iloc[0] == "a" and not decisions["accepted"].iloc[0]


def test_scheduled_threshold_and_calibrated_read_the_same_ceiling():
    scheduled = reasons("scheduled_threshold", threshold_start=0.6, threshold_end=0.9, threshold_ceiling=0.95)
    assert scheduled[:4] == [ABOVE_CEILING, ABOVE_CEILING, ACCEPTED, BELOW_THRESHOLD]
    late = reasons(
        "scheduled_threshold",
        context=Context(iteration=1, iterations=2),
        threshold_start=0.6,
        threshold_end=0.9,
        threshold_ceiling=0.95,
    )
    assert late[:4] == [ABOVE_CEILING, ABOVE_CEILING, BELOW_THRESHOLD, BELOW_THRESHOLD]
    spec = parameter_specs()["threshold_ceiling"]
    assert spec["policies"] == ["paper", "calibrated", "scheduled_threshold"]


def test_calibrated_compares_the_calibrated_posterior_with_the_ceiling():
    judged = single_clips()
    ref_table = pd.DataFrame({"fname": ["v0.wav", "v1.wav"], "fold": 0, "label": ["a", "b"]})
    reference = Clips(ref_table, np.array([[0.6, 0.3, 0.1], [0.3, 0.6, 0.1]]))
    settings = PolicySettings.of("calibrated", max_per_class=None, threshold=0.6, threshold_ceiling=0.97)
    decisions = apply_policy(judged, reference, CLASSES, settings)
    above = decisions["p_given"] > 0.97
    assert (decisions.loc[above, "reason"] == ABOVE_CEILING).all()
    assert (decisions.loc[~above & (decisions["reason"] == ABOVE_CEILING)]).empty


def multi_clips() -> Clips:
    table = pd.DataFrame({"fname": ["x.wav", "y.wav"], "fold": 0, "given_label": ["a,b", "b,c"]})
    return Clips(table, np.array([[0.99, 0.8, 0.1], [0.2, 0.96, 0.3]]))


def test_multi_label_each_given_label_has_its_own_ceiling_decision():
    settings = PolicySettings.of("paper", max_per_class=None, threshold=0.7, threshold_ceiling=0.95)
    decisions = apply_policy(multi_clips(), None, CLASSES, settings, task=MULTI)
    got = dict(zip(zip(decisions["fname"], decisions["label"]), decisions["reason"]))
    assert got == {
        ("x.wav", "a"): ABOVE_CEILING,
        ("x.wav", "b"): ACCEPTED,
        ("y.wav", "b"): ABOVE_CEILING,
        ("y.wav", "c"): NOT_PREDICTED,
    }
    plain = PolicySettings.of("paper", max_per_class=None, threshold=0.7)
    before = apply_policy(multi_clips(), None, CLASSES, plain, task=MULTI)
    assert list(before["reason"]) == [ACCEPTED, ACCEPTED, ACCEPTED, NOT_PREDICTED]


def test_multi_label_scheduled_threshold_takes_the_ceiling():
    settings = PolicySettings.of(
        "scheduled_threshold",
        max_per_class=None,
        threshold_start=0.7,
        threshold_end=0.9,
        threshold_ceiling=0.97,
    )
    decisions = apply_policy(multi_clips(), None, CLASSES, settings, task=MULTI)
    assert list(decisions["reason"]) == [ABOVE_CEILING, ACCEPTED, ACCEPTED, NOT_PREDICTED]


# --- config -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_config() -> dict:
    return {**yaml.safe_load((REPO / "config.yaml").read_text()), "run_preset": "paper"}


def _chain(config: dict, chain: str, **values) -> dict:
    changed = copy.deepcopy(config)
    changed["chains"][chain].update(values)
    return changed


@pytest.mark.parametrize(
    "chain,values,fragment",
    [
        ("self_verification", {"threshold_ceiling": 0.95}, "method.self_verification.threshold 0.95"),
        ("calibrated", {"threshold": 0.8, "threshold_ceiling": 0.7}, "threshold 0.8"),
        ("scheduled_threshold", {"threshold_ceiling": 0.9}, "threshold_end 0.95"),
    ],
)
def test_a_ceiling_at_or_below_the_threshold_is_refused_at_start(base_config, chain, values, fragment):
    with pytest.raises(ConfigError) as raised:
        resolve_settings(_chain(base_config, chain, **values))
    message = str(raised.value)
    assert f"chains.{chain}.threshold_ceiling" in message and fragment in message


def test_a_ceiling_reaches_the_trust_job_and_is_absent_by_default(base_config):
    plain = resolve_settings(base_config)
    assert "threshold_ceiling" not in chain_policy(plain, "self_verification")
    settings = resolve_settings(_chain(base_config, "self_verification", threshold_ceiling=0.99))
    resolved = chain_policy(settings, "self_verification")
    assert resolved["threshold_ceiling"] == 0.99
    assert PolicySettings.from_mapping(resolved).parameters.threshold_ceiling == 0.99


def test_a_policy_without_a_threshold_refuses_the_ceiling(base_config):
    with pytest.raises(ConfigError, match=r"agreement does not read \['threshold_ceiling'\]"):
        resolve_settings(_chain(base_config, "agreement", threshold_ceiling=0.9))


def test_the_scheduled_band_chain_keeps_clips_between_its_moving_floor_and_its_ceiling(base_config):
    """config.yaml's scheduled_band reaches the trust job as a scheduled threshold with a
    ceiling, and decides as a band: at the first judging iteration (floor 0.5) the clips at
    0.97, 0.8 and 0.5 (at the floor) are kept, at the last (floor 0.9) only 0.97; the clip at
    0.995, above the 0.99 ceiling, never."""
    settings = resolve_settings({**base_config, "run_chains": ["self_verification", "scheduled_band"]})
    typed = PolicySettings.from_mapping(chain_policy(settings, "scheduled_band"))
    clips = single_clips()
    clips.posteriors[0] = [0.995, 0.003, 0.002]

    def decide(iteration: int) -> list[str]:
        context = Context(iteration=iteration, iterations=2)
        return list(apply_policy(clips, None, CLASSES, typed, context, task=SINGLE)["reason"][:4])

    assert decide(0) == [ABOVE_CEILING, ACCEPTED, ACCEPTED, ACCEPTED]
    assert decide(1) == [ABOVE_CEILING, ACCEPTED, BELOW_THRESHOLD, BELOW_THRESHOLD]
