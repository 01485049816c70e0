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

from .dataset_layouts import DEFAULT_LAYOUT, LAYOUTS, layout_of
from .task import SINGLE, task_of_settings

# --- data: dataset validation and demo data jobs ---------------------------------------------


def validation_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The validation jobs' settings (rules validate_dataset, validate_test): the ``dataset``
    settings the chosen layout reads.

    Keys of the other layouts are left out, and so is ``layout`` when it is the default: a
    single-label run's settings, and so its validation jobs, stay exactly as they were before
    the multi-label layout existed (no rerun of a finished run).
    """
    dataset = settings["dataset"]
    layout = layout_of(dataset)
    other = {key for name, entry in LAYOUTS.items() if name != layout.name for key in entry.keys}
    if layout.name == DEFAULT_LAYOUT:
        other.add("layout")
    return {key: value for key, value in dataset.items() if key not in other}


def demo_data_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The demo-data job's settings (rule demo_dataset): the ``demo_data`` section, plus the
    ``task`` whose demo to write when it is not single-label (so a single-label run's demo
    job, and its recorded params, stay as they were)."""
    task = task_of_settings(settings)
    extra = {} if task.name == SINGLE.name else {"task": task.name}
    return {**settings["demo_data"], **extra}


# --- training: initial training and fine-tuning jobs -----------------------------------------


# --- trust: self-verification jobs (trust policies) ------------------------------------------


# --- prediction, fusion, evaluation, export --------------------------------------------------
