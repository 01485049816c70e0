"""The dataset layouts and the config keys each reads (config ``dataset.layout``).

No third-party imports: the Snakefile imports this at every start (shard planning, the check
of ``dataset_root``, the config checks), before any job runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SINGLE_LABEL = "fsdkaggle2018"
MULTI_LABEL = "fsdkaggle2019"

#: Config keys (section ``dataset``) each layout reads besides the shared ones (test list and
#: folder, true labels, symlinks): its training listings and their audio folders, in pairs
#: (listing, folder). A key of the other layout that is set is a config error.
LAYOUT_KEYS: dict[str, tuple[str, ...]] = {
    SINGLE_LABEL: ("train_csv", "train_audio_dir"),
    MULTI_LABEL: ("curated_csv", "curated_audio_dir", "noisy_csv", "noisy_audio_dir"),
}


def is_multi_label(dataset: Mapping[str, Any]) -> bool:
    """Whether the dataset settings choose the multi-label layout (label sets)."""
    return dataset.get("layout", SINGLE_LABEL) == MULTI_LABEL


def train_listing_keys(dataset: Mapping[str, Any]) -> list[str]:
    """Config keys of the training listings the layout reads, the verified one first (the
    noisy list of fsdkaggle2019 only when set: it may be '')."""
    keys = LAYOUT_KEYS[dataset.get("layout", SINGLE_LABEL)][::2]
    return [key for key in keys if dataset.get(key)]


def layout_settings(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The ``dataset`` settings the chosen layout reads (the validation job's settings).

    Keys of the other layout are left out, and so is ``layout`` when it is the single-label
    default: a single-label run's settings, and so its validation job, stay exactly as they
    were before the multi-label layout existed.
    """
    layout = dataset.get("layout", SINGLE_LABEL)
    other = {key for name, keys in LAYOUT_KEYS.items() if name != layout for key in keys}
    if layout == SINGLE_LABEL:
        other.add("layout")
    return {key: value for key, value in dataset.items() if key not in other}
