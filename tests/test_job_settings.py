"""Job settings builders (workflow_lib/job_settings.py): pure functions of the resolved config,
checked here without Snakemake. One block per section of the module."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from workflow_lib.config import resolve_settings
from workflow_lib.demo import GENERATORS, DemoDataJob
from workflow_lib.fusion import FusionSettings
from workflow_lib.job_settings import (
    RUN_ONLY_SETTINGS,
    compared_settings,
    demo_data_settings,
    derive_seed,
    fit_settings,
    validation_settings,
)
from workflow_lib.task import MULTI, SINGLE

from conftest import REPO

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())

# --- data


def _resolved(**dataset) -> dict:
    config = copy.deepcopy(CONFIG)
    config["dataset"].update(dataset)
    return resolve_settings(config)


def test_validation_settings_hold_only_the_keys_the_layout_reads():
    """Single-label: exactly the settings of before the multi-label layout (same job, no rerun)."""
    single = validation_settings(_resolved())
    assert sorted(single) == sorted(
        [
            "train_csv",
            "test_csv",
            "train_audio_dir",
            "test_audio_dir",
            "true_labels_csv",
            "follow_external_symlinks",
        ]
    )
    multi = validation_settings(_resolved(layout="fsdkaggle2019"))
    assert (
        multi["layout"] == "fsdkaggle2019"
        and "train_csv" not in multi
        and "train_audio_dir" not in multi
        and multi["noisy_csv"] == "train_noisy.csv"
    )


def test_validation_settings_json_is_unchanged_for_a_single_label_run():
    """The rule's params (sorted JSON) of a single-label run, byte for byte as before tasks."""
    settings = _resolved()
    expected = {k: v for k, v in settings["dataset"].items() if k not in ("layout",) and "curated" not in k}
    expected = {k: v for k, v in expected.items() if "noisy" not in k and not k.startswith("unlabelled_")}
    assert json.dumps(validation_settings(settings), sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_demo_data_settings_name_the_task_only_when_multi_label():
    single = _resolved()
    assert demo_data_settings(single) == single["demo_data"]
    assert "task" not in demo_data_settings(single)
    multi = _resolved(layout="fsdkaggle2019")
    assert demo_data_settings(multi) == {**multi["demo_data"], "task": "multi-label"}


def test_demo_data_job_reads_the_task_back_and_keeps_it_out_of_the_synthesis(tmp_path):
    multi = DemoDataJob.from_settings(tmp_path, demo_data_settings(_resolved(layout="fsdkaggle2019")))
    assert multi.task is MULTI and "task" not in multi.synthesis
    single = DemoDataJob.from_settings(tmp_path, demo_data_settings(_resolved()))
    assert single.task is SINGLE and dict(single.synthesis) == _resolved()["demo_data"]
    assert set(GENERATORS) == {SINGLE.name, MULTI.name}


@pytest.fixture(scope="module")
def base_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def settings_of(config: dict, **changes) -> dict:
    """The resolved settings of ``config`` with top-level ``changes``."""
    return resolve_settings(copy.deepcopy(config) | changes)


def multi_label_settings(config: dict) -> dict:
    config = copy.deepcopy(config)
    config["dataset"]["layout"] = "fsdkaggle2019"
    return resolve_settings(config)


# --- prediction -------------------------------------------------------------------------------


def test_prediction_settings_are_the_frames_batch_and_device(base_config):
    from workflow_lib.job_settings import prediction_settings

    s = settings_of(base_config)
    assert prediction_settings(s) == {
        "frames": s["method"]["spectrogram_frames"],
        "batch_size": s["compute"]["eval_batch_size"],
        "device": s["compute"]["device"],
    }


def test_fusion_settings_carry_the_task_only_when_multi_label(base_config):
    """Single-label fuse settings are config method.fusion as before (no rerun of finished
    runs); multi-label ones add ``task``, and the fuse command reads both back."""
    from workflow_lib.job_settings import fusion_settings

    single = fusion_settings(settings_of(base_config))
    assert single == settings_of(base_config)["method"]["fusion"]
    assert FusionSettings.from_json(single).task is SINGLE
    multi = fusion_settings(multi_label_settings(base_config))
    assert multi.pop("task") == "multi-label" and multi == single
    parsed = FusionSettings.from_json({**multi, "task": "multi-label"})
    assert parsed.task is MULTI and parsed.method == single["method"]
    assert (parsed.steps, parsed.lr) == (single["learned_epochs"], single["learned_lr"])


def test_task_arguments_name_the_task(base_config):
    from workflow_lib.job_settings import task_arguments

    assert task_arguments(settings_of(base_config)) == ["--task", "single-label"]
    assert task_arguments(multi_label_settings(base_config)) == ["--task", "multi-label"]


def test_tagger_settings_say_the_task_only_when_multi_label(base_config):
    from workflow_lib.job_settings import tagger_settings

    single = tagger_settings(settings_of(base_config))
    assert "task" not in single and "multi_label" not in single
    multi = tagger_settings(multi_label_settings(base_config))
    assert multi.pop("task") == "multi-label"
    assert set(multi) == set(single)


def test_chain_choice_spec_lists_selections_and_summaries():
    from workflow_lib.job_settings import chain_choice_spec

    spec = chain_choice_spec({"a": {"p": "a/p.csv"}}, {"a": "a/summary.csv"})
    assert spec == {"selections": {"a": {"p": "a/p.csv"}}, "summaries": {"a": "a/summary.csv"}}


def test_the_evaluation_files_follow_the_task():
    assert SINGLE.confusion and SINGLE.evaluation_plot == "confusion.png"
    assert not MULTI.confusion and MULTI.evaluation_plot == "per_class.png"
    assert SINGLE.score_columns == ("accuracy", "map3")
    assert MULTI.test_columns == {"test_lwlrap": "lwlrap"}
    assert SINGLE.chosen_by == "lowest mean CV loss" and MULTI.chosen_by == "highest mean CV lwlrap"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def resolved(config: dict, **dataset) -> dict:
    changed = copy.deepcopy(config)
    changed["dataset"].update(dataset)
    return resolve_settings(changed)


# --- training -------------------------------------------------------------------------------

PRESET = "vgg_gap_spec1_1"


def test_fit_settings_of_initial_training_and_fine_tuning(config):
    settings = resolved(config)
    method, compute = settings["method"], settings["compute"]
    net = method["nets"][PRESET]
    initial, tuned = (fit_settings(settings, PRESET, it) for it in (0, 1))
    assert set(initial) == {"preset", "net", "fit", "frames", "device", "run"}
    assert initial["net"] == {**net, "dropout": [method["dropout"]["conv"], method["dropout"]["head"]]}
    assert initial["fit"]["epochs"] == method["initial_training"]["epochs"]
    assert initial["fit"]["mixup_alpha"] == net["mixup_alpha"] and tuned["fit"]["mixup_alpha"] is None
    assert tuned["fit"]["lr"] == net["finetune_lr"]
    assert tuned["fit"]["epochs"] == method["fine_tuning"]["epochs"]
    assert initial["fit"]["seed"] == derive_seed(method["seed"], PRESET, 0) != tuned["fit"]["seed"]
    assert initial["run"] == {
        "checkpoint_every": compute["checkpoint_every"],
        "compile": compute["compile"],
        "cudnn_benchmark": compute["cudnn_benchmark"],
    }
    json.dumps(initial)  # the rule passes it on the command line


def test_fit_settings_name_the_task_for_label_sets_only(config):
    single = fit_settings(resolved(config), PRESET, 0)
    multi = fit_settings(resolved(config, layout="fsdkaggle2019"), PRESET, 0)
    assert "task" not in single  # single-label jobs keep their recorded settings
    assert multi.pop("task") == "multi-label"
    assert {k: v for k, v in multi.items() if k != "net"} == {k: v for k, v in single.items() if k != "net"}


def test_derive_seed_is_stable_and_per_job():
    assert derive_seed(7, "a", 0) == derive_seed(7, "a", 0)
    assert derive_seed(7, "a", 0) != derive_seed(7, "a", 1)
    assert 0 <= derive_seed(2**31 - 1, "x") < 2**31


def test_compared_settings_drop_the_run_only_settings(config):
    job = fit_settings(resolved(config), PRESET, 0)
    kept = compared_settings(job)
    assert "run" not in kept and "eval_batch_size" not in kept["fit"]
    assert kept["fit"]["seed"] == job["fit"]["seed"] and "run" in job  # the job's own dict untouched
    assert ("batch_size",) in RUN_ONLY_SETTINGS


def test_the_training_job_is_built_from_the_settings_by_keyword(config, tmp_path):
    """stages.TrainingJob.from_settings: the one typed object the train command builds."""
    from workflow_lib.stages import TrainingJob
    from workflow_lib.task import MULTI, SINGLE
    from workflow_lib.training import CheckpointPolicy, FitSettings

    where = {
        "manifest_csv": tmp_path / "m.csv",
        "folds_csv": tmp_path / "f.csv",
        "classes_csv": tmp_path / "c.csv",
        "fold": 1,
        "out_dir": tmp_path / "out",
        "threads": 2,
        "lock_dir": Path("locks"),
    }
    single = json.loads(json.dumps(fit_settings(resolved(config), PRESET, 1)))
    job = TrainingJob.from_settings(single, **where)
    assert job.task is SINGLE and job.fit == FitSettings(**single["fit"]) and job.fold == 1
    assert job.options.checkpoint == CheckpointPolicy.from_settings(single["run"]["checkpoint_every"])
    assert job.options.cudnn_benchmark is single["run"]["cudnn_benchmark"] is False  # the demo's
    paper = json.loads(json.dumps(fit_settings(resolved_paper(config), PRESET, 1)))
    assert TrainingJob.from_settings(paper, **where).options.cudnn_benchmark is True
    assert job.net == single["net"] and job.train_list_csv is None
    multi = json.loads(json.dumps(fit_settings(resolved(config, layout="fsdkaggle2019"), PRESET, 0)))
    assert TrainingJob.from_settings(multi, **where).task is MULTI
    with pytest.raises(ValueError, match="unknown task"):
        TrainingJob.from_settings({**single, "task": "multi_label"}, **where)


# --- trust -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trust_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def resolved_paper(config: dict, **changes) -> dict:
    """config.yaml (the paper preset) with top-level ``changes``, resolved."""
    return resolve_settings({**copy.deepcopy(config), "run_preset": "paper", **changes})


def test_trust_settings_are_the_typed_settings_fields(trust_config):
    from workflow_lib.job_settings import chain_policy, trust_settings

    s = resolved_paper(trust_config)
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
    built = trust_settings(resolved_paper(multi), "self_verification", "vgg13", 0)
    assert built["task"] == "multi-label" and "multi_label" not in json.dumps(built)


def test_chain_policy_resolves_the_method_defaults_and_the_policys_own_keys(trust_config):
    from workflow_lib.job_settings import chain_policy

    s = resolved_paper(trust_config)
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
    fix = chain_policy(resolved_paper(fixing), "fix")
    assert fix["correct_labels"] is True and fix["correct_threshold"] == 0.8 and fix["threshold"] == 0.95


def test_the_trust_job_builds_its_one_settings_object_from_the_json(trust_config):
    """What the rule puts on the command line is what the job reads, once, typed."""
    from workflow_lib.job_settings import trust_settings
    from workflow_lib.policies import ScheduleParameters
    from workflow_lib.self_verify import TrustSettings
    from workflow_lib.task import SINGLE

    s = resolved_paper(trust_config)
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
