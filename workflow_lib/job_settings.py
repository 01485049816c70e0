"""Every job's settings, built once from the resolved config (issue 20, "one settings path").

Each builder is a pure function of the resolved settings (``config.resolve_settings``) and the
job's wildcards, returns plain JSON-able values, and is unit-tested without Snakemake. The rules
call these through ``rules/common.smk`` and pass the result to the job on its command line; the
CLI turns it into the job's one typed settings object, passed by keyword.

No third-party imports beyond numpy/pandas: the Snakefile imports this module at every start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import derive_seed
from .policies import policy_named
from .task import task_of_settings

# --- data: dataset validation and demo data jobs ---------------------------------------------


# --- training: initial training and fine-tuning jobs -----------------------------------------


# --- trust: self-verification jobs (trust policies) ------------------------------------------


def chain_policy(settings: Mapping[str, Any], chain: str) -> dict[str, Any]:
    """The resolved trust-policy settings of one chain (policies.PolicySettings.from_mapping).

    The caps and correction every policy takes, and the policy's own keys (the registry's);
    a key the chain leaves out that the policy defaults to the method's (``threshold``) is
    method.self_verification's, so the chain ``self_verification`` is the paper's rule with the
    run preset's values. Other absent keys: the parameter's default, in the job.
    """
    spec = settings["chains"][chain]
    sv = settings["method"]["self_verification"]
    policy = policy_named(spec["policy"])
    resolved = {
        "name": policy.name,
        "max_per_class": spec.get("max_per_class", sv["max_per_class"]),
        "max_fraction": spec.get("max_fraction"),
        "correct_labels": spec.get("correct_labels", False),
        "min_trusted_share": settings["trust"]["min_trusted_share"],
    }
    if "correct_threshold" in spec:
        resolved["correct_threshold"] = spec["correct_threshold"]
    from_method = policy.method_defaults()
    for key in policy.keys:
        if key in spec:
            resolved[key] = spec[key]
        elif key in from_method:
            resolved[key] = sv[from_method[key]]
    return resolved


def trust_settings(settings: Mapping[str, Any], chain: str, preset: str, iteration: int) -> dict[str, Any]:
    """Settings of one trust job (iteration ``iteration`` of ``chain``'s ``preset`` models):
    the task, the K-excerpt judging, the chain's policy and where in the chain it runs. The
    keys are self_verify.TrustSettings' fields (the job builds it from them once).

    The seed does not depend on the chain, so every chain judges the same excerpts.
    """
    method, compute = settings["method"], settings["compute"]
    sv = method["self_verification"]
    return {
        "task": task_of_settings(settings).name,
        "excerpts": sv["excerpts"],
        "excerpt_frames": method["excerpt_frames"],
        "seed": derive_seed(method["seed"], "self_verify", preset, iteration),
        "amp": compute["amp"],
        "policy": chain_policy(settings, chain),
        "iteration": iteration,
        "iterations": sv["iterations"],
        "frames": method["spectrogram_frames"],
        "device": compute["device"],
    }


# --- prediction, fusion, evaluation, export --------------------------------------------------
