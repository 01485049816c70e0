"""Job-settings builders (workflow_lib/job_settings.py), without Snakemake: each section tests
the builders of its jobs on a resolved config.yaml."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from workflow_lib.config import resolve_settings
from workflow_lib.job_settings import (
    RUN_ONLY_SETTINGS,
    compared_settings,
    derive_seed,
    fit_settings,
)

from conftest import REPO


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
    assert initial["run"] == {"checkpoint_every": compute["checkpoint_every"], "compile": compute["compile"]}
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
    assert job.net == single["net"] and job.train_list_csv is None
    multi = json.loads(json.dumps(fit_settings(resolved(config, layout="fsdkaggle2019"), PRESET, 0)))
    assert TrainingJob.from_settings(multi, **where).task is MULTI
    with pytest.raises(ValueError, match="unknown task"):
        TrainingJob.from_settings({**single, "task": "multi_label"}, **where)
