"""Iterative self-verification (docs/method.md "Self-verification").

Each fold model judges only the unverified clips of its own validation part (clips it never
trained on). Per clip it averages the posteriors of K random excerpts; the clip's given label
is trusted when it is the argmax, its averaged posterior reaches the threshold, and its class
has not yet reached the cap (highest posteriors first). The new training list is recomputed
from the original one at every iteration, never accumulated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import ClipBank
from .dataset import TOTAL_ROW
from .training import autocast_for

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
LABEL_MISMATCH = "label_mismatch"       # the given label is not the argmax
BELOW_THRESHOLD = "below_threshold"     # argmax, but its averaged posterior is too low
CLASS_CAP = "class_cap"                 # would pass, but the class already has max_per_class

DECISION_COLUMNS = ["fname", "given_label", "fold", "predicted_label", "p_given", "p_max",
                    "accepted", "reason"]


@dataclass(frozen=True)
class SelfVerifySettings:
    excerpts: int                 # K
    threshold: float | None       # None: off (the authors' script as they ran it)
    max_per_class: int
    excerpt_frames: int
    seed: int
    batch_size: int = 256         # excerpts per forward pass
    amp: bool = True


@torch.no_grad()
def excerpt_posteriors(model: nn.Module, bank: ClipBank, settings: SelfVerifySettings,
                       rng: np.random.Generator) -> np.ndarray:
    """Average of the posteriors of K random excerpts per clip: (n_clips, n_classes), float64."""
    model.eval()
    k, length = settings.excerpts, settings.excerpt_frames
    clips_per_batch = max(1, settings.batch_size // k)
    averaged = []
    for start in range(0, len(bank), clips_per_batch):
        clips = torch.arange(start, min(start + clips_per_batch, len(bank))).repeat_interleave(k)
        starts = bank.random_starts(len(clips), length, rng)
        with autocast_for(bank.device, settings.amp):
            logits = model(bank.excerpts(clips, starts, length))
        probs = torch.softmax(logits.float(), dim=1).double().cpu()
        averaged.append(probs.view(-1, k, probs.shape[1]).mean(dim=1))
    n_classes = getattr(model, "n_classes", 0)
    return torch.cat(averaged).numpy() if averaged else np.zeros((0, n_classes))


def judge(posteriors: np.ndarray, given: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Per clip: predicted label, posterior of the given label and of the argmax."""
    predicted = posteriors.argmax(axis=1)
    rows = np.arange(len(given))
    return pd.DataFrame({"given_label": [classes[i] for i in given],
                         "predicted_label": [classes[i] for i in predicted],
                         "p_given": posteriors[rows, given], "p_max": posteriors[rows, predicted]})


def decide(judged: pd.DataFrame, threshold: float | None, max_per_class: int) -> pd.DataFrame:
    """Apply the three conditions; add ``accepted`` and ``reason`` (the first failed condition).

    The cap keeps the highest posteriors of each class (ties broken by file name, so the result
    does not depend on row order).
    """
    out = judged.copy()
    match = out["given_label"] == out["predicted_label"]
    confident = match if threshold is None else match & (out["p_given"] >= threshold)
    out["reason"] = np.where(~match, LABEL_MISMATCH, np.where(~confident, BELOW_THRESHOLD, ""))
    candidates = out[confident].sort_values(["given_label", "p_given", "fname"],
                                            ascending=[True, False, True])
    rank = candidates.groupby("given_label").cumcount()
    out.loc[candidates.index, "reason"] = np.where(rank < max_per_class, ACCEPTED, CLASS_CAP)
    out["accepted"] = out["reason"] == ACCEPTED
    return out


def new_training_list(folds: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """train.csv layout: manually_verified = 1 for the original verified and the accepted clips."""
    accepted = set(decisions.loc[decisions["accepted"], "fname"])
    verified = (folds["verified"].astype(int) == 1) | folds["fname"].isin(accepted)
    return pd.DataFrame({"fname": folds["fname"], "label": folds["label"],
                         "manually_verified": verified.astype(int)})


def precision_table(decisions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per class and overall: unverified clips judged, accepted, and (with true labels) how many
    of each were correctly labelled. ``precision`` is that of the accepted labels,
    ``unverified_precision`` that of all judged unverified labels (the baseline it improves on).
    """
    has_truth = "true_label" in decisions and (decisions["true_label"] != "").all() and len(decisions)
    frame = decisions.assign(correct=(decisions["given_label"] == decisions.get("true_label", ""))
                             if has_truth else np.nan)
    rows = []
    for label, group in [*((c, frame[frame["given_label"] == c]) for c in classes), (TOTAL_ROW, frame)]:
        accepted = group[group["accepted"]]
        row = {"label": label, "n_unverified": len(group), "n_accepted": len(accepted)}
        if has_truth:
            row.update(n_accepted_correct=int(accepted["correct"].sum()),
                       precision=accepted["correct"].mean() if len(accepted) else np.nan,
                       unverified_precision=group["correct"].mean() if len(group) else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def verify_fold(model: nn.Module, bank: ClipBank, clips: pd.DataFrame, classes: list[str],
                settings: SelfVerifySettings, rng: np.random.Generator) -> pd.DataFrame:
    """Judge one fold's held-out unverified clips with that fold's model."""
    index = {label: i for i, label in enumerate(classes)}
    posteriors = excerpt_posteriors(model, bank, settings, rng)
    judged = judge(posteriors, clips["label"].map(index).to_numpy(dtype=np.int64), classes)
    judged.insert(0, "fname", clips["fname"].to_numpy())
    judged.insert(2, "fold", clips["fold"].astype(int).to_numpy())
    return judged


def self_verify(models: dict[int, nn.Module], banks: dict[int, ClipBank],
                unverified: dict[int, pd.DataFrame], classes: list[str],
                settings: SelfVerifySettings) -> pd.DataFrame:
    """Judge every fold's held-out unverified clips, then decide across folds (the cap is global)."""
    rng = np.random.default_rng(settings.seed)
    judged = [verify_fold(models[k], banks[k], unverified[k], classes, settings, rng)
              for k in sorted(models)]
    table = pd.concat(judged, ignore_index=True) if judged else pd.DataFrame(columns=DECISION_COLUMNS[:6])
    return decide(table, settings.threshold, settings.max_per_class)[DECISION_COLUMNS]


def read_decisions(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"fname": str, "given_label": str, "predicted_label": str})
    table["accepted"] = table["accepted"].astype(bool)
    return table
