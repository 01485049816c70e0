"""The trust-policy registry (issue 20, "registries"): one entry per policy, from which the
config schema, the config checks, the job settings and the trust job take everything.

The acceptance test registers a toy policy from a module of its own (tests/toy_policy.py) and
runs it through the settings path (config validation, job_settings.trust_settings, the JSON
on the command line, the ``self-verify`` command) into stages.self_verify_job: no file
outside tests/ changes to add it. The docs tests keep config.yaml's chain comments and
docs/configuration.md "Trust policies" equal to the registry.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from workflow_lib import policies
from workflow_lib.config import ConfigError, load_schema, resolve_settings
from workflow_lib.io import read_csv_str, write_csv
from workflow_lib.job_settings import chain_policy, trust_settings
from workflow_lib.policies import (
    REGISTRY,
    NoParameters,
    names_for,
    parameter,
    parameter_specs,
    register_policy,
)
from workflow_lib.task import MULTI, SINGLE

from conftest import REPO

CLASSES = ["a", "b", "c"]


@pytest.fixture
def toy():
    """tests/toy_policy.py imported afresh (it registers ``every_other``); the registry as it
    was afterwards, so no other test sees the toy."""
    saved = dict(REGISTRY)
    sys.modules.pop("toy_policy", None)
    yield importlib.import_module("toy_policy")
    sys.modules.pop("toy_policy", None)
    REGISTRY.clear()
    REGISTRY.update(saved)


@pytest.fixture(scope="module")
def base_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def with_chain(base: dict, chain: dict, layout: str = "fsdkaggle2018") -> dict:
    """config.yaml's demo preset on the CPU running only the chain ``toy``."""
    config = copy.deepcopy(base)
    config["chains"]["toy"] = chain
    config.update(run_chains=["toy"], run_preset="demo")
    config["compute"]["device"] = "cpu"
    config["dataset"]["layout"] = layout
    return config


# --- the acceptance test ---------------------------------------------------------------------


def write_store(tmp: Path, names: list[str], frames: int) -> Path:
    """A spectrogram store of ``names`` (random, ``frames`` long) and its manifest."""
    manifest = pd.DataFrame(
        {
            "fname": names,
            "status": "clipped",
            "shard": 0,
            "n_frames": frames,
            "offset": np.arange(len(names)) * frames,
        }
    )
    (tmp / "manifest").mkdir()
    data = np.random.default_rng(0).normal(size=(1, 128, frames * len(names))).astype(np.float32)
    np.save(tmp / "manifest" / "shard0.npy", data)
    write_csv(manifest, tmp / "manifest.csv")
    return tmp / "manifest.csv"


def constant_model(path: Path, biases: list[float]) -> Path:
    """A real single-label VGG-GAP file whose logits are ``biases`` whatever the input."""
    from workflow_lib.model import build_model

    model = build_model(1, len(biases), (0.0, 0.0))
    with torch.no_grad():
        model.features[-1].weight.zero_()
        model.features[-1].bias.copy_(torch.tensor(biases))
    torch.save(
        {"state_dict": model.state_dict(), "width": 1, "classes": CLASSES, "dropout": [0.0, 0.0]}, path
    )
    return path


def trust_inputs(tmp: Path, frames: int) -> dict[str, object]:
    """Two folds, each with a verified clip and three unverified ones, their fold models (both
    predict class a, so the paper's rule would trust only the clips labelled a)."""
    folds = pd.DataFrame(
        {
            "fname": ["v0.wav", "v1.wav", "n0.wav", "n1.wav", "n2.wav", "n3.wav", "n4.wav", "n5.wav"],
            "label": ["a", "b", "a", "b", "c", "a", "b", "c"],
            "verified": ["1", "1", "0", "0", "0", "0", "0", "0"],
            "fold": ["0", "1", "0", "1", "0", "1", "0", "1"],
        }
    )
    write_csv(folds, tmp / "folds.csv")
    write_csv(pd.DataFrame({"index": range(3), "label": CLASSES}), tmp / "classes.csv")
    write_csv(folds.drop(columns="fold").assign(path=""), tmp / "train.csv")
    return {
        "manifest": write_store(tmp, list(folds["fname"]), frames),
        "models": [f"{k}={constant_model(tmp / f'm{k}.pt', [2.0, 0.0, -1.0])}" for k in (0, 1)],
    }


