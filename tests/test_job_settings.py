"""Every job's settings builder (workflow_lib/job_settings.py): pure functions of the resolved
config, tested without Snakemake. One block per section; each helper adds its own."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from workflow_lib.config import derive_seed, resolve_settings

from conftest import REPO

# --- trust -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trust_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def resolved(config: dict, **changes) -> dict:
    """config.yaml (the paper preset) with top-level ``changes``, resolved."""
    return resolve_settings({**copy.deepcopy(config), "run_preset": "paper", **changes})


def test_trust_settings_are_the_typed_settings_fields(trust_config):
    from workflow_lib.job_settings import chain_policy, trust_settings

    s = resolved(trust_config)
    sv = s["method"]["self_verification"]
    built = trust_settings(s, "self_verification", "vgg13", 1)
    assert built == {
        "task": "single-label",
        "excerpts": sv["excerpts"],
        "excerpt_frames": s["method"]["excerpt_frames"],
        "seed": derive_seed(s["method"]["seed"], "self_verify", "vgg13", 1),
        "amp": s["compute"]["amp"],
        "policy": chain_policy(s, "self_verification"),
        "iteration": 1,
        "iterations": sv["iterations"],
        "frames": s["method"]["spectrogram_frames"],
        "device": s["compute"]["device"],
    }
    # every chain judges the same excerpts: the seed does not depend on the chain
    assert trust_settings(s, "agreement", "vgg13", 1)["seed"] == built["seed"]
    assert trust_settings(s, "self_verification", "vgg13", 2)["seed"] != built["seed"]


def test_trust_settings_name_the_task_instead_of_a_flag(trust_config):
    from workflow_lib.job_settings import trust_settings

    multi = copy.deepcopy(trust_config)
    multi["dataset"]["layout"] = "fsdkaggle2019"
    built = trust_settings(resolved(multi), "self_verification", "vgg13", 0)
    assert built["task"] == "multi-label" and "multi_label" not in json.dumps(built)


def test_chain_policy_resolves_the_method_defaults_and_the_policys_own_keys(trust_config):
    from workflow_lib.job_settings import chain_policy

    s = resolved(trust_config)
    common = {"max_fraction": None, "correct_labels": False, "min_trusted_share": 0.0}
    assert chain_policy(s, "self_verification") == {
        "name": "paper",
        "threshold": 0.95,
        "max_per_class": 40,
        **common,
    }
    assert chain_policy(s, "self_verification_no_threshold")["threshold"] is None
    assert chain_policy(s, "agreement") == {"name": "agreement", "max_per_class": None, **common}
    assert chain_policy(s, "label_spreading") == {
        "name": "label_spreading",
        "gamma": 20.0,
        "alpha": 0.2,
        "max_per_class": None,
        **common,
    }
    assert chain_policy(s, "scheduled_threshold") == {
        "name": "scheduled_threshold",
        "threshold_start": 0.5,
        "threshold_end": 0.95,
        "max_per_class": 40,
        **common,
    }
    fixing = copy.deepcopy(trust_config)
    fixing["chains"]["fix"] = {
        "start": "all",
        "policy": "calibrated",
        "correct_labels": True,
        "correct_threshold": 0.8,
    }
    fix = chain_policy(resolved(fixing), "fix")
    assert fix["correct_labels"] is True and fix["correct_threshold"] == 0.8 and fix["threshold"] == 0.95


def test_the_trust_job_builds_its_one_settings_object_from_the_json(trust_config):
    """What the rule puts on the command line is what the job reads, once, typed."""
    from workflow_lib.job_settings import trust_settings
    from workflow_lib.policies import ScheduleParameters
    from workflow_lib.self_verify import TrustSettings
    from workflow_lib.task import SINGLE

    s = resolved(trust_config)
    typed = TrustSettings.from_json(
        json.loads(json.dumps(trust_settings(s, "scheduled_threshold", "vgg13", 1)))
    )
    assert typed.task is SINGLE and typed.policy.name == "scheduled_threshold"
    assert typed.policy.parameters == ScheduleParameters(threshold_start=0.5, threshold_end=0.95)
    assert (
        typed.context.iteration == 1
        and typed.context.iterations == s["method"]["self_verification"]["iterations"]
    )
    assert typed.excerpts == s["method"]["self_verification"]["excerpts"] and typed.batch_size == 256
