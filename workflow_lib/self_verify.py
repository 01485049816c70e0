"""Iterative self-verification (docs/method.md "Self-verification"): the judging half.

Each fold model judges only the unverified clips of its own validation part (clips it never
trained on). Per clip it averages the posteriors of K random excerpts. Which clips are then
trusted is the chain's trust policy (workflow_lib/policies.py); the paper's rule (argmax =
given label, averaged posterior >= threshold, cap per class, highest posteriors first) is the
policy ``paper``. The new training list is recomputed from the original one at every
iteration, never accumulated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import ClipBank
from .dataset import TOTAL_ROW
from .labels import join_labels, split_labels
from .policies import (  # re-exported: the decision vocabulary
    ACCEPTED,
    BELOW_THRESHOLD,
    CLASS_CAP,
    CORRECTED,
    DECISION_COLUMNS,
    LABEL_MISMATCH,
    Clips,
    Context,
    PolicySettings,
    apply_policy,
    threshold_rule,
)
from .policies import decide as decide_proposal
from .task import MULTI, SINGLE, Task, task_named
from .training import autocast_for

log = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED",
    "BELOW_THRESHOLD",
    "CLASS_CAP",
    "CORRECTED",
    "DECISION_COLUMNS",
    "LABEL_MISMATCH",
    "TrustSettings",
    "decide",
    "excerpt_posteriors",
    "judge_folds",
    "label_precision_table",
    "new_label_list",
    "new_training_list",
    "precision_table",
    "self_verify",
    "with_truth",
]


@dataclass(frozen=True, kw_only=True)
class TrustSettings:
    """One trust job's settings, typed: job_settings.trust_settings' keys, built once from its
    JSON (:meth:`from_json`) and passed by keyword. Everything the judging and the policy read,
    and nothing twice (the policy's threshold and caps live in ``policy`` only)."""

    task: Task = SINGLE  # softmax and a decision per clip, or sigmoids and one per given label
    excerpts: int  # K
    excerpt_frames: int
    seed: int
    amp: bool = True
    batch_size: int = 256  # excerpts per forward pass (not a job setting: the default)
    policy: PolicySettings
    iteration: int = 0  # the judging iteration (its fold models judge)
    iterations: int = 1  # judging iterations in the chain
    frames: int = 400  # spectrogram frames of a stored clip
    device: str = "auto"

    @property
    def context(self) -> Context:
        """Where in the chain the policy runs."""
        return Context(self.iteration, self.iterations)

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> TrustSettings:
        """From the job settings (names for the task and the policy, a mapping for the policy)."""
        return cls(
            **{
                **values,
                "task": task_named(values["task"]),
                "policy": PolicySettings.from_mapping(values["policy"]),
            }
        )


@torch.no_grad()
def excerpt_posteriors(
    model: nn.Module,
    bank: ClipBank,
    settings: TrustSettings,
    rng: np.random.Generator,
    embeddings: bool = False,
):
    """Average of the posteriors of K random excerpts per clip: (n_clips, n_classes), float64
    (the task's activation: a softmax, or per-class sigmoids).

    embeddings=True: also the average over the same excerpts of the globally pooled output of
    the last feature layer, (n_clips, features); the posteriors are the same numbers.
    """
    model.eval()
    k, length = settings.excerpts, settings.excerpt_frames
    clips_per_batch = max(1, settings.batch_size // k)
    averaged, pooled = [], []
    if embeddings and not hasattr(model, "forward_with_embedding"):
        raise ValueError("embeddings need a network with forward_with_embedding (workflow_lib.model)")
    for start in range(0, len(bank), clips_per_batch):
        clips = torch.arange(start, min(start + clips_per_batch, len(bank))).repeat_interleave(k)
        starts = bank.random_starts(len(clips), length, rng)
        with autocast_for(bank.device, settings.amp):
            inputs = bank.excerpts(clips, starts, length)
            if embeddings:
                logits, feats = model.forward_with_embedding(inputs)
                feats = feats.double().cpu()
                pooled.append(feats.view(-1, k, feats.shape[1]).mean(dim=1))
            else:
                logits = model(inputs)
        probs = settings.task.activation(logits).double().cpu()
        averaged.append(probs.view(-1, k, probs.shape[1]).mean(dim=1))
    n_classes = getattr(model, "n_classes", 0)
    posteriors = torch.cat(averaged).numpy() if averaged else np.zeros((0, n_classes))
    if not embeddings:
        return posteriors
    size = getattr(model, "embedding_size", 0)
    return posteriors, (torch.cat(pooled).numpy() if pooled else np.zeros((0, size)))


def judge_folds(
    models: dict[int, nn.Module],
    banks: dict[int, ClipBank],
    clips: dict[int, pd.DataFrame],
    settings: TrustSettings,
    rng: np.random.Generator,
    label_column: str,
    embeddings: bool = False,
) -> Clips:
    """Each fold model's K-excerpt posteriors (and embeddings) of its own fold's clips.

    ``clips[k]``: fname, label, fold. The folds are judged in order with one generator, so
    the excerpts depend only on the seed and the clip lists.
    """
    tables, posteriors, features = [], [], []
    for k in sorted(models):
        part = clips[k]
        result = excerpt_posteriors(models[k], banks[k], settings, rng, embeddings)
        probs, feats = result if embeddings else (result, None)
        tables.append(
            pd.DataFrame(
                {
                    "fname": part["fname"].to_numpy(),
                    "fold": part["fold"].astype(int).to_numpy(),
                    label_column: part["label"].to_numpy(),
                }
            )
        )
        posteriors.append(probs)
        features.append(feats)
    table = (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(columns=["fname", "fold", label_column])
    )
    n_classes = max((p.shape[1] for p in posteriors), default=0)
    stacked = np.concatenate(posteriors) if posteriors else np.zeros((0, n_classes))
    return Clips(table, stacked, np.concatenate(features) if embeddings and features else None)


def decide(judged: pd.DataFrame, threshold: float | None, max_per_class: int | None) -> pd.DataFrame:
    """The paper policy on a table of judged clips (fname, given_label, predicted_label,
    p_given, p_max): adds ``accepted`` and ``reason`` (the first failed condition)."""
    classes = sorted(set(judged["given_label"]) | set(judged["predicted_label"]))
    proposal = threshold_rule(judged, threshold)
    return decide_proposal(
        proposal, classes, PolicySettings.of("paper", threshold=threshold, max_per_class=max_per_class)
    )


def self_verify(
    models: dict[int, nn.Module],
    banks: dict[int, ClipBank],
    unverified: dict[int, pd.DataFrame],
    classes: list[str],
    settings: TrustSettings,
) -> pd.DataFrame:
    """Judge every fold's held-out unverified clips, then decide across folds with
    ``settings.policy`` (the cap is global)."""
    judged = judge_folds(
        models, banks, unverified, settings, np.random.default_rng(settings.seed), "given_label"
    )
    if len(judged.posteriors) == 0:
        judged.posteriors = np.zeros((0, len(classes)))
    return apply_policy(judged, None, classes, settings.policy, settings.context, settings.task)


def new_training_list(folds: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """train.csv layout: manually_verified = 1 for the original verified and the accepted
    clips, ``label`` the trusted one, ``weight`` the loss weight (1 for verified clips)."""
    accepted = decisions[decisions["accepted"].astype(bool)]
    verified = folds["verified"].astype(int) == 1
    names = accepted["fname"]
    trusted_label = dict(zip(names, accepted["trusted_label"])) if "trusted_label" in accepted else {}
    weight = dict(zip(names, accepted["weight"] if "weight" in accepted else np.ones(len(names))))
    in_list = verified | folds["fname"].isin(set(names))
    mapped = folds["fname"].map(trusted_label).astype(object)
    label = np.where(verified | mapped.isna(), folds["label"], mapped)
    weights = np.where(verified, 1.0, folds["fname"].map(weight).fillna(0.0).astype(float))
    return pd.DataFrame(
        {"fname": folds["fname"], "label": label, "manually_verified": in_list.astype(int), "weight": weights}
    )


def precision_table(decisions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per class (of the given label) and overall: unverified clips judged, accepted, and (with
    true labels) how many of each were correctly labelled. ``precision``: trusted labels that
    are true; ``recall``: correctly labelled judged clips that were trusted (under their
    label); ``unverified_precision``: all judged given labels (the baseline it improves on).
    """
    has_truth = "true_label" in decisions and (decisions["true_label"] != "").all() and len(decisions)
    trusted = decisions.get("trusted_label", decisions["given_label"])
    frame = decisions.assign(
        correct=(decisions["given_label"] == decisions.get("true_label", "")) if has_truth else np.nan,
        trusted_correct=(trusted == decisions.get("true_label", "")) if has_truth else np.nan,
    )
    rows = []
    for label, group in [*((c, frame[frame["given_label"] == c]) for c in classes), (TOTAL_ROW, frame)]:
        accepted = group[group["accepted"].astype(bool)]
        row = {"label": label, "n_unverified": len(group), "n_accepted": len(accepted)}
        if has_truth:
            n_correct = int(group["correct"].sum())
            kept = int((accepted["correct"] & accepted["trusted_correct"]).sum())
            row.update(
                n_accepted_correct=int(accepted["trusted_correct"].sum()),
                precision=accepted["trusted_correct"].mean() if len(accepted) else np.nan,
                unverified_precision=group["correct"].mean() if len(group) else np.nan,
                n_correct=n_correct,
                recall=kept / n_correct if n_correct else np.nan,
            )
        rows.append(row)
    return pd.DataFrame(rows)


def with_truth(decisions: pd.DataFrame, truth: pd.Series, task: Task = SINGLE) -> pd.DataFrame:
    """Adds ``true_label`` (the clip's true label, or set) when it is known for every judged
    clip, and what the task's tables count as right (label sets: ``correct``)."""
    if not len(decisions) or not len(truth):
        return decisions
    known = decisions["fname"].map(truth)
    if known.isna().any() or (known == "").any():
        return decisions
    return TABLES[task.name].mark(decisions.assign(true_label=known))


# --- label sets (the multi-label task): decisions per (clip, given label) --------------------


def label_in_truth(decisions: pd.DataFrame) -> pd.DataFrame:
    """Adds ``correct``: 1 when the judged label is in the clip's true set."""
    correct = [
        int(label in split_labels(true)) for label, true in zip(decisions["label"], decisions["true_label"])
    ]
    return decisions.assign(correct=correct)


def new_label_list(folds: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """Multi-label :func:`new_training_list`: curated clips with their set; a noisy clip with
    its trusted subset (manually_verified 1) when the subset is not empty, else its given set
    with manually_verified 0; ``weight`` the mean weight of its trusted labels."""
    accepted = decisions[decisions["accepted"].astype(bool)]
    subsets = accepted.groupby("fname")["label"].agg(join_labels)
    weights = accepted.groupby("fname")["weight"].mean()
    verified = folds["verified"].astype(int) == 1
    subset = folds["fname"].map(subsets)
    in_list = verified | subset.notna()
    label = np.where(verified | subset.isna(), folds["label"], subset)
    weight = np.where(verified, 1.0, folds["fname"].map(weights).fillna(0.0).astype(float))
    return pd.DataFrame(
        {"fname": folds["fname"], "label": label, "manually_verified": in_list.astype(int), "weight": weight}
    )


def label_precision_table(decisions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Multi-label :func:`precision_table`, counting (clip, given label) pairs of each judged
    class. With true sets (``correct``): ``precision`` = trusted labels that are true;
    ``recall`` = true given labels that were trusted; ``unverified_precision`` = given labels
    that are true; ``n_true`` = the class's labels in the judged clips' true sets (including
    true labels that were not given, which no policy can trust) and ``true_recall`` = trusted
    true labels / n_true."""
    has_truth = "correct" in decisions and len(decisions) > 0
    true_sets = {}
    if has_truth:
        clips = decisions.drop_duplicates("fname")
        true_sets = dict.fromkeys(classes, 0)
        for cell in clips["true_label"]:
            for label in split_labels(cell):
                true_sets[label] = true_sets.get(label, 0) + 1
    rows = []
    for label, group in [*((c, decisions[decisions["label"] == c]) for c in classes), (TOTAL_ROW, decisions)]:
        accepted = group[group["accepted"].astype(bool)]
        row = {"label": label, "n_unverified": len(group), "n_accepted": len(accepted)}
        if has_truth:
            n_correct, kept = int(group["correct"].sum()), int(accepted["correct"].sum())
            n_true = sum(true_sets.values()) if label == TOTAL_ROW else true_sets.get(label, 0)
            row.update(
                n_accepted_correct=kept,
                precision=kept / len(accepted) if len(accepted) else np.nan,
                unverified_precision=n_correct / len(group) if len(group) else np.nan,
                n_correct=n_correct,
                recall=kept / n_correct if n_correct else np.nan,
                n_true=n_true,
                true_recall=kept / n_true if n_true else np.nan,
            )
        rows.append(row)
    return pd.DataFrame(rows)


def read_decisions(path: Path) -> pd.DataFrame:
    """A decisions.csv with its label columns read as strings (a class named \"1\" must not
    become the number 1)."""
    table = pd.read_csv(
        path,
        dtype={
            "fname": str,
            "given_label": str,
            "predicted_label": str,
            "trusted_label": str,
            "label": str,
            "true_label": str,
        },
        keep_default_na=False,
    )
    table["accepted"] = table["accepted"].astype(bool)
    return table


@dataclass(frozen=True)
class TaskTables:
    """What turns one task's decisions into the trust job's tables, selected by task name."""

    mark: Callable[[pd.DataFrame], pd.DataFrame]  # decisions with true labels: what is right
    precision: Callable[[pd.DataFrame, list[str]], pd.DataFrame]  # per_class.csv
    training_list: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]  # the next train_list.csv


TABLES: dict[str, TaskTables] = {
    SINGLE.name: TaskTables(lambda decisions: decisions, precision_table, new_training_list),
    MULTI.name: TaskTables(label_in_truth, label_precision_table, new_label_list),
}
