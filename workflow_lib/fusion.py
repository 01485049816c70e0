"""Fusion of the presets' predictions and the challenge submission.

docs/method.md "Model selection, prediction, fusion, submission".

``mean``: the average of the presets' posteriors (the final system of the paper).
``learned``: the authors' fusion script's option: one weight per model plus one bias per
class, softmax of the weighted sum of the models' posteriors, fitted by cross-entropy on
out-of-fold predictions of the verified validation clips.

Multi-label mode (FSDKaggle2019 layout, per-class sigmoid posteriors): ``mean`` averages the
sigmoid posteriors the same way. ``learned`` keeps one weight per model and one bias per
class but combines the models' log-odds, ``sigmoid(sum_m w_m logit(p_m) + b)``, fitted by
binary cross-entropy on the multi-hot targets: each class is a separate yes/no decision, so a
softmax over classes would force the labels of a clip to compete, and starting from weights
1/n_models and zero biases it starts at a posterior between the models' (a weighted sum of
raw probabilities under a sigmoid would start far from them). The submission is the 2019
format: fname plus one posterior column per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .metrics import top_k


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


def fit_learned_fusion(
    stack: np.ndarray,
    targets: np.ndarray,
    steps: int,
    lr: float,
    seed: int = 0,
    multi_label: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit weights (n_models,) and biases (n_classes,) by full-batch Adam.

    Single-label: ``targets`` are class indices (n_clips,), cross-entropy of the softmax.
    Multi-label: ``targets`` are multi-hot (n_clips, n_classes), binary cross-entropy of the
    per-class sigmoid of the weighted log-odds (see the module docstring).
    """
    torch.manual_seed(seed)
    x = torch.as_tensor(stack, dtype=torch.float64)
    if multi_label:
        x = log_odds(x)
        y = torch.as_tensor(targets, dtype=torch.float64)
        if y.shape != x.shape[1:]:
            raise ValueError(f"multi-hot targets {tuple(y.shape)} do not match {tuple(x.shape[1:])}")
        loss = torch.nn.functional.binary_cross_entropy_with_logits
    else:
        y = torch.as_tensor(targets, dtype=torch.int64)
        loss = torch.nn.functional.cross_entropy
    weights = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(x.shape[2], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([weights, bias], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = torch.einsum("m,mnc->nc", weights, x) + bias
        loss(logits, y).backward()
        optimizer.step()
    return weights.detach().numpy(), bias.detach().numpy()


def apply_learned_fusion(
    stack: np.ndarray, weights: np.ndarray, bias: np.ndarray, multi_label: bool = False
) -> np.ndarray:
    """The fitted fusion's posteriors: softmax over classes, or per-class sigmoid (multi-label)."""
    if multi_label:
        logits = np.einsum(
            "m,mnc->nc", weights, log_odds(torch.as_tensor(stack, dtype=torch.float64)).numpy()
        )
        return 1.0 / (1.0 + np.exp(-(logits + bias)))
    logits = np.einsum("m,mnc->nc", weights, stack) + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fused_posteriors(
    stack: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None = None, multi_label: bool = False
) -> torch.Tensor:
    """The fusion as one torch expression, for the exported tagger (workflow_lib/export.py).

    stack: (n_models, n_clips, n_classes). Without ``bias``: the weighted sum (the mean when
    the weights are 1/n_models, as fuse_job writes them); with it: the learned fusion, softmax
    of the weighted sum plus the biases (:func:`apply_learned_fusion`), or with
    ``multi_label`` the per-class sigmoid of the weighted log-odds plus the biases.
    """
    if bias is None:
        return torch.einsum("m,mnc->nc", weights, stack)
    if multi_label:
        return torch.sigmoid(torch.einsum("m,mnc->nc", weights, log_odds(stack)) + bias)
    return torch.softmax(torch.einsum("m,mnc->nc", weights, stack) + bias, dim=1)


def submission(
    fnames: Sequence[str], probs: np.ndarray, classes: Sequence[str], multi_label: bool = False
) -> pd.DataFrame:
    """The challenge's submission format.

    Single-label (DCASE 2018): fname,label with the top-3 labels separated by spaces, best
    first. Multi-label (DCASE 2019): fname plus one posterior column per class, the column
    names exactly the class names (the 2019 ``sample_submission.csv`` layout).
    """
    if multi_label:
        return probability_frame(fnames, probs, classes)
    best = top_k(probs, 3)
    labels = [" ".join(classes[i] for i in row) for row in best]
    return pd.DataFrame({"fname": list(fnames), "label": labels})
