"""The dataset layouts (config ``dataset.layout``): one registry entry each.

A layout says which config keys name its training listings and audio folders, which task its
labels imply, what its test CSV calls the label column, what the demo writes for it and how its
problems are worded. How its listings are read into the common training table is a function of
:mod:`workflow_lib.dataset` (``TRAIN_READERS``, keyed by the same names: it needs pandas).

Adding a layout: one :data:`LAYOUTS` entry here, its reader in ``dataset.TRAIN_READERS``, its
name in the schema's ``dataset.layout`` enum (a test checks they agree), tests, a line of docs.

No third-party imports: the Snakefile imports this at every start (shard planning, the check
of ``dataset_root``, the config checks), before any job runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetLayout:
    """One dataset layout.

    name: the ``dataset.layout`` value.
    task: the task its labels imply (``workflow_lib.task.task_named``), by name so this module
        stays free of imports.
    keys: config keys (section ``dataset``) it reads besides the shared ones (test list and
        folder, true labels, symlinks): its training listings and their audio folders, in pairs
        (listing, folder), the verified listing first. A key of another layout that is set is a
        config error.
    test_label_column: the test CSV's label column (written back as ``label``).
    demo_listings: the training listings the demo dataset writes, verified first (rule
        demo_dataset's outputs).
    verified_clips, unverified_where: problems.csv wording (no verified clip at all; a class
        seen only among the unverified clips), in the layout's own terms.
    """

    name: str
    task: str
    keys: tuple[str, ...]
    test_label_column: str
    demo_listings: tuple[str, ...]
    verified_clips: str
    unverified_where: str

    @property
    def listing_keys(self) -> tuple[str, ...]:
        """Config keys of the training listings, the verified one first."""
        return self.keys[::2]

    @property
    def listing_folders(self) -> tuple[tuple[str, str], ...]:
        """(listing key, audio folder key) pairs, the verified listing first."""
        return tuple(zip(self.keys[::2], self.keys[1::2]))


FSDKAGGLE2018 = DatasetLayout(
    name="fsdkaggle2018",
    task="single-label",
    keys=("train_csv", "train_audio_dir"),
    test_label_column="label",
    demo_listings=("train.csv",),
    verified_clips="manually verified clips (manually_verified=1)",
    unverified_where="only on unverified clips",
)
FSDKAGGLE2019 = DatasetLayout(
    name="fsdkaggle2019",
    task="multi-label",
    keys=("curated_csv", "curated_audio_dir", "noisy_csv", "noisy_audio_dir"),
    test_label_column="labels",
    demo_listings=("train_curated.csv", "train_noisy.csv"),
    verified_clips="curated (verified) clips",
    unverified_where="only among the noisy clips",
)
#: Every layout, by name (the schema's ``dataset.layout`` enum is ``sorted(LAYOUTS)``).
LAYOUTS: dict[str, DatasetLayout] = {layout.name: layout for layout in (FSDKAGGLE2018, FSDKAGGLE2019)}
#: The layout of a config without ``dataset.layout`` (the paper's dataset).
DEFAULT_LAYOUT = FSDKAGGLE2018.name
#: Config keys (section ``dataset``) of the unlabelled pool, shared by every layout and read
#: by the pool's own validation job only (rule validate_pool), never by the training and test
#: validation jobs: with the pool off (``unlabelled_audio_dir`` empty) their settings, and so
#: their recorded params, stay as they were before the pool existed.
POOL_KEYS = ("unlabelled_audio_dir", "unlabelled_true_labels_csv", "unlabelled_test_audio")
#: What every table of a transductive chain says (``dataset.unlabelled_test_audio``: the test
#: audio was its pool): the evaluation's ``note``, the summary's ``test_note``, the submission
#: status's ``note`` and the systems table's description.
TRANSDUCTIVE_NOTE = (
    "transductive: the test audio was this chain's unlabelled pool (test labels never read for it)"
)


def layout_of(dataset: Mapping[str, Any]) -> DatasetLayout:
    """The layout the ``dataset`` settings choose (absent: :data:`DEFAULT_LAYOUT`); a clear
    error for an unknown name."""
    name = dataset.get("layout", DEFAULT_LAYOUT)
    if name not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {name!r}: use one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def train_listing_keys(dataset: Mapping[str, Any]) -> list[str]:
    """Config keys of the training listings the layout reads, the verified one first (a
    listing that may be '', as fsdkaggle2019's noisy list, only when set)."""
    return [key for key in layout_of(dataset).listing_keys if dataset.get(key)]


def has_pool(dataset: Mapping[str, Any]) -> bool:
    """Whether the settings name an unlabelled pool (``dataset.unlabelled_audio_dir`` set, or
    the test audio as the pool: ``dataset.unlabelled_test_audio``)."""
    return bool(pool_audio_dir(dataset))


def pool_audio_dir(dataset: Mapping[str, Any]) -> str:
    """The pool's folder as the settings give it (relative to the dataset root, or absolute):
    the test audio folder when ``unlabelled_test_audio`` (transductive), else
    ``unlabelled_audio_dir`` ('' when there is no pool). The one place that decides it."""
    if dataset.get("unlabelled_test_audio", False):
        return str(dataset.get("test_audio_dir", ""))
    return str(dataset.get("unlabelled_audio_dir", ""))


def transductive(dataset: Mapping[str, Any]) -> bool:
    """Whether the pool is the test audio (``dataset.unlabelled_test_audio``)."""
    return bool(dataset.get("unlabelled_test_audio", False))
