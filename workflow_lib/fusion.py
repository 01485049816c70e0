"""Fusion of the presets' predictions and the challenge submission.

docs/method.md "Model selection, prediction, fusion, submission".

``mean``: the average of the presets' posteriors (the final system of the paper).
``learned``: the authors' fusion script's option: one weight per model plus one bias per
class, softmax of the weighted sum of the models' posteriors, fitted by cross-entropy on
out-of-fold predictions of the verified validation clips.

The multi-label task (FSDKaggle2019 layout, per-class sigmoid posteriors): ``mean`` averages the
sigmoid posteriors the same way. ``learned`` keeps one weight per model and one bias per
class but combines the models' log-odds, ``sigmoid(sum_m w_m logit(p_m) + b)``, fitted by
binary cross-entropy on the multi-hot targets: each class is a separate yes/no decision, so a
softmax over classes would force the labels of a clip to compete, and starting from weights
1/n_models and zero biases it starts at a posterior between the models' (a weighted sum of
raw probabilities under a sigmoid would start far from them). The submission is the 2019
format: fname plus one posterior column per class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .labels import multi_hot
from .metrics import top_k
from .task import MULTI, SINGLE, Task, task_named


@dataclass(frozen=True)
class FusionSettings:
    """The fuse job's settings: config ``method.fusion`` (``method`` mean or learned, the learned
    fusion's Adam ``steps`` and ``lr``) and the task, which decides how posteriors are fused
    and what the submission looks like. Built from the job's JSON by :meth:`from_json`."""

    method: str = "mean"
    steps: int = 0
    lr: float = 0.0
    task: Task = SINGLE

    @classmethod
    def from_json(cls, settings: Mapping[str, Any]) -> FusionSettings:
        """From the fuse job's ``--settings`` (job_settings.fusion_settings)."""
        return cls(
            method=settings["method"],
            steps=settings["learned_epochs"],
            lr=settings["learned_lr"],
            task=task_named(settings.get("task", SINGLE.name)),
        )


def probability_frame(fnames: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """fname plus one column per class."""
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "fname", list(fnames))
    return frame


