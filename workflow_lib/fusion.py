"""Fusion of the presets' predictions and the challenge submission.

docs/method.md "Model selection, prediction, fusion, submission".

The methods are a registry, :data:`FUSIONS` (name -> fit, apply, torch expression), so
``method.fusion.method`` (whose schema enum a test keeps equal to it), fuse_job and the
exported tagger never branch on a name.

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

``geometric`` (normalised geometric mean) and ``per_class`` (weights per preset and class from
the per-class validation lwlrap) are not in the paper: see "the fusion methods" below and
docs/method.md "Beyond the paper".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .labels import multi_hot
from .metrics import per_class_lwlrap, top_k
from .task import MULTI, SINGLE, Task, task_named


@dataclass(frozen=True)
class FusionSettings:
    """The fuse job's settings: config ``method.fusion`` (``method``, a :data:`FUSIONS` name; the
    learned fusion's Adam ``steps`` and ``lr``) and the task, which decides how posteriors are fused
    and what the submission looks like. Built from the job's JSON by :meth:`from_json`."""

    method: str = "mean"
    steps: int = 0
    lr: float = 0.0
    task: Task = SINGLE
    note: str = ""  # said in submission_status.csv's ``note`` column (a transductive chain's)

    @classmethod
    def from_json(cls, settings: Mapping[str, Any]) -> FusionSettings:
        """From the fuse job's ``--settings`` (job_settings.fusion_settings)."""
        return cls(
            method=settings["method"],
            steps=settings["learned_epochs"],
            lr=settings["learned_lr"],
            task=task_named(settings.get("task", SINGLE.name)),
            note=settings.get("note", ""),
        )


def probability_frame(fnames: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """fname plus one column per class."""
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "fname", list(fnames))
    return frame


def probabilities(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """A posterior table's class columns in ``classes`` order (a file's column order is
    never trusted to match the class index)."""
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
    y = torch.tensor(np.asarray(targets), dtype=dtype)  # a copy: targets may be a read-only view
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
    stack: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor | None = None,
    task: Task = SINGLE,
    method: str | None = None,
) -> torch.Tensor:
    """The fusion as one torch expression, for the exported tagger (workflow_lib/export.py).

    stack: (n_models, n_clips, n_classes). ``method``: the :data:`FUSIONS` entry whose torch
    expression fuses; None (what taggers built before the registry say): the learned fusion
    with a ``bias`` (softmax of the weighted sum plus the biases, :func:`apply_learned_fusion`,
    or for label sets the per-class sigmoid of the weighted log-odds plus the biases,
    :data:`LEARNED_TORCH`), the weighted sum without (the mean when the weights are
    1/n_models, as fuse_job writes them).
    """
    if method is None:
        method = "mean" if bias is None else "learned"
    return FUSIONS[method].torch(stack, weights, bias, task.name)


# --------------------------------------------------------------------------- the fusion methods
#
# geometric: the normalised geometric mean of the presets' posteriors. Single-label:
# exp(mean_m log p_m) renormalised to sum 1 per clip, i.e. softmax(mean_m log p_m): a class
# must be probable for every model (a product of experts), so one over-confident model cannot
# carry a class the others reject, as it can in the arithmetic mean. Multi-label: each class
# is its own yes/no distribution (p, 1 - p), so its geometric mean is taken over both outcomes
# and normalised per class: g1 / (g1 + g0) with g1 = prod p_m^(1/n), g0 = prod (1 - p_m)^(1/n),
# which is exactly sigmoid(mean_m logit p_m). Normalising over the classes instead would make
# a clip's labels compete, which a label set must not (the learned fusion keeps them apart the
# same way, module docstring).
#
# per_class: weights per (preset, class) from each preset's out-of-fold score on the verified
# validation clips: the class's lwlrap (metrics.per_class_lwlrap) for both tasks. Multi-label it
# is the DCASE 2019 metric per class; single-label (one true label per clip) it is the mean
# reciprocal rank of class c over the validation clips labelled c, the untruncated form of the
# challenge's MAP@3, so it rewards a preset whose posterior ranks c high on c's clips (what the
# top-3 submission scores) rather than only its argmax (recall). w_mc = score_mc / sum_m score_mc;
# a class no validation clip carries (score NaN) or one every preset scores 0 gets 1/n_presets
# for each preset; equal scores give equal weights. Fused: sum_m w_mc p_mc, renormalised to sum
# 1 per clip for single-label (a class's weights sum to 1, a clip's do not).

#: posteriors are clipped to at least this before their log is taken in the single-label
#: geometric fusion (a softmax output of exactly 0 would give log 0)
GEOMETRIC_FLOOR = 1e-12


