"""Fusion of the presets' predictions and the challenge submission.

docs/method.md "Model selection, prediction, fusion, submission".

``mean``: the average of the presets' posteriors (the final system of the paper).
``learned``: the authors' fusion script's option: one weight per model plus one bias per
class, softmax of the weighted sum of the models' posteriors, fitted by cross-entropy on
out-of-fold predictions of the verified validation clips.
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


def fit_learned_fusion(
    stack: np.ndarray, targets: np.ndarray, steps: int, lr: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Fit weights (n_models,) and biases (n_classes,) by full-batch Adam on cross-entropy."""
    torch.manual_seed(seed)
    x = torch.as_tensor(stack, dtype=torch.float64)
    y = torch.as_tensor(targets, dtype=torch.int64)
    weights = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(x.shape[2], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([weights, bias], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = torch.einsum("m,mnc->nc", weights, x) + bias
        torch.nn.functional.cross_entropy(logits, y).backward()
        optimizer.step()
    return weights.detach().numpy(), bias.detach().numpy()


def apply_learned_fusion(stack: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    logits = np.einsum("m,mnc->nc", weights, stack) + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fused_posteriors(
    stack: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The fusion as one torch expression, for the exported tagger (workflow_lib/export.py).

    stack: (n_models, n_clips, n_classes). Without ``bias``: the weighted sum (the mean when
    the weights are 1/n_models, as fuse_job writes them); with it: the learned fusion, softmax
    of the weighted sum plus the biases (:func:`apply_learned_fusion`).
    """
    fused = torch.einsum("m,mnc->nc", weights, stack)
    return fused if bias is None else torch.softmax(fused + bias, dim=1)


def submission(fnames: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Challenge format: fname,label with the top-3 labels separated by spaces, best first."""
    best = top_k(probs, 3)
    labels = [" ".join(classes[i] for i in row) for row in best]
    return pd.DataFrame({"fname": list(fnames), "label": labels})