def test_a_toy_policy_from_its_own_module_runs_through_settings_and_the_trust_job(toy, base_config, tmp_path):
    from workflow_lib.cli import main

    settings = resolve_settings(
        with_chain(base_config, {"start": "all", "policy": "every_other", "every": 2})
    )
    job_settings = trust_settings(settings, "toy", "vgg_gap_spec1_1", 0)
    assert job_settings["policy"] == {**chain_policy(settings, "toy"), "every": 2, "name": "every_other"}
    assert job_settings["task"] == "single-label"
    files = trust_inputs(tmp_path, job_settings["frames"])
    out = tmp_path / "trust"
    argv = ["self-verify", "--models", *files["models"], "--manifest", str(files["manifest"])]
    argv += ["--folds", str(tmp_path / "folds.csv"), "--classes", str(tmp_path / "classes.csv")]
    argv += [
        "--train",
        str(tmp_path / "train.csv"),
        "--out-dir",
        str(out),
        "--lock-dir",
        str(tmp_path / "locks"),
    ]
    assert main([*argv, "--settings", json.dumps(job_settings, sort_keys=True)]) in (0, None)

    decisions = read_csv_str(out / "decisions.csv")
    assert list(decisions["fname"]) == ["n0.wav", "n2.wav", "n4.wav", "n1.wav", "n3.wav", "n5.wav"]  # by fold
    trusted = set(decisions.loc[decisions["accepted"] == "True", "fname"])
    assert trusted == {"n0.wav", "n2.wav", "n4.wav"}  # ranks 0, 2, 4 by file name, whatever the model says
    assert set(decisions.loc[decisions["accepted"] == "False", "reason"]) == {toy.SKIPPED}
    listing = read_csv_str(out / "train_list.csv").set_index("fname")
    in_list = listing.index[listing["manually_verified"] == "1"]
    assert sorted(in_list) == ["n0.wav", "n2.wav", "n4.wav", "v0.wav", "v1.wav"]
    every_third = dict(job_settings, policy={**job_settings["policy"], "every": 3})
    assert main([*argv, "--settings", json.dumps(every_third)]) in (0, None)
    again = read_csv_str(out / "decisions.csv")
    assert set(again.loc[again["accepted"] == "True", "fname"]) == {"n0.wav", "n3.wav"}


def test_the_toy_policy_gets_the_config_checks_of_a_built_in_one(toy, base_config):
    """The schema's enum and keys come from the registry: the toy's key is typed, a key it does
    not read is refused, and it is refused for the multi-label task (no function there)."""
    assert (
        "every_other"
        in load_schema()["properties"]["chains"]["additionalProperties"]["properties"]["policy"]["enum"]
    )
    resolve_settings(with_chain(base_config, {"start": "all", "policy": "every_other"}))  # every: its default
    cases = [
        ({"every": 0}, "chains.toy.every: 0 is less than the minimum of 1"),
        ({"every": 2, "threshold": 0.5}, "chains.toy: policy every_other does not read ['threshold']"),
        ({"correct_labels": True}, "policy every_other never refuses a clip for its label"),
    ]
    for keys, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            resolve_settings(with_chain(base_config, {"start": "all", "policy": "every_other", **keys}))
    with pytest.raises(ConfigError, match=r"chains\.toy\.policy: every_other is single-label only"):
        resolve_settings(with_chain(base_config, {"start": "all", "policy": "every_other"}, "fsdkaggle2019"))


def test_without_the_toy_module_the_policy_is_unknown(base_config):
    assert "every_other" not in REGISTRY
    with pytest.raises(ConfigError, match=r"chains\.toy\.policy: 'every_other' is not one of \['paper'"):
        resolve_settings(with_chain(base_config, {"start": "all", "policy": "every_other"}))


