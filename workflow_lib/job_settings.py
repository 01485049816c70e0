"""Every job's settings, built once from the resolved config (issue 20, "one settings path").

Each builder is a pure function of the resolved settings (``config.resolve_settings``) and the
job's wildcards, returns plain JSON-able values, and is unit-tested without Snakemake. The rules
call these through ``rules/common.smk`` and pass the result to the job on its command line; the
CLI turns it into the job's one typed settings object, passed by keyword.

No third-party imports beyond numpy/pandas: the Snakefile imports this module at every start.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Mapping
from typing import Any

from .task import SINGLE, task_of_settings

# --- data: dataset validation and demo data jobs ---------------------------------------------


# --- training: initial training and fine-tuning jobs -----------------------------------------


def derive_seed(base: int, *parts: object) -> int:
    """A stable per-job seed: the same job always gets the same one, different jobs differ."""
    return (base + zlib.crc32("/".join(map(str, parts)).encode())) % (2**31)


def fit_settings(settings: Mapping[str, Any], preset: str, iteration: int) -> dict[str, Any]:
    """Settings of one training job: initial training (iteration 0) or fine-tuning (>= 1).

    Returns plain JSON-able values (the rule passes them on the command line, the train command
    turns them into a ``stages.TrainingJob``). ``task`` names the task for label sets only:
    the rules record these settings (less :data:`RUN_ONLY_SETTINGS`) and rerun a job whose
    record differs, so single-label jobs keep the record they had before tasks existed.
    """
    method, compute = settings["method"], settings["compute"]
    net = method["nets"][preset]
    initial = iteration == 0
    stage = method["initial_training"] if initial else method["fine_tuning"]
    fit = {
        "epochs": stage["epochs"],
        "constant_epochs": stage["constant_epochs"],
        "lr": stage["lr"] if initial else net["finetune_lr"],
        "batch_size": net["batch_size"],
        "excerpt_frames": method["excerpt_frames"],
        "mixup_alpha": net["mixup_alpha"] if initial else None,
        "seed": derive_seed(method["seed"], preset, iteration),
        "eval_batch_size": compute["eval_batch_size"],
        "amp": compute["amp"],
    }
    dropout = [method["dropout"]["conv"], method["dropout"]["head"]]
    job = {
        "preset": preset,
        "net": {**net, "dropout": dropout},
        "fit": fit,
        "frames": method["spectrogram_frames"],
        "device": compute["device"],
        "run": {"checkpoint_every": compute["checkpoint_every"], "compile": compute["compile"]},
    }
    task = task_of_settings(settings)
    return job if task is SINGLE else {**job, "task": task.name}


#: Settings of a job that change how it runs, never what it computes (paths into the job
#: settings of :func:`fit_settings` and of the prediction job): the checkpoint interval and
#: torch.compile (``run``), the whole-clip evaluation batch (``fit.eval_batch_size``, the
#: prediction job's ``batch_size``; networks in eval mode give each clip the same output in
#: any batch). Rules pass them to the job unrecorded, so changing one retrains nothing.
RUN_ONLY_SETTINGS: tuple[tuple[str, ...], ...] = (("run",), ("fit", "eval_batch_size"), ("batch_size",))


def compared_settings(job: Mapping[str, Any]) -> dict[str, Any]:
    """The job settings less :data:`RUN_ONLY_SETTINGS`: what Snakemake records and compares
    (a change reruns the job)."""
    kept = copy.deepcopy(dict(job))
    for path in RUN_ONLY_SETTINGS:
        parent = kept
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return kept


# --- trust: self-verification jobs (trust policies) ------------------------------------------


# --- prediction, fusion, evaluation, export --------------------------------------------------