def probabilities(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    return frame[list(classes)].to_numpy(dtype=np.float64)


def mean_fusion(stack: np.ndarray) -> np.ndarray:
    """stack: (n_models, n_clips, n_classes) -> average posteriors."""
    return stack.mean(axis=0)


#: posteriors are clipped to [EPS, 1 - EPS] before their log-odds are taken (a sigmoid output
#: of exactly 0 or 1 in float32 would give an infinite logit)
EPS = 1e-6


def log_odds(probs: torch.Tensor) -> torch.Tensor:
    """logit(p) of sigmoid posteriors, clipped (see :data:`EPS`)."""
    probs = probs.clamp(EPS, 1.0 - EPS)
    return torch.log(probs) - torch.log1p(-probs)


def _check_multi_hot(x: torch.Tensor, y: torch.Tensor) -> None:
    """Multi-hot targets must be one row of classes per clip (not class indices)."""
    if y.shape != x.shape[1:]:
        raise ValueError(f"multi-hot targets {tuple(y.shape)} do not match {tuple(x.shape[1:])}")


#: Per task, what the learned fusion weighs and how it is fitted: (the models' posteriors ->
#: the fused inputs, the targets' dtype, the loss of the fused logits). Softmax posteriors are
#: weighed as they are (cross-entropy on class indices); sigmoid posteriors by their log-odds
#: (binary cross-entropy on multi-hot rows), see the module docstring.
LEARNED_FIT = {
    SINGLE.name: (lambda x: x, torch.int64, torch.nn.functional.cross_entropy),
    MULTI.name: (log_odds, torch.float64, torch.nn.functional.binary_cross_entropy_with_logits),
}


def fit_learned_fusion(
    stack: np.ndarray,
    targets: np.ndarray,
    steps: int,
    lr: float,
    seed: int = 0,
    task: Task = SINGLE,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit weights (n_models,) and biases (n_classes,) by full-batch Adam.

    Single-label: ``targets`` are class indices (n_clips,), cross-entropy of the softmax.
    Multi-label: ``targets`` are multi-hot (n_clips, n_classes), binary cross-entropy of the
    per-class sigmoid of the weighted log-odds (see the module docstring, :data:`LEARNED_FIT`).
    """
    torch.manual_seed(seed)
    inputs, dtype, loss = LEARNED_FIT[task.name]
    x = inputs(torch.as_tensor(stack, dtype=torch.float64))
    y = torch.as_tensor(targets, dtype=dtype)
    if task.label_sets:
        _check_multi_hot(x, y)
    weights = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(x.shape[2], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([weights, bias], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = torch.einsum("m,mnc->nc", weights, x) + bias
        loss(logits, y).backward()
        optimizer.step()
    return weights.detach().numpy(), bias.detach().numpy()


def _softmax_fusion(stack: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Softmax over the classes of the weighted posteriors plus the biases."""
    logits = np.einsum("m,mnc->nc", weights, stack) + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def _sigmoid_fusion(stack: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Per-class sigmoid of the weighted log-odds plus the biases."""
    logits = np.einsum("m,mnc->nc", weights, log_odds(torch.as_tensor(stack, dtype=torch.float64)).numpy())
    return 1.0 / (1.0 + np.exp(-(logits + bias)))


#: The fitted fusion's posteriors per task (numpy, float64).
LEARNED_APPLY = {SINGLE.name: _softmax_fusion, MULTI.name: _sigmoid_fusion}


def apply_learned_fusion(
    stack: np.ndarray, weights: np.ndarray, bias: np.ndarray, task: Task = SINGLE
) -> np.ndarray:
    """The fitted fusion's posteriors: softmax over classes, or per-class sigmoid (label sets)."""
    return LEARNED_APPLY[task.name](stack, weights, bias)


#: The learned fusion as torch expressions per task, for the exported tagger.
LEARNED_TORCH = {
    SINGLE.name: lambda stack, weights, bias: torch.softmax(
        torch.einsum("m,mnc->nc", weights, stack) + bias, dim=1
    ),
    MULTI.name: lambda stack, weights, bias: torch.sigmoid(
        torch.einsum("m,mnc->nc", weights, log_odds(stack)) + bias
    ),
}


def fused_posteriors(
    stack: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None = None, task: Task = SINGLE
) -> torch.Tensor:
    """The fusion as one torch expression, for the exported tagger (workflow_lib/export.py).

    stack: (n_models, n_clips, n_classes). Without ``bias``: the weighted sum (the mean when
    the weights are 1/n_models, as fuse_job writes them); with it: the learned fusion, softmax
    of the weighted sum plus the biases (:func:`apply_learned_fusion`), or for label sets the
    per-class sigmoid of the weighted log-odds plus the biases (:data:`LEARNED_TORCH`).
    """
    if bias is None:
        return torch.einsum("m,mnc->nc", weights, stack)
    return LEARNED_TORCH[task.name](stack, weights, bias)


def top3_submission(fnames: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """DCASE 2018: fname,label with the top-3 labels separated by spaces, best first."""
    best = top_k(probs, 3)
    labels = [" ".join(classes[i] for i in row) for row in best]
    return pd.DataFrame({"fname": list(fnames), "label": labels})


#: The challenge's submission format per task: DCASE 2018 top-3 labels, or DCASE 2019 fname
#: plus one posterior column per class, named exactly as the classes (``sample_submission.csv``).
SUBMISSIONS = {SINGLE.name: top3_submission, MULTI.name: probability_frame}


def submission(
    fnames: Sequence[str], probs: np.ndarray, classes: Sequence[str], task: Task = SINGLE
) -> pd.DataFrame:
    """The challenge's submission format (:data:`SUBMISSIONS`)."""
    return SUBMISSIONS[task.name](fnames, probs, classes)


def class_index_targets(labels: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """Class indices of single-label validation clips; a label outside the classes is a clear
    error naming it, never a NaN target."""
    index = {label: i for i, label in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise KeyError(f"validation label(s) {unknown[:3]} are not among the {len(classes)} classes")
    return labels.map(index).to_numpy()


def label_set_targets(labels: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """Multi-hot rows of the validation clips' label sets ('' read as NaN: an empty set)."""
    return multi_hot(labels.fillna(""), classes)


#: The learned fusion's targets per task.
FUSION_TARGETS = {SINGLE.name: class_index_targets, MULTI.name: label_set_targets}


def fusion_targets(labels: pd.Series, classes: Sequence[str], task: Task = SINGLE) -> np.ndarray:
    """Targets of the learned fusion: class indices, or multi-hot sets (:data:`FUSION_TARGETS`)."""
    return FUSION_TARGETS[task.name](labels, classes)


#: What an unpredicted clip's submission row holds per task: an empty ``label`` (2018 format),
#: or nothing at all (2019: its posterior columns stay empty).
UNPREDICTED_ROW: dict[str, dict[str, str]] = {SINGLE.name: {"label": ""}, MULTI.name: {}}


def submission_status(test_manifest: pd.DataFrame, predicted: set[str]) -> pd.DataFrame:
    """One row per listed test clip: ``fname,status,detail``; status ``predicted`` or the
    preprocessing status that kept the clip out (``skipped_undecodable``, ...)."""
    done = test_manifest["fname"].isin(predicted)
    return pd.DataFrame(
        {
            "fname": test_manifest["fname"].to_numpy(),
            "status": np.where(done, "predicted", test_manifest["status"]),
            "detail": np.where(done, "", test_manifest["detail"]),
        }
    )
