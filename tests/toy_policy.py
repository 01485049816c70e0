"""A toy trust policy, registered from a module of its own (issue 20's acceptance test,
tests/test_policy_registry.py): ``every_other`` trusts one judged clip in ``every`` (by file
name), whatever the posteriors say. Adding it changes no file outside tests/.

Single-label only: it registers no function for the multi-label task, so the config refuses
it in a multi-label run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workflow_lib.policies import (
    Clips,
    Context,
    PolicySettings,
    Proposal,
    given_labels,
    parameter,
    register_policy,
)
from workflow_lib.task import SINGLE

SKIPPED = "not_every_other"  # the reason of a clip the toy policy passes over


@dataclass(frozen=True, kw_only=True)
class EveryOtherParameters:
    """The toy policy's one setting."""

    every: int = parameter(
        default=2,
        doc="trust one judged clip in this many, by file name",
        schema={"type": "integer", "minimum": 1},
    )


def every_other(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """The clips at rank 0, every, 2 x every ... of the judged clips sorted by file name are
    candidates under their given label; the others are refused (:data:`SKIPPED`)."""
    rank = judged.table["fname"].rank(method="first").to_numpy(dtype=np.int64) - 1
    keep = rank % settings.parameters.every == 0
    return given_labels(judged, classes, candidate=keep, reason=np.where(keep, "", SKIPPED))


POLICY = register_policy(
    "every_other",
    {SINGLE: every_other},
    EveryOtherParameters,
    summary="one judged clip in `every`, by file name (a test's toy)",
)
