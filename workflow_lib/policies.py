"""Trust policies: which held-out unverified clips (and labels) the next fine-tuning trusts.

A *chain* (config key ``chains``) is an iteration-0 training set plus one of these policies.
Every policy is a plain function of

* ``judged``: the unverified clips a fold model judged (``fname``, ``fold``, ``given_label``),
  with ``posteriors`` (n, classes): the K-excerpt averaged posteriors of the clip's own fold
  model (out of fold: the model never trained on the clip), and optionally ``embeddings``
  (n, d): the same excerpts' global-average-pooled features of the last feature layer;
* ``reference``: the same quantities for each fold's *verified validation* clips (held out and
  correctly labelled: the honest place to calibrate or to propagate labels from), never one of
  the judged clips;

and returns a *proposal* per judged clip: ``candidate`` (may be trusted), ``score`` (who wins
when a class cap binds), ``trusted_label``, ``weight`` (loss weight) and the ``reason`` of a
refusal. :func:`decide` then applies the caps (absolute and/or a fraction of the class's
judged clips, highest score first, ties by file name) and optional label correction.

``paper`` is the paper's rule (docs/method.md "Self-verification"); it reproduces the
decisions of the workflow's earlier ``self_verify.decide`` exactly (tests/test_policies.py).

One registry (:data:`REGISTRY`, :func:`register_policy`) holds everything about a policy: its
function per task, its own parameters (a dataclass whose fields carry each config key's JSON
schema and a line of documentation), and its flags (correctable, needs the reference clips,
needs embeddings). The config schema's policy names and keys, the config checks and the job
settings are derived from it, so a new policy is one ``register_policy`` call (a module of
its own may make it; tests/toy_policy.py does).

Label sets (the multi-label task, ``apply_policy(..., task=MULTI)``, docs/method.md
"Multi-label mode"): the posteriors are per-class sigmoids and every given label of a clip is
judged on its own, one proposal row per (clip, given label); the caps rank the pairs of each
class (:func:`decide_labels`). Policies that decide for a whole clip (label_spreading,
weighted) register no multi-label function; the config check refuses them there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np
import pandas as pd

from .labels import label_sets, multi_hot, split_labels
from .task import MULTI, SINGLE, TASKS, Task

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
CORRECTED = "accepted_corrected"  # trusted under the predicted label (correct_labels)
LABEL_MISMATCH = "label_mismatch"  # the given label is not the argmax
BELOW_THRESHOLD = "below_threshold"  # argmax, but its (calibrated) posterior is too low
ABOVE_CEILING = "above_ceiling"  # confident beyond threshold_ceiling: teaches nothing new
CLASS_CAP = "class_cap"  # would pass, but the class already reached its cap
FLAGGED = "flagged_label_issue"  # confident learning flags the given label
SPREAD_DISAGREES = "spread_disagrees"  # label spreading assigns another label
NOT_TRUSTED = "not_trusted"  # the policy trusts no unverified clip (verified_only)

DECISION_COLUMNS = [
    "fname",
    "given_label",
    "fold",
    "predicted_label",
    "p_given",
    "p_max",
    "score",
    "trusted_label",
    "weight",
    "accepted",
    "reason",
]


# --------------------------------------------------------------------------- parameters, settings


def parameter(
    *, doc: str, schema: Mapping[str, Any], default: Any = MISSING, method_default: str = ""
) -> Any:
    """A policy parameter: a dataclass field whose metadata the registry reads. ``schema``: the
    JSON schema of its config key (chains.NAME.KEY; ``#/$defs/...`` refers to
    schemas/config.schema.yaml); ``doc``: what it means, for the schema's description;
    ``method_default``: the method.self_verification key whose value a chain that leaves the
    parameter out gets (paper's threshold: the run preset's)."""
    metadata = {"doc": doc, "schema": dict(schema), "method_default": method_default}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


FRACTION = {"$ref": "#/$defs/fraction"}


def ceiling_parameter() -> Any:
    """``threshold_ceiling``, one definition for every threshold policy (the registry refuses a
    shared key whose schema or doc differs). A clip (label) whose averaged posterior of its
    given label is above it is refused (``above_ceiling``): as in the NTU DCASE 2018 system's
    scheduled threshold with a lower and an upper bound, a clip the model is already sure of
    teaches the next fine-tuning nothing new. None (the default): no ceiling."""
    return parameter(
        default=None,
        doc="refuse a clip (label) whose averaged posterior is above this (null or absent: no ceiling)",
        schema={"oneOf": [{"type": "null"}, FRACTION]},
    )


@dataclass(frozen=True, kw_only=True)
class NoParameters:
    """A policy that reads no setting of its own (only the caps every policy takes)."""


@dataclass(frozen=True, kw_only=True)
class ThresholdParameters:
    """The paper's rule and its calibrated variant: one posterior threshold."""

    threshold: float | None = parameter(
        default=None,
        doc="posterior threshold (null: off); absent: method.self_verification.threshold",
        schema={"oneOf": [{"type": "null"}, FRACTION]},
        method_default="threshold",
    )
    threshold_ceiling: float | None = ceiling_parameter()