def _geometric_single(stack: np.ndarray) -> np.ndarray:
    """softmax over the classes of mean_m log p_m (the normalised geometric mean)."""
    logs = np.log(np.clip(stack, GEOMETRIC_FLOOR, None)).mean(axis=0)
    logs -= logs.max(axis=1, keepdims=True)
    exp = np.exp(logs)
    return exp / exp.sum(axis=1, keepdims=True)


def _geometric_multi(stack: np.ndarray) -> np.ndarray:
    """sigmoid(mean_m logit p_m): the per-class normalised geometric mean of p and 1 - p."""
    logits = log_odds(torch.as_tensor(stack, dtype=torch.float64)).numpy().mean(axis=0)
    return 1.0 / (1.0 + np.exp(-logits))


#: The geometric fusion per task (numpy, float64), see the comment above.
GEOMETRIC = {SINGLE.name: _geometric_single, MULTI.name: _geometric_multi}

#: The geometric fusion as torch expressions per task (the exported tagger); ``weights`` are
#: the exponents 1/n_presets fuse_job writes.
GEOMETRIC_TORCH = {
    SINGLE.name: lambda stack, weights: torch.softmax(
        torch.einsum("m,mnc->nc", weights, torch.log(stack.clamp_min(GEOMETRIC_FLOOR))), dim=1
    ),
    MULTI.name: lambda stack, weights: torch.sigmoid(torch.einsum("m,mnc->nc", weights, log_odds(stack))),
}


def per_class_scores(valid_stack: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n_presets, n_classes) per-class lwlrap of each preset on the validation clips; ``truth``
    multi-hot (n_clips, n_classes). NaN for a class no clip carries."""
    return np.stack([per_class_lwlrap(truth, probs)[0] for probs in valid_stack])


def per_class_weights(scores: np.ndarray) -> np.ndarray:
    """Each class's scores normalised over the presets; equal weights where a class has no
    score (NaN) or every preset scores 0 (nothing to prefer one by)."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    totals = scores.sum(axis=0, keepdims=True)
    equal = np.full_like(scores, 1.0 / scores.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, scores / totals, equal)


def apply_per_class_fusion(stack: np.ndarray, weights: np.ndarray, task: Task = SINGLE) -> np.ndarray:
    """sum_m w_mc p_mc; single-label rows renormalised to sum 1 (see the comment above)."""
    fused = np.einsum("mc,mnc->nc", weights, stack)
    return fused / fused.sum(axis=1, keepdims=True) if task.name == SINGLE.name else fused


def _per_class_torch(stack: torch.Tensor, weights: torch.Tensor, task_name: str) -> torch.Tensor:
    """:func:`apply_per_class_fusion` in torch, for the exported tagger."""
    fused = torch.einsum("mc,mnc->nc", weights, stack)
    return fused / fused.sum(dim=1, keepdim=True) if task_name == SINGLE.name else fused


@dataclass(frozen=True)
class Validation:
    """The presets' out-of-fold posteriors of the verified validation clips (n_presets,
    n_clips, n_classes), in one clip order, and those clips' labels (the first preset's
    table's ``label`` column): what the fitted fusions learn from, never a test clip."""

    stack: np.ndarray
    labels: pd.Series


@dataclass(frozen=True)
class FusionParameters:
    """What a fusion fitted: ``weights`` (n_presets,) or, per class, (n_presets, n_classes), and
    the learned fusion's ``bias`` (n_classes,)."""

    weights: np.ndarray
    bias: np.ndarray | None = None


def _fit_equal(
    validation: Validation | None, n_presets: int, classes: Sequence[str], settings: Any
) -> FusionParameters:
    """1/n_presets per preset (mean: the weights, geometric: the exponents)."""
    return FusionParameters(np.full(n_presets, 1.0 / n_presets))


def _fit_learned(
    validation: Validation, n_presets: int, classes: Sequence[str], settings: Any
) -> FusionParameters:
    """:func:`fit_learned_fusion` on the validation clips."""
    targets = fusion_targets(validation.labels, classes, settings.task)
    weights, bias = fit_learned_fusion(
        validation.stack, targets, settings.steps, settings.lr, task=settings.task
    )
    return FusionParameters(weights, bias)


def _fit_per_class(
    validation: Validation, n_presets: int, classes: Sequence[str], settings: Any
) -> FusionParameters:
    """Per-class lwlrap weights (:func:`per_class_weights`) on the validation clips."""
    targets = fusion_targets(validation.labels, classes, settings.task)
    truth = np.eye(len(classes))[targets] if targets.ndim == 1 else targets  # single-label: one-hot
    return FusionParameters(per_class_weights(per_class_scores(validation.stack, truth)))


