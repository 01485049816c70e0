"""The dataset layout registry (workflow_lib/dataset_layouts.py): one entry per layout, and
everything that lists layouts elsewhere agrees with it."""

from __future__ import annotations

import pytest

from workflow_lib.config import load_schema
from workflow_lib.dataset import TRAIN_READERS
from workflow_lib.dataset_layouts import DEFAULT_LAYOUT, LAYOUTS, layout_of, train_listing_keys
from workflow_lib.task import TASKS, task_of_layout


def test_schema_enum_is_the_registry():
    layout = load_schema()["properties"]["dataset"]["properties"]["layout"]
    assert layout["enum"] == sorted(LAYOUTS)


def test_every_layout_has_a_reader_and_a_known_task():
    assert set(TRAIN_READERS) == set(LAYOUTS)
    for name, layout in LAYOUTS.items():
        assert layout.name == name
        assert layout.task in TASKS
        assert task_of_layout(name).name == layout.task


def test_every_task_has_a_layout_and_the_schema_enum_is_the_registry():
    for task in TASKS.values():
        assert task.layouts and all(LAYOUTS[name].task == task.name for name in task.layouts)
    assert load_schema()["properties"]["dataset"]["properties"]["layout"]["enum"] == sorted(LAYOUTS)


def test_keys_pair_listings_with_folders_and_every_config_key_exists():
    properties = load_schema()["properties"]["dataset"]["properties"]
    for layout in LAYOUTS.values():
        assert len(layout.keys) % 2 == 0 and len(layout.demo_listings) >= 1
        assert [pair[0] for pair in layout.listing_folders] == list(layout.listing_keys)
        assert all(key in properties for key in layout.keys)


def test_layout_of_defaults_and_refuses_unknown_names():
    assert layout_of({}).name == DEFAULT_LAYOUT
    with pytest.raises(ValueError, match="unknown dataset layout"):
        layout_of({"layout": "fsdkaggle2020"})
    assert train_listing_keys({"layout": "fsdkaggle2019", "curated_csv": "c.csv", "noisy_csv": ""}) == [
        "curated_csv"
    ]