def test_the_schema_takes_the_policy_names_and_keys_from_the_registry():
    """What schemas/config.schema.yaml spelt out before the registry, now derived from it."""
    chain = load_schema()["properties"]["chains"]["additionalProperties"]["properties"]
    assert chain["policy"]["enum"] == list(REGISTRY) == [
        "paper", "calibrated", "confident_learning", "agreement", "scheduled_threshold",
        "label_spreading", "weighted", "all", "none",
    ]  # fmt: skip
    assert chain["threshold"] == {
        "oneOf": [{"type": "null"}, {"$ref": "#/$defs/fraction"}],
        "description": "paper, calibrated: posterior threshold (null: off); absent: "
        "method.self_verification.threshold",
    }
    assert chain["alpha"] == {
        "type": "number",
        "exclusiveMinimum": 0,
        "exclusiveMaximum": 1,
        "description": "label_spreading: clamping factor",
    }
    assert {"start", "max_per_class", "correct_labels", "description"} <= set(chain)  # the file's own


# --- the registry's own checks --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Clashing:
    """A parameter with another policy's key but another meaning."""

    threshold: float = parameter(default=0.5, doc="something else", schema={"type": "number"})


@dataclass(frozen=True, kw_only=True)
class Reserved:
    max_per_class: int = parameter(default=1, doc="a cap", schema={"type": "integer"})


@dataclass(frozen=True, kw_only=True)
class Untyped:
    every: int = 2


@pytest.mark.parametrize(
    "name,parameters,message",
    [
        ("paper", NoParameters, "already registered"),
        ("bad name", NoParameters, "identifier"),
        ("clash", Clashing, "threshold differs from the threshold of ['paper', 'calibrated']"),
        ("reserved", Reserved, "['max_per_class'] are chain keys of every policy"),
        ("untyped", Untyped, "a dataclass of parameter() fields"),
    ],
)
def test_a_bad_registration_fails_at_import(name, parameters, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        register_policy(name, {SINGLE: policies.trust_all}, parameters)
    assert name == "paper" or name not in REGISTRY


def test_policy_settings_refuse_keys_the_policy_does_not_read():
    with pytest.raises(ValueError, match=r"trust policy 'agreement' does not read \['threshold'\]"):
        policies.PolicySettings.of("agreement", threshold=0.5)
    with pytest.raises(ValueError, match="unknown trust policy 'magic'"):
        policies.PolicySettings.of("magic")
    with pytest.raises(TypeError):
        policies.PolicySettings.of("scheduled_threshold", threshold_start=0.5)  # threshold_end has no default


# --- the documentation says what the registry holds ----------------------------------------


def built_in() -> dict[str, policies.Policy]:
    """The policies workflow_lib registers (not a test's)."""
    return {
        name: p
        for name, p in REGISTRY.items()
        if all(f.__module__.startswith("workflow_lib.") for f in p.functions.values())
    }


def test_config_yaml_chain_comments_name_every_policy_and_its_keys():
    lines = (REPO / "config.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   policy "))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("#" + " " * 19):
            break
        block.append(line)
    named = re.findall(r"[a-z_]+", " ".join(block).split("(")[0].replace("#   policy", ""))
    assert named == list(built_in())
    text = "\n".join(lines)
    for key, spec in parameter_specs().items():
        line = next(
            (x for x in lines if x.startswith("#   ") and re.search(rf"\b{key}\b", x.split(":")[0])), ""
        )
        assert f"{', '.join(spec['policies'])}:" in line, (key, line)
    multi = re.search(r"a chain\n# in run_chains must then use (.+?), without", text, re.S)
    assert multi, "config.yaml: the multi-label sentence of the chain comments"
    listed = re.findall(r"[a-z_]+", multi.group(1).replace("\n#", " ").replace(" or ", ", "))
    assert sorted(listed) == names_for(MULTI)


def test_configuration_md_lists_every_policy_with_its_tasks_and_keys():
    text = (REPO / "docs" / "configuration.md").read_text()
    section = text.split("## Trust policies", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        documented[cells[0].strip("`")] = (cells[1], cells[2], cells[3])
    assert list(documented) == list(built_in())
    for name, policy in built_in().items():
        tasks, keys, correctable = documented[name]
        assert tasks == ", ".join(policy.task_names), name
        assert keys == (", ".join(f"`{k}`" for k in policy.keys) or "-"), name
        assert correctable == ("yes" if policy.correctable else "no"), name
