"""The unlabelled pool (docs/method.md "Beyond the paper", "An unlabelled pool"; config
dataset.unlabelled_audio_dir, chains.<name>.pool): recordings without any label that a chain's
trust policy may add, under their predicted label (or label set), to the next fine-tuning.

After iteration i of a chain, every fold model of iteration i judges every usable pool clip
with the K-excerpt averaging of self-verification (:func:`workflow_lib.self_verify.
excerpt_posteriors`), each fold model on the same K excerpts, and the clip's posterior is the
mean over the fold models: no fold model trained on a pool clip, so none is favoured. The pool
clip is then handed to the chain's policy exactly as a held-out unverified clip whose *given*
label is the predicted one: single-label, the class of the highest mean posterior; multi-label,
the set of classes whose mean sigmoid reaches 0.5 (a clip with an empty set has no label to
judge and is not proposed). The same decision function, caps and settings apply
(``policies.apply_policy``), in a call of its own: the pool's caps count pool clips only. So
``paper`` trusts a pool clip whose top posterior reaches the threshold, ``agreement`` and
``all`` every one (up to the caps), ``none`` none. Policies that read each fold's reference
clips (``calibrated``, ``label_spreading``) are refused for pool chains at configuration time:
a pool clip belongs to no fold.

Trusted pool clips join the training part of *every* fold of iteration i + 1 (they are in no
fold's validation part), never a validation set, so the validation figures, model selection and
the CV scores are computed on the verified clips of the folds as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import nn

from .data import ClipBank
from .labels import join_labels, label_sets
from .policies import PREDICTED_AT, Clips, apply_policy
from .self_verify import TrustSettings, excerpt_posteriors
from .task import Task

#: The ``fold`` of a pool clip in the judged table and the decisions: judged by every fold.
POOL_FOLD = -1
#: Columns of the pool list (what the next fine-tuning adds): trusted label (set), loss weight.
POOL_LIST_COLUMNS = ["fname", "label", "weight"]


def mean_fold_posteriors(models: dict[int, nn.Module], bank: ClipBank, settings: TrustSettings) -> np.ndarray:
    """(n_clips, n_classes): per clip, the mean over the fold models of each one's K-excerpt
    averaged posteriors. Every fold model draws from a generator seeded with ``settings.seed``,
    so all of them judge the same excerpts and the result depends only on the seed."""
    parts = [
        excerpt_posteriors(models[k], bank, settings, np.random.default_rng(settings.seed))
        for k in sorted(models)
    ]
    if not parts or len(bank) == 0:
        n_classes = max((getattr(m, "n_classes", 0) for m in models.values()), default=0)
        return np.zeros((len(bank), n_classes))
    return np.mean(parts, axis=0)


def predicted_labels(posteriors: np.ndarray, classes: Sequence[str], task: Task) -> list[str]:
    """The label each pool clip is proposed under: the top class (single-label) or the set of
    classes at or above 0.5, comma-joined ('' when empty; multi-label)."""
    if len(posteriors) == 0:
        return []
    if task.label_sets:
        return label_sets(posteriors >= PREDICTED_AT, classes)
    return [classes[i] for i in posteriors.argmax(axis=1)]


def pool_clips(fnames: Sequence[str], posteriors: np.ndarray, classes: Sequence[str], task: Task) -> Clips:
    """The pool as judged clips for a trust policy: ``given_label`` the predicted label (set),
    ``fold`` :data:`POOL_FOLD`. Multi-label clips with an empty predicted set are left out
    (nothing to judge); their posteriors are still written (pool_posteriors.csv)."""
    given = predicted_labels(posteriors, classes, task)
    keep = np.asarray([bool(label) for label in given], dtype=bool)
    table = pd.DataFrame(
        {
            "fname": np.asarray(list(fnames), dtype=object)[keep] if len(keep) else [],
            "fold": POOL_FOLD,
            "given_label": np.asarray(given, dtype=object)[keep] if len(keep) else [],
        }
    )
    return Clips(table.reset_index(drop=True), np.asarray(posteriors)[keep] if len(keep) else posteriors)


def decide_pool(judged: Clips, classes: Sequence[str], settings: TrustSettings) -> pd.DataFrame:
    """The chain's policy on the pool clips (no reference clips: config refuses the policies
    that need them), with its caps and settings, at the judging iteration."""
    return apply_policy(judged, None, classes, settings.policy, settings.context, settings.task)


def pool_list(decisions: pd.DataFrame, task: Task) -> pd.DataFrame:
    """The pool clips the next fine-tuning adds: fname, label (the trusted label; multi-label:
    the trusted subset of the predicted set, comma-joined), weight (the policy's loss weight;
    multi-label: the mean over the trusted labels). Sorted by fname."""
    accepted = decisions[decisions["accepted"].astype(bool)]
    if task.label_sets:
        grouped = accepted.groupby("fname")
        table = pd.DataFrame(
            {"label": grouped["label"].agg(join_labels), "weight": grouped["weight"].mean()}
        ).reset_index()
    else:
        table = accepted[["fname", "trusted_label", "weight"]].rename(columns={"trusted_label": "label"})
    if table.empty:
        return pd.DataFrame(columns=POOL_LIST_COLUMNS)
    table = table.assign(weight=table["weight"].astype(float))
    return table[POOL_LIST_COLUMNS].sort_values("fname").reset_index(drop=True)


def posterior_table(
    fnames: Sequence[str], posteriors: np.ndarray, classes: Sequence[str], task: Task
) -> pd.DataFrame:
    """pool_posteriors.csv: fname, predicted_label, one column of mean posteriors per class."""
    frame = pd.DataFrame(
        {"fname": list(fnames), "predicted_label": predicted_labels(posteriors, classes, task)}
    )
    values = posteriors if len(posteriors) else np.zeros((0, len(classes)))
    return pd.concat([frame, pd.DataFrame(values, columns=list(classes))], axis=1)
