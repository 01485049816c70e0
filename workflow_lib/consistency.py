"""Consistency training in fine-tuning, a chain option (issue 21, item 3).

Not part of the paper's method (docs/method.md "Beyond the paper", "Consistency training"):
after JiachuanDENG's semi-supervised FSDKaggle2019 system, a fine-tuning step adds to its
supervised loss a Pi-model term: the mean squared difference between the network's outputs
(the task's activation: softmax, or per-class sigmoids) on two independent augmentations of
the same excerpts, over the batch's labelled excerpts and as many excerpts of the unlabelled
clips (the fold's unverified training clips the chain's policy did not trust), weighted and
ramped up over the first epochs (:func:`rampup`).

The step itself is :func:`workflow_lib.training._consistency_loss`; every random draw (which
unlabelled clips, their excerpt starts, both augmentations) comes from the training step's
seeded :class:`workflow_lib.training.DeviceSampler`, whose state is checkpointed, so a killed
job resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .augment import AugmentSettings


@dataclass(frozen=True, kw_only=True)
class ConsistencySettings:
    """A fine-tuning job's ``fit.consistency`` (config ``chains.<name>.consistency``)."""

    weight: float  # of the consistency term at the end of the ramp-up
    rampup_epochs: int = 0  # 0: full weight from the first epoch
    unlabelled: bool = True  # also the fold's untrusted unverified clips, not only the labelled
    augment: AugmentSettings = field(default_factory=AugmentSettings)  # all off: dropout only

    def __post_init__(self) -> None:
        """A job's JSON gives ``augment`` as a mapping; keep one typed, hashable value."""
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentSettings(**self.augment))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, value: ConsistencySettings | dict[str, Any] | None) -> ConsistencySettings | None:
        """From a job's ``fit.consistency``; None when absent (off)."""
        return cls(**value) if isinstance(value, dict) else value


def rampup(epoch: int, rampup_epochs: int) -> float:
    """The weight's factor in epoch ``epoch`` (from 0): the sigmoid ramp-up of Laine & Aila's
    Pi-model, exp(-5 (1 - t)^2) with t = epoch / rampup_epochs clipped to 1: exp(-5) ~ 0.0067
    in the first epoch, 1 from epoch ``rampup_epochs`` on (and always when it is 0). A slow
    start keeps the term from pulling the outputs of a network whose predictions on the
    unlabelled clips are still poor towards each other before the labels have shaped them."""
    if rampup_epochs <= 0:
        return 1.0
    t = min(1.0, epoch / rampup_epochs)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_loss(first: torch.Tensor, second: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale`` times the mean over all N = examples x classes elements of (first - second)^2
    (float32). Its gradient with respect to ``first`` is 2 * scale * (first - second) / N, and
    both views get gradients (the Pi-model: no stop-gradient, no teacher)."""
    return scale * (first.float() - second.float()).pow(2).mean()
