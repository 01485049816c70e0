"""Job settings builders (workflow_lib/job_settings.py): pure functions of the resolved config,
checked here without Snakemake. One block per section of the module."""

from __future__ import annotations

import copy
import json

import yaml

from workflow_lib.config import resolve_settings
from workflow_lib.demo import GENERATORS, DemoDataJob
from workflow_lib.job_settings import demo_data_settings, validation_settings
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
    expected = {k: v for k, v in expected.items() if "noisy" not in k}
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