@dataclass(frozen=True)
class FusionMethod:
    """One entry of :data:`FUSIONS` (config ``method.fusion.method``).

    fit: (validation clips or None, n_presets, classes, FusionSettings) -> its parameters.
    apply: (test stack, parameters, task) -> fused posteriors (numpy).
    torch: (stack, weights, bias, task name) -> fused posteriors, for the exported tagger.
    reads_validation: fit needs the validation posteriors (fuse_job reads them only then).
    prefix: the name of its weight rows in fusion_weights.csv (``prefix:preset``, per class
    ``prefix:preset:class``); with ``bias:class`` rows and the weights' shape it tells the
    tagger which fusion a run wrote.
    """

    name: str
    fit: Callable[..., FusionParameters]
    apply: Callable[[np.ndarray, FusionParameters, Task], np.ndarray]
    torch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, str], torch.Tensor]
    reads_validation: bool = False
    prefix: str = "weight"
    per_class: bool = False
    learned_bias: bool = False
    summary: str = ""


#: Every fusion method by name; the schema's method.fusion.method enum equals its keys
#: (tests/test_fusion_methods.py).
FUSIONS: dict[str, FusionMethod] = {
    "mean": FusionMethod(
        "mean",
        _fit_equal,
        lambda stack, fitted, task: mean_fusion(stack),
        lambda stack, weights, bias, task: torch.einsum("m,mnc->nc", weights, stack),
        summary="the average of the presets' posteriors (the paper)",
    ),
    "learned": FusionMethod(
        "learned",
        _fit_learned,
        lambda stack, fitted, task: apply_learned_fusion(stack, fitted.weights, fitted.bias, task),
        lambda stack, weights, bias, task: LEARNED_TORCH[task](stack, weights, bias),
        reads_validation=True,
        learned_bias=True,
        summary="one weight per preset plus one bias per class, fitted on the validation clips",
    ),
    "geometric": FusionMethod(
        "geometric",
        _fit_equal,
        lambda stack, fitted, task: GEOMETRIC[task.name](stack),
        lambda stack, weights, bias, task: GEOMETRIC_TORCH[task](stack, weights),
        prefix="exponent",
        summary="the normalised geometric mean (multi-label: sigmoid of the mean log-odds)",
    ),
    "per_class": FusionMethod(
        "per_class",
        _fit_per_class,
        lambda stack, fitted, task: apply_per_class_fusion(stack, fitted.weights, task),
        lambda stack, weights, bias, task: _per_class_torch(stack, weights, task),
        reads_validation=True,
        per_class=True,
        summary="weights per (preset, class) from each preset's per-class validation lwlrap",
    ),
}


def fusion_named(name: str) -> FusionMethod:
    """The fusion ``name``; a ValueError listing the known ones otherwise."""
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion method {name!r}; one of {sorted(FUSIONS)}")
    return FUSIONS[name]


def parameter_table(
    fusion: FusionMethod, fitted: FusionParameters, presets: Sequence[str], classes: Sequence[str]
) -> pd.DataFrame:
    """fusion_weights.csv: ``parameter,value`` rows ``prefix:preset`` (per class
    ``prefix:preset:class``, preset-major), then ``bias:class`` for the learned fusion."""
    if fusion.per_class:
        names = [f"{fusion.prefix}:{p}:{c}" for p in presets for c in classes]
    else:
        names = [f"{fusion.prefix}:{p}" for p in presets]
    values = [np.ravel(fitted.weights)]
    if fitted.bias is not None:
        names += [f"bias:{c}" for c in classes]
        values.append(fitted.bias)
    return pd.DataFrame({"parameter": names, "value": np.concatenate(values)})


def read_parameter_table(
    table: pd.DataFrame, presets: Sequence[str], classes: Sequence[str]
) -> tuple[str, FusionParameters]:
    """The fusion a fusion_weights.csv table holds (the first registered one whose rows it
    has) and its parameters in ``presets`` / ``classes`` order."""
    values = table.set_index("parameter")["value"].astype(float)
    names = set(values.index)
    for fusion in FUSIONS.values():
        keys = [f"{fusion.prefix}:{p}" for p in presets]
        if fusion.per_class:
            keys = [f"{k}:{c}" for k in keys for c in classes]
        bias = [f"bias:{c}" for c in classes] if fusion.learned_bias else []
        has_bias = any(n.startswith("bias:") for n in names)
        if set(keys) <= names and set(bias) <= names and has_bias == fusion.learned_bias:
            weights = np.array([values[k] for k in keys])
            weights = weights.reshape(len(presets), len(classes)) if fusion.per_class else weights
            return fusion.name, FusionParameters(
                weights, np.array([values[b] for b in bias]) if bias else None
            )
    raise ValueError(f"no fusion of {sorted(FUSIONS)} writes the parameters {sorted(names)[:4]} ...")


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
