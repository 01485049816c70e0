"""How many preprocessing shards a split gets: planned when the Snakefile starts.

No third-party imports: the Snakefile imports this at every start. The shards themselves
(which file goes where, balanced by duration) are :mod:`workflow_lib.preprocess`'s.
"""

from __future__ import annotations

import math
from pathlib import Path

from .dataset_layouts import has_pool, pool_audio_dir, train_listing_keys

#: ``shards: auto`` never makes a shard smaller than this (each job pays imports and set-up).
MIN_FILES_PER_SHARD = 25
#: ``shards: auto`` never makes more shards per split than this (a cluster's --jobs can be huge).
MAX_AUTO_SHARDS = 64


def resolve_shards(setting: int | str, n_files: int, cores: int) -> int:
    """The number of shards of a split of ``n_files`` files.

    An integer setting is used as given. ``auto``: one shard per core Snakemake was given, but
    no shard below MIN_FILES_PER_SHARD files; both splits get their own number, so a small test
    split does not become many tiny jobs. Duration balancing
    (:func:`workflow_lib.preprocess.shard_assignment`) keeps
    the shards of a split equally long, so ``cores`` shards finish together.
    """
    if setting != "auto":
        return int(setting)
    by_files = math.ceil(max(n_files, 0) / MIN_FILES_PER_SHARD)
    return max(1, min(max(int(cores), 1), by_files, MAX_AUTO_SHARDS))


def listed_file_counts(settings: dict, data_root: str | Path | None) -> dict[str, int]:
    """Files per split, known before any job runs (the Snakefile needs it to plan shards).

    The demo's counts follow from ``demo_data``; a real dataset's from its listing CSVs (rows)
    or, without a test CSV, from the WAV files in the test folder. Files the validation step
    will skip are counted too: the number only sizes the shards.
    """
    if data_root is None:
        demo = settings["demo_data"]
        return {
            "train": demo["n_classes"] * demo["train_clips_per_class"],
            "test": demo["n_classes"] * demo["test_clips_per_class"],
        }
    root, dataset = Path(data_root), settings["dataset"]

    def rows(name: str) -> int | None:
        path = root / name if name else None
        if path is None or not path.is_file():
            return None
        with open(path, "rb") as handle:
            return max(sum(1 for line in handle if line.strip()) - 1, 0)

    test = rows(dataset["test_csv"])
    if test is None:
        folder = root / dataset["test_audio_dir"] if dataset["test_audio_dir"] else None
        test = len(list(folder.glob("*.wav"))) if folder is not None and folder.is_dir() else 0
    train = sum(rows(dataset[key]) or 0 for key in train_listing_keys(dataset))
    counts = {"train": train, "test": test}
    if has_pool(dataset):  # the unlabelled pool: every file of its folder
        folder = root / pool_audio_dir(dataset)
        counts["pool"] = sum(1 for f in folder.iterdir() if f.is_file()) if folder.is_dir() else 0
    return counts