@dataclass(frozen=True, kw_only=True)
class ScheduleParameters:
    """A threshold moving linearly over the judging iterations (both ends required)."""

    threshold_start: float = parameter(doc="at the first judging iteration", schema=FRACTION)
    threshold_end: float = parameter(doc="at the last judging iteration", schema=FRACTION)
    threshold_ceiling: float | None = ceiling_parameter()


@dataclass(frozen=True, kw_only=True)
class SpreadingParameters:
    """scikit-learn LabelSpreading's two settings (rbf kernel on unit-norm features)."""

    gamma: float = parameter(
        default=20.0, doc="rbf kernel width", schema={"type": "number", "exclusiveMinimum": 0}
    )
    alpha: float = parameter(
        default=0.2,
        doc="clamping factor",
        schema={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    )


@dataclass(frozen=True, kw_only=True)
class PolicySettings:
    """One chain's trust policy, resolved (job_settings.chain_policy fills the defaults): its
    name, its own parameters (the registry's dataclass of that policy) and the settings every
    policy takes (caps, label correction, the low-trust warning). Build it with :meth:`of` or
    :meth:`from_mapping`, which check the keys against the registry."""

    name: str
    parameters: Any = None  # the policy's parameter dataclass; None: its defaults
    max_per_class: int | None = None  # absolute cap per trusted class; None = no cap
    max_fraction: float | None = None  # cap as a share of the class's judged clips
    correct_labels: bool = False  # trust a confidently contradicted clip as predicted
    correct_threshold: float = 0.9  # ... when the alternative label's score reaches this
    min_trusted_share: float = 0.0  # warn below this share of judged clips trusted

    def __post_init__(self) -> None:
        if self.parameters is None:  # frozen: set once, here, from the registry's defaults
            object.__setattr__(self, "parameters", policy_named(self.name).parameters())

    @classmethod
    def of(cls, name: str, **values: Any) -> PolicySettings:
        """The settings of policy ``name``: its own keys and the common ones, by keyword."""
        return cls.from_mapping({"name": name, **values})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PolicySettings:
        """From the job settings' ``policy`` mapping; a key the policy does not read is an error
        (a setting is never silently ignored)."""
        policy = policy_named(values["name"])
        own = set(policy.keys)
        stray = sorted(set(values) - own - COMMON_KEYS - {"name"})
        if stray:
            raise ValueError(f"trust policy {policy.name!r} does not read {stray}")
        return cls(
            name=policy.name,
            parameters=policy.parameters(**{k: v for k, v in values.items() if k in own}),
            **{k: v for k, v in values.items() if k in COMMON_KEYS},
        )


#: The settings every policy takes (caps, correction, warning): :class:`PolicySettings`' own.
COMMON_KEYS = frozenset(f.name for f in fields(PolicySettings)) - {"name", "parameters"}
#: Keys every chain may set whatever its policy (config chains.NAME): its start, policy and
#: description, the caps and correction, and the fine-tuning options of the chain.
CHAIN_KEYS = frozenset(
    {
        "start",
        "policy",
        "description",
        "max_per_class",
        "max_fraction",
        "correct_labels",
        "correct_threshold",
        "consistency",  # fine-tuning's consistency training (workflow_lib/consistency.py)
        "soft_relabel",  # fine-tuning's soft relabelling (workflow_lib/soft_targets.py)
        "mixup",  # fine-tuning's mixup and its partners (workflow_lib/training.py MIXUP_PARTNERS)
        "augment",  # fine-tuning's spectrogram augmentation (workflow_lib/augment.py)
        "pool",  # the unlabelled pool joins the fine-tuning (workflow_lib/pool.py)
    }
)
#: Keys that are no policy parameter: a parameter may not use them.
RESERVED_KEYS = COMMON_KEYS | CHAIN_KEYS | {"name"}


@dataclass
class Clips:
    """Clips with their out-of-fold posteriors (and features): judged or reference clips."""

    table: pd.DataFrame  # fname, fold, and given_label (judged) or label (reference)
    posteriors: np.ndarray  # (n, n_classes)
    embeddings: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def fold_rows(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.table["fold"].astype(int).to_numpy() == fold)


@dataclass(frozen=True)
class Context:
    """Where in the chain the policy runs (scheduled_threshold needs it)."""

    iteration: int = 0  # the judging iteration (its fold models judge)
    iterations: int = 1  # judging iterations in the chain (0 ... iterations-1)


Proposal = pd.DataFrame  # candidate, score, trusted_label, weight, reason, alt_label, alt_score


def _indices(labels: pd.Series, classes: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(classes)}
    return labels.map(index).to_numpy(dtype=np.int64)


def _base(judged: Clips, classes: Sequence[str], posteriors: np.ndarray) -> pd.DataFrame:
    """fname, given_label, fold, predicted_label, p_given, p_max of ``posteriors``."""
    given = _indices(judged.table["given_label"], classes)
    predicted = posteriors.argmax(axis=1) if len(posteriors) else np.zeros(0, np.int64)
    rows = np.arange(len(given))
    return pd.DataFrame(
        {
            "fname": judged.table["fname"].to_numpy(),
            "given_label": judged.table["given_label"].to_numpy(),
            "fold": judged.table["fold"].astype(int).to_numpy(),
            "predicted_label": [classes[i] for i in predicted],
            "p_given": posteriors[rows, given] if len(given) else np.zeros(0),
            "p_max": posteriors[rows, predicted] if len(given) else np.zeros(0),
        }
    )


def threshold_rule(base: pd.DataFrame, threshold: float | None, ceiling: float | None = None) -> Proposal:
    """The paper's first two conditions (docs/method.md "Self-verification"): argmax = given
    label, posterior >= threshold; with a ``ceiling``, also posterior <= ceiling (a refused
    clip above it keeps alt_score -inf: its label is right, so it is never corrected)."""
    match = base["given_label"] == base["predicted_label"]
    confident = match if threshold is None else match & (base["p_given"] >= threshold)
    above = confident & (base["p_given"] > ceiling) if ceiling is not None else confident & False
    reason = np.where(
        ~match, LABEL_MISMATCH, np.where(~confident, BELOW_THRESHOLD, np.where(above, ABOVE_CEILING, ""))
    )
    return base.assign(
        candidate=(confident & ~above).to_numpy(),
        score=base["p_given"],
        trusted_label=base["given_label"],
        weight=1.0,
        reason=reason,
        alt_label=base["predicted_label"],
        alt_score=np.where(match, -np.inf, base["p_max"]),
    )


# --------------------------------------------------------------------------- the registry

PolicyFunction = Callable[[Clips, Clips | None, Sequence[str], PolicySettings, Context], Proposal]


@dataclass(frozen=True)
class Policy:
    """Everything about one trust policy; :func:`register_policy` makes it.

    functions: {task name: the function that proposes for that task}; a task without one
    cannot run the policy (config refuses it there).
    parameters: the dataclass of its own settings (:func:`parameter` fields).
    correctable: it can refuse a clip for its label, so correct_labels may trust the predicted one.
    needs_reference: it reads the verified validation clips' posteriors (``reference``).
    needs_embeddings: it reads the fold models' pooled features too.
    meant_to_trust: False for the baseline that trusts nothing (no low-trust warning then).
    summary: what it trusts, in a line (docs/configuration.md "Trust policies").
    """

    name: str
    functions: Mapping[str, PolicyFunction]
    parameters: type = NoParameters
    correctable: bool = False
    needs_reference: bool = False
    needs_embeddings: bool = False
    meant_to_trust: bool = True
    summary: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        """Its own config keys, in the dataclass's order."""
        return tuple(f.name for f in fields(self.parameters))

    @property
    def required(self) -> tuple[str, ...]:
        """Its keys without a default: a chain must set them."""
        return tuple(f.name for f in fields(self.parameters) if f.default is MISSING)

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks it has a function for, in :data:`task.TASKS` order."""
        return tuple(name for name in TASKS if name in self.functions)

    def function(self, task: Task) -> PolicyFunction:
        """Its function for ``task``; a ValueError naming the policies that task can run."""
        if task.name not in self.functions:
            raise ValueError(
                f"trust policy {self.name!r} is {', '.join(self.task_names)} only; for the "
                f"{task.name} task one of {names_for(task)}"
            )
        return self.functions[task.name]

    def method_defaults(self) -> dict[str, str]:
        """{parameter: the method.self_verification key it defaults to}."""
        return {
            f.name: f.metadata["method_default"]
            for f in fields(self.parameters)
            if f.metadata["method_default"]
        }


#: Every trust policy by name, in registration order (the built-in ones: the end of this module).
REGISTRY: dict[str, Policy] = {}


def register_policy(
    name: str,
    functions: Mapping[Task, PolicyFunction],
    parameters: type = NoParameters,
    **flags: Any,
) -> Policy:
    """Add trust policy ``name``: ``functions`` {task: function} (a task left out cannot run it),
    ``parameters`` its settings' dataclass, ``flags`` the other :class:`Policy` fields
    (correctable, needs_reference, needs_embeddings, meant_to_trust, summary). Checked here, so
    a bad entry fails at import, not in a job: a new name, a frozen keyword-only dataclass of
    :func:`parameter` fields, no reserved key, and a key another policy also reads means the
    same (one schema and description in the config)."""
    if name in REGISTRY:
        raise ValueError(f"trust policy {name!r} is already registered")
    if not name.isidentifier() or not functions:
        raise ValueError(f"trust policy {name!r}: a name like a Python identifier and at least one task")
    if not is_dataclass(parameters) or any("schema" not in f.metadata for f in fields(parameters)):
        raise ValueError(f"trust policy {name!r}: parameters must be a dataclass of parameter() fields")
    clash = sorted({f.name for f in fields(parameters)} & RESERVED_KEYS)
    if clash:
        raise ValueError(f"trust policy {name!r}: {clash} are chain keys of every policy")
    for key, spec in parameter_specs().items():
        mine = next((f for f in fields(parameters) if f.name == key), None)
        if mine is not None and (mine.metadata["schema"], mine.metadata["doc"]) != (
            spec["schema"],
            spec["doc"],
        ):
            raise ValueError(f"trust policy {name!r}: {key} differs from the {key} of {spec['policies']}")
    policy = Policy(name, {task.name: f for task, f in functions.items()}, parameters, **flags)
    REGISTRY[name] = policy
    return policy


def policy_named(name: str) -> Policy:
    """The registered policy ``name``; a ValueError listing the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown trust policy {name!r}; one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def names_for(task: Task) -> list[str]:
    """The policies ``task`` can run, sorted."""
    return sorted(name for name, policy in REGISTRY.items() if task.name in policy.functions)


def parameter_specs() -> dict[str, dict[str, Any]]:
    """{key: {schema, doc, policies}} over every registered policy's parameters."""
    specs: dict[str, dict[str, Any]] = {}
    for policy in REGISTRY.values():
        for f in fields(policy.parameters):
            spec = specs.setdefault(
                f.name, {"schema": f.metadata["schema"], "doc": f.metadata["doc"], "policies": []}
            )
            spec["policies"].append(policy.name)
    return specs


def chain_schema_properties() -> dict[str, dict[str, Any]]:
    """The registry's part of a chain's JSON schema (config.load_schema adds it): ``policy``
    one of the registered names, and each parameter key with its schema and a description
    naming the policies that read it."""
    properties: dict[str, dict[str, Any]] = {
        "policy": {"enum": list(REGISTRY), "description": "the trust policy (workflow_lib/policies.py)"}
    }
    for key, spec in parameter_specs().items():
        properties[key] = {**spec["schema"], "description": f"{', '.join(spec['policies'])}: {spec['doc']}"}
    return properties


# --------------------------------------------------------------------------- the policies


def paper(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """The paper: argmax = given label and averaged posterior >= threshold (None: off)."""
    parameters = settings.parameters
    return threshold_rule(
        _base(judged, classes, judged.posteriors), parameters.threshold, parameters.threshold_ceiling
    )


def agreement(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """argmax = given label, no threshold (what under-confident short-trained nets still get right)."""
    return threshold_rule(_base(judged, classes, judged.posteriors), None)


def scheduled_threshold(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """The paper's rule with a threshold moving linearly from threshold_start (first judging
    iteration) to threshold_end (last one)."""
    parameters = settings.parameters
    return threshold_rule(
        _base(judged, classes, judged.posteriors),
        scheduled_value(parameters.threshold_start, parameters.threshold_end, context),
        parameters.threshold_ceiling,
    )


def scheduled_value(start: float, end: float, context: Context) -> float:
    """Linear interpolation over the judging iterations 0 ... iterations-1."""
    if context.iterations <= 1:
        return float(start)
    return float(start + (end - start) * context.iteration / (context.iterations - 1))


def fit_temperature(posteriors: np.ndarray, targets: np.ndarray) -> float:
    """Temperature T minimising the NLL of softmax(log p / T) on correctly labelled clips.

    The averaged posteriors are treated as logits via their logarithm (p^(1/T), renormalised):
    T < 1 sharpens under-confident posteriors. 1.0 when there is nothing to fit on.
    """
    # scipy.optimize: only the calibrating policies need it
    from scipy.optimize import minimize_scalar

    if len(targets) == 0:
        return 1.0
    logits = np.log(np.clip(posteriors, 1e-12, None))

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        scaled -= scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        return float(-(scaled[np.arange(len(targets)), targets] - log_norm).mean())

    best = minimize_scalar(
        nll, bounds=(math.log(0.02), math.log(50.0)), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(best.x))


def apply_temperature(posteriors: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax posteriors rescaled as if the logits were divided by ``temperature`` (log
    posteriors stand in for the logits: the softmax drops the constant)."""
    scaled = np.log(np.clip(posteriors, 1e-12, None)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def calibrated_posteriors(
    judged: Clips,
    reference: Clips,
    classes: Sequence[str],
) -> tuple[np.ndarray, dict[int, float]]:
    """Judged posteriors after per-fold temperature scaling fitted on that fold's reference
    (verified validation) clips only; returns (calibrated posteriors, {fold: temperature})."""
    overlap = set(judged.table["fname"]) & set(reference.table["fname"])
    if overlap:
        raise ValueError(f"calibration clips must not be judged clips: {sorted(overlap)[:3]}")
    out = judged.posteriors.astype(np.float64).copy()
    temperatures = {}
    targets = _indices(reference.table["label"], classes)
    for fold in sorted(set(judged.table["fold"].astype(int))):
        rows, ref = judged.fold_rows(fold), reference.fold_rows(fold)
        temperatures[fold] = fit_temperature(reference.posteriors[ref], targets[ref])
        out[rows] = apply_temperature(judged.posteriors[rows], temperatures[fold])
    return out, temperatures


def calibrated(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """The paper's rule on posteriors temperature-scaled per fold on that fold's verified
    validation clips (p_given and p_max in the decisions are the calibrated ones)."""
    if reference is None:
        raise ValueError("the calibrated policy needs the verified validation posteriors")
    posteriors, temperatures = calibrated_posteriors(judged, reference, classes)
    log.info("temperatures per fold: %s", {k: round(t, 4) for k, t in temperatures.items()})
    judged.extra["temperatures"] = temperatures
    parameters = settings.parameters
    return threshold_rule(
        _base(judged, classes, posteriors), parameters.threshold, parameters.threshold_ceiling
    )


def confident_learning(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """cleanlab.filter.find_label_issues over every judged clip's out-of-fold posteriors;
    trusted = not flagged. Score = posterior of the given label."""
    base = _base(judged, classes, judged.posteriors)
    flagged = label_issues(_indices(judged.table["given_label"], classes), judged.posteriors)
    return base.assign(
        candidate=~flagged,
        score=base["p_given"],
        trusted_label=base["given_label"],
        weight=1.0,
        reason=np.where(flagged, FLAGGED, ""),
        alt_label=base["predicted_label"],
        alt_score=np.where(base["given_label"] == base["predicted_label"], -np.inf, base["p_max"]),
    )


def label_issues(labels: np.ndarray, posteriors: np.ndarray) -> np.ndarray:
    """cleanlab's default find_label_issues mask (True = the given label looks wrong)."""
    if len(labels) == 0:
        return np.zeros(0, bool)
    # cleanlab (slow to import): only its own policy needs it
    from cleanlab.filter import find_label_issues

    probs = np.clip(posteriors, 1e-12, None)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return np.asarray(find_label_issues(labels=labels, pred_probs=probs), dtype=bool)


def label_spreading(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """Per fold, scikit-learn LabelSpreading (rbf) over unit-normalised embeddings: the fold's
    verified validation clips labelled, its judged clips unlabelled; trusted = the spread label
    equals the given one. Score = the spread distribution's mass on the trusted label."""
    # scikit-learn (1 s import): only this policy needs it
    from sklearn.semi_supervised import LabelSpreading

    if reference is None or judged.embeddings is None or reference.embeddings is None:
        raise ValueError("the label_spreading policy needs the fold models' embeddings")
    base = _base(judged, classes, judged.posteriors)
    spread = np.full(len(base), -1, dtype=np.int64)
    mass = np.zeros((len(base), len(classes)))
    targets = _indices(reference.table["label"], classes)
    for fold in sorted(set(base["fold"])):
        rows, ref = judged.fold_rows(fold), reference.fold_rows(fold)
        if len(ref) == 0:
            log.warning("fold %d has no verified validation clip: nothing to spread from", fold)
            continue
        features = _unit(np.concatenate([reference.embeddings[ref], judged.embeddings[rows]]))
        labels = np.concatenate([targets[ref], np.full(len(rows), -1)])
        model = LabelSpreading(
            kernel="rbf", gamma=settings.parameters.gamma, alpha=settings.parameters.alpha, max_iter=100
        ).fit(features, labels)
        distribution = model.label_distributions_[len(ref) :]
        mass[np.ix_(rows, model.classes_)] = np.nan_to_num(distribution)
        spread[rows] = model.classes_[np.nan_to_num(distribution).argmax(axis=1)]
    given = _indices(base["given_label"], classes)
    agrees = spread == given
    spread_label = [classes[i] if i >= 0 else "" for i in spread]
    return base.assign(
        candidate=agrees,
        score=mass[np.arange(len(base)), given],
        trusted_label=base["given_label"],
        weight=1.0,
        reason=np.where(agrees, "", SPREAD_DISAGREES),
        alt_label=spread_label,
        alt_score=np.where(agrees | (spread < 0), -np.inf, mass[np.arange(len(base)), np.maximum(spread, 0)]),
    )


def _unit(features: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norm > 0, norm, 1.0)


def given_labels(
    judged: Clips,
    classes: Sequence[str],
    candidate: bool | np.ndarray,
    weighted: bool = False,
    reason: str | np.ndarray = "",
) -> Proposal:
    """Every judged clip under its given label, scored by p(given label): all candidates, none,
    or those ``candidate`` marks (with ``reason`` per refusal); loss weight p(given label)
    (``weighted``) or 1. The policies that decide nothing per clip are this with their
    settings, and a new single-label policy that only picks clips can be too."""
    base = _base(judged, classes, judged.posteriors)
    return base.assign(
        candidate=candidate,
        score=base["p_given"],
        trusted_label=base["given_label"],
        weight=base["p_given"].astype(float) if weighted else 1.0,
        reason=reason,
        alt_label="",
        alt_score=-np.inf,
    )


def weighted(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """Every clip kept, its loss weighted by the out-of-fold posterior of its given label
    (the 3rd-place system of DCASE 2018 Task 2 down-weighted unverified clips instead of
    dropping them). A cap keeps the heaviest clips of each class."""
    return given_labels(judged, classes, candidate=True, weighted=True)


def trust_all(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """Every given label trusted (the all_labels chain: fine-tuning on every clip as labelled)."""
    return given_labels(judged, classes, candidate=True, weighted=False)


def trust_none(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """No unverified clip trusted (the verified_only chain)."""
    return given_labels(judged, classes, candidate=False, weighted=False, reason=NOT_TRUSTED)


# --------------------------------------------------------------------------- caps and decisions


def class_caps(
    judged_labels: pd.Series, classes: Sequence[str], max_per_class: int | None, max_fraction: float | None
) -> dict[str, float]:
    """Cap per class: the smaller of the absolute cap and floor(fraction x the class's judged
    clips); infinity when neither is set."""
    counts = judged_labels.value_counts()
    caps = {}
    for label in classes:
        cap = math.inf if max_per_class is None else float(max_per_class)
        if max_fraction is not None:
            cap = min(cap, math.floor(max_fraction * int(counts.get(label, 0)) + 1e-9))
        caps[label] = cap
    return caps


def decide(proposal: Proposal, classes: Sequence[str], settings: PolicySettings) -> pd.DataFrame:
    """Label correction (optional), then the per-class caps; adds ``accepted`` and ``reason``.

    Within each trusted class the highest scores win; ties go to the smaller file name, so the
    result does not depend on row order. Refused candidates do not use up a cap.
    """
    out = proposal.copy()
    if settings.correct_labels:
        fix = ~out["candidate"] & (out["alt_score"] >= settings.correct_threshold) & (out["alt_label"] != "")
        out.loc[fix, "trusted_label"] = out.loc[fix, "alt_label"]
        out.loc[fix, "score"] = out.loc[fix, "alt_score"]
        out.loc[fix, "candidate"] = True
        out.loc[fix, "reason"] = CORRECTED
    caps = class_caps(out["given_label"], classes, settings.max_per_class, settings.max_fraction)
    candidates = out[out["candidate"].astype(bool)].sort_values(
        ["trusted_label", "score", "fname"], ascending=[True, False, True]
    )
    rank = candidates.groupby("trusted_label").cumcount().to_numpy()
    limit = candidates["trusted_label"].map(caps).to_numpy(dtype=float)
    kept = rank < limit
    corrected = candidates["reason"].to_numpy() == CORRECTED
    out.loc[candidates.index, "reason"] = np.where(kept, np.where(corrected, CORRECTED, ACCEPTED), CLASS_CAP)
    out["accepted"] = out["reason"].isin([ACCEPTED, CORRECTED])
    out["weight"] = np.where(out["accepted"], out["weight"].astype(float), 0.0)
    return out[[c for c in DECISION_COLUMNS if c in out.columns]]


# --------------------------------------------------------------------------- multi-label mode
#
# In multi-label mode (dataset.layout: fsdkaggle2019) a noisy clip carries a label *set*, the
# posteriors are independent per-class sigmoids, and every given label is judged on its own:
# a clip may be trusted with a subset of its given labels. A proposal then has one row per
# (clip, given label); the caps count and rank (clip, label) pairs of each class.

NOT_PREDICTED = "label_not_predicted"  # the label's averaged sigmoid is below 0.5
PREDICTED_AT = 0.5  # a label is in the predicted set when its sigmoid reaches this

LABEL_DECISION_COLUMNS = [
    "fname",
    "given_label",
    "fold",
    "label",
    "predicted_label",
    "score",
    "weight",
    "accepted",
    "reason",
]


def label_rows(judged: Clips, classes: Sequence[str], posteriors: np.ndarray) -> pd.DataFrame:
    """One row per (judged clip, given label): fname, given_label (the whole set), fold,
    label, predicted_label (the set of classes whose sigmoid reaches 0.5), score (the
    label's averaged sigmoid in ``posteriors``)."""
    index = {label: i for i, label in enumerate(classes)}
    given = judged.table["given_label"].to_numpy()
    clip, label = [], []
    for row, cell in enumerate(given):
        for name in split_labels(cell):
            if name not in index:
                raise ValueError(f"label {name!r} of {judged.table['fname'].iloc[row]} is not a class")
            clip.append(row)
            label.append(name)
    clip = np.asarray(clip, dtype=np.int64)
    columns = np.asarray([index[name] for name in label], dtype=np.int64)
    predicted = label_sets(posteriors >= PREDICTED_AT, classes) if len(posteriors) else []
    return pd.DataFrame(
        {
            "fname": judged.table["fname"].to_numpy()[clip],
            "given_label": given[clip],
            "fold": judged.table["fold"].astype(int).to_numpy()[clip],
            "label": np.asarray(label, dtype=object),
            "predicted_label": np.asarray(predicted, dtype=object)[clip] if len(clip) else [],
            "score": posteriors[clip, columns] if len(clip) else np.zeros(0),
            "clip": clip,  # row of ``judged`` (dropped from the decisions)
            "column": columns,  # class index of ``label``
        }
    )


def label_threshold_rule(rows: pd.DataFrame, threshold: float, ceiling: float | None = None) -> Proposal:
    """A given label is a candidate when its averaged sigmoid reaches ``threshold`` (and, with
    a ``ceiling``, is not above it); a refusal says whether the label was outside the
    predicted set (< 0.5), only below the threshold, or above the ceiling."""
    confident = rows["score"] >= threshold
    predicted = rows["score"] >= PREDICTED_AT
    above = confident & (rows["score"] > ceiling) if ceiling is not None else confident & False
    reason = np.where(
        above, ABOVE_CEILING, np.where(confident, "", np.where(~predicted, NOT_PREDICTED, BELOW_THRESHOLD))
    )
    return rows.assign(candidate=(confident & ~above).to_numpy(), weight=1.0, reason=reason)


def ml_paper(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """A given label is trusted when its K-excerpt averaged sigmoid reaches the threshold
    (threshold None: when it is in the predicted set, as ``agreement``)."""
    threshold = PREDICTED_AT if settings.parameters.threshold is None else settings.parameters.threshold
    return label_threshold_rule(
        label_rows(judged, classes, judged.posteriors), threshold, settings.parameters.threshold_ceiling
    )


def ml_agreement(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """A given label is trusted when it is in the predicted set (sigmoid >= 0.5)."""
    return label_threshold_rule(label_rows(judged, classes, judged.posteriors), PREDICTED_AT)


def ml_scheduled_threshold(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """``paper`` per label with the threshold moving from threshold_start to threshold_end."""
    threshold = scheduled_value(
        settings.parameters.threshold_start, settings.parameters.threshold_end, context
    )
    return label_threshold_rule(
        label_rows(judged, classes, judged.posteriors), threshold, settings.parameters.threshold_ceiling
    )


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def fit_sigmoid_temperature(posteriors: np.ndarray, targets: np.ndarray) -> float:
    """Temperature T minimising the binary cross-entropy of sigmoid(logit(p) / T) against the
    0/1 targets of every (clip, class) of correctly labelled clips; 1.0 with nothing to fit."""
    # scipy.optimize: only the calibrating policies need it
    from scipy.optimize import minimize_scalar

    if targets.size == 0:
        return 1.0
    logits = _logit(posteriors)

    def bce(log_t: float) -> float:
        z = logits / math.exp(log_t)
        # log(1 + exp(-z)) for positives, log(1 + exp(z)) for negatives, computed stably
        return float(np.mean(np.logaddexp(0.0, np.where(targets > 0.5, -z, z))))

    best = minimize_scalar(
        bce, bounds=(math.log(0.02), math.log(50.0)), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(best.x))


def apply_sigmoid_temperature(posteriors: np.ndarray, temperature: float) -> np.ndarray:
    """Per-class sigmoids with their logits divided by ``temperature`` (multi-label
    calibration)."""
    return 1.0 / (1.0 + np.exp(-_logit(posteriors) / temperature))


def calibrated_sigmoids(
    judged: Clips, reference: Clips, classes: Sequence[str]
) -> tuple[np.ndarray, dict[int, float]]:
    """Judged sigmoids after per-fold temperature scaling fitted (BCE) on that fold's curated
    validation clips only; returns (calibrated posteriors, {fold: temperature})."""
    overlap = set(judged.table["fname"]) & set(reference.table["fname"])
    if overlap:
        raise ValueError(f"calibration clips must not be judged clips: {sorted(overlap)[:3]}")
    out = judged.posteriors.astype(np.float64).copy()
    targets = multi_hot(reference.table["label"], classes)
    temperatures = {}
    for fold in sorted(set(judged.table["fold"].astype(int))):
        rows, ref = judged.fold_rows(fold), reference.fold_rows(fold)
        temperatures[fold] = fit_sigmoid_temperature(reference.posteriors[ref], targets[ref])
        out[rows] = apply_sigmoid_temperature(judged.posteriors[rows], temperatures[fold])
    return out, temperatures


def ml_calibrated(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """``paper`` per label on sigmoids temperature-scaled per fold (score = calibrated)."""
    if reference is None:
        raise ValueError("the calibrated policy needs the curated validation posteriors")
    posteriors, temperatures = calibrated_sigmoids(judged, reference, classes)
    log.info("temperatures per fold: %s", {k: round(t, 4) for k, t in temperatures.items()})
    judged.extra["temperatures"] = temperatures
    threshold = PREDICTED_AT if settings.parameters.threshold is None else settings.parameters.threshold
    return label_threshold_rule(
        label_rows(judged, classes, posteriors), threshold, settings.parameters.threshold_ceiling
    )


def ml_trust_all(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """Every given label trusted."""
    return label_rows(judged, classes, judged.posteriors).assign(candidate=True, weight=1.0, reason="")


def ml_trust_none(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """No given label of a noisy clip trusted."""
    rows = label_rows(judged, classes, judged.posteriors)
    return rows.assign(candidate=False, weight=1.0, reason=NOT_TRUSTED)


def ml_confident_learning(
    judged: Clips, reference: Clips | None, classes: Sequence[str], settings: PolicySettings, context: Context
) -> Proposal:
    """cleanlab's multi-label find_multilabel_issues_per_class over every judged clip's
    out-of-fold sigmoids; a given label is trusted unless flagged for its class."""
    rows = label_rows(judged, classes, judged.posteriors)
    flagged = multilabel_label_issues(judged.table["given_label"], judged.posteriors, classes)
    issue = flagged[rows["clip"].to_numpy(), rows["column"].to_numpy()] if len(rows) else np.zeros(0, bool)
    return rows.assign(candidate=~issue, weight=1.0, reason=np.where(issue, FLAGGED, ""))


def multilabel_label_issues(cells: pd.Series, posteriors: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """(n_clips, n_classes) mask: True where cleanlab finds class k wrongly annotated on clip i."""
    if len(cells) == 0:
        return np.zeros((0, len(classes)), bool)
    # cleanlab (slow to import): only its own policy needs it
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class

    index = {label: i for i, label in enumerate(classes)}
    labels = [[index[name] for name in split_labels(cell)] for cell in cells]
    probs = np.clip(np.asarray(posteriors, dtype=np.float64), 1e-6, 1 - 1e-6)
    per_class = find_multilabel_issues_per_class(labels=labels, pred_probs=probs)
    # cleanlab 2.9 returns an (n, K) mask; its docs (and older versions) a list of K masks
    mask = np.asarray(per_class, dtype=bool)
    return mask.T if isinstance(per_class, list) else mask


def decide_labels(proposal: Proposal, classes: Sequence[str], settings: PolicySettings) -> pd.DataFrame:
    """The per-class caps over (clip, label) rows: within each class the highest scores win,
    ties by file name; the fraction cap counts the class's judged labels."""
    if settings.correct_labels:
        raise ValueError("correct_labels is single-label only (config.py refuses it in multi-label mode)")
    out = proposal.copy()
    caps = class_caps(out["label"], classes, settings.max_per_class, settings.max_fraction)
    candidates = out[out["candidate"].astype(bool)].sort_values(
        ["label", "score", "fname"], ascending=[True, False, True]
    )
    rank = candidates.groupby("label").cumcount().to_numpy()
    kept = rank < candidates["label"].map(caps).to_numpy(dtype=float)
    out.loc[candidates.index, "reason"] = np.where(kept, ACCEPTED, CLASS_CAP)
    out["accepted"] = out["reason"] == ACCEPTED
    out["weight"] = np.where(out["accepted"], out["weight"].astype(float), 0.0)
    return out[LABEL_DECISION_COLUMNS].reset_index(drop=True)


def low_trust(n_trusted: int, n_judged: int, policy: str, min_share: float) -> bool:
    """True when a policy that is meant to trust clips trusted none, or fewer than min_share of
    the judged clips (the iteration then fine-tunes on little more than the verified clips).
    A name this process has not registered counts as meant to trust."""
    meant = REGISTRY[policy].meant_to_trust if policy in REGISTRY else True
    if not meant or n_judged == 0:
        return False
    return n_trusted == 0 or n_trusted < min_share * n_judged


#: The caps (and correction) per task: one row per clip, or per (clip, given label).
DECIDERS: dict[str, Callable[[Proposal, Sequence[str], PolicySettings], pd.DataFrame]] = {
    SINGLE.name: decide,
    MULTI.name: decide_labels,
}
#: The columns of the decisions per task (decisions.csv, before the true labels).
DECISIONS_OF: dict[str, list[str]] = {SINGLE.name: DECISION_COLUMNS, MULTI.name: LABEL_DECISION_COLUMNS}


def apply_policy(
    judged: Clips,
    reference: Clips | None,
    classes: Sequence[str],
    settings: PolicySettings,
    context: Context = Context(),
    task: Task = SINGLE,
) -> pd.DataFrame:
    """The decisions of ``settings.name`` on ``judged`` for ``task`` (see the module
    docstring): the policy's function for the task proposes, the task's decider caps
    (:data:`DECISIONS_OF` gives the columns)."""
    propose = policy_named(settings.name).function(task)
    return DECIDERS[task.name](propose(judged, reference, classes, settings, context), classes, settings)


# --------------------------------------------------------------------------- the built-in policies

register_policy(
    "paper",
    {SINGLE: paper, MULTI: ml_paper},
    ThresholdParameters,
    correctable=True,
    summary="argmax = given label and averaged posterior >= threshold (the paper)",
)
register_policy(
    "calibrated",
    {SINGLE: calibrated, MULTI: ml_calibrated},
    ThresholdParameters,
    correctable=True,
    needs_reference=True,
    summary="paper after per-fold temperature scaling on the fold's verified validation clips",
)
register_policy(
    "confident_learning",
    {SINGLE: confident_learning, MULTI: ml_confident_learning},
    correctable=True,
    summary="every label cleanlab does not flag",
)
register_policy(
    "agreement",
    {SINGLE: agreement, MULTI: ml_agreement},
    correctable=True,
    summary="argmax = given label (multi-label: the label is in the predicted set)",
)
register_policy(
    "scheduled_threshold",
    {SINGLE: scheduled_threshold, MULTI: ml_scheduled_threshold},
    ScheduleParameters,
    correctable=True,
    summary="paper with a threshold moving linearly over the judging iterations",
)
register_policy(
    "label_spreading",
    {SINGLE: label_spreading},
    SpreadingParameters,
    correctable=True,
    needs_reference=True,
    needs_embeddings=True,
    summary="scikit-learn LabelSpreading per fold over the fold model's pooled features",
)
register_policy(
    "weighted",
    {SINGLE: weighted},
    summary="every clip, its loss weighted by the posterior of its given label",
)
register_policy("all", {SINGLE: trust_all, MULTI: ml_trust_all}, summary="every given label")
register_policy(
    "none",
    {SINGLE: trust_none, MULTI: ml_trust_none},
    meant_to_trust=False,
    summary="no unverified clip (label)",
)
