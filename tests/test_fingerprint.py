"""Per-split dataset fingerprints (workflow_lib/fingerprint.py), the rule params that are not
compared (workflow_lib.job_settings.compared_settings) and the name-length bound of the layout
(workflow_lib.layout.name_room): the units behind issue 24's rows on change detection."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_lib.config import resolve_settings
from workflow_lib.fingerprint import DigestCache, split_fingerprints
from workflow_lib.job_settings import compared_settings, fit_settings
from workflow_lib.layout import NAME_MAX, TEMP_NAME_EXTRA, name_room, overlong_values

from conftest import REPO, tone, write_wav

DATASET = {
    "layout": "fsdkaggle2018",
    "train_csv": "train.csv",
    "train_audio_dir": "audio_train",
    "test_csv": "",
    "test_audio_dir": "audio_test",
    "true_labels_csv": "",
}


def _dataset(root: Path) -> Path:
    """Two training clips of the same length (same file size) and one test clip."""
    write_wav(root / "audio_train" / "a.wav", tone(0.3, 8000, 300.0), 8000)
    write_wav(root / "audio_train" / "b.wav", tone(0.3, 8000, 900.0), 8000)
    write_wav(root / "audio_test" / "t.wav", tone(0.3, 8000, 600.0), 8000)
    pd.DataFrame({"fname": ["a.wav", "b.wav"], "label": ["x", "y"], "manually_verified": [1, 0]}).to_csv(
        root / "train.csv", index=False
    )
    return root


def _fingerprints(root: Path, cache_file: Path | None = None) -> tuple[dict[str, str], DigestCache]:
    cache = DigestCache(cache_file)
    return split_fingerprints(root, DATASET, cache), cache


def test_replaced_recording_of_the_same_size_and_time_stamp_changes_the_training_split(tmp_path):
    """Row 'an audio file replaced in place by another recording': a `cp -p` of a recording
    of the same length over a listed one (same size, the old mtime) changes the training
    fingerprint and leaves the test split's alone."""
    root = _dataset(tmp_path)
    before, _ = _fingerprints(root)
    target = root / "audio_train" / "a.wav"
    stamp = target.stat()
    other = tmp_path / "other.wav"
    write_wav(other, tone(0.3, 8000, 2400.0), 8000)
    assert other.stat().st_size == stamp.st_size
    shutil.copyfile(other, target)
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # what cp -p keeps
    after, _ = _fingerprints(root)
    assert after["train"] != before["train"] and after["test"] == before["test"]


def test_relabelled_csv_with_an_older_time_stamp_changes_the_training_split(tmp_path):
    """Row 'train.csv relabelled but with an older modification time'."""
    root = _dataset(tmp_path)
    before, _ = _fingerprints(root)
    listing = root / "train.csv"
    listing.write_text(listing.read_text().replace("a.wav,x", "a.wav,y"))
    os.utime(listing, ns=(0, 0))  # older than every output
    after, _ = _fingerprints(root)
    assert after["train"] != before["train"] and after["test"] == before["test"]


def test_new_file_in_the_test_folder_changes_the_test_split_only(tmp_path):
    """Row 'a new file in audio_test/ of a predict-only run': unlisted (there is no test CSV),
    it is in the test fingerprint; hidden files are not (validation does not read them)."""
    root = _dataset(tmp_path)
    before, _ = _fingerprints(root)
    (root / "audio_test" / ".DS_Store").write_bytes(b"x")
    assert _fingerprints(root)[0] == before
    write_wav(root / "audio_test" / "new.wav", tone(0.3, 8000, 700.0), 8000)
    after, _ = _fingerprints(root)
    assert after["test"] != before["test"] and after["train"] == before["train"]


def test_cached_digests_spare_the_reading_and_a_touch_changes_nothing(tmp_path):
    """A restart stats the files and reads none; a file whose time stamp alone changed is
    read again and keeps its fingerprint; a broken cache file is rebuilt."""
    root = _dataset(tmp_path)
    cache_file = tmp_path / "results" / ".cache" / "digests.json"
    first, cache = _fingerprints(root, cache_file)
    assert cache.read == 4  # train.csv, a.wav, b.wav and the test folder's t.wav
    cache.save()
    again, cache = _fingerprints(root, cache_file)
    assert again == first and cache.read == 0
    os.utime(root / "audio_train" / "b.wav", ns=(10**18, 10**18))
    touched, cache = _fingerprints(root, cache_file)
    assert touched == first and cache.read == 1
    cache_file.write_text("{not json")
    assert _fingerprints(root, cache_file)[0] == first


def test_missing_and_unlisted_files(tmp_path):
    """A listed file that disappears changes the fingerprint; an unlisted training file does
    not (no job reads it)."""
    root = _dataset(tmp_path)
    before, _ = _fingerprints(root)
    write_wav(root / "audio_train" / "unlisted.wav", tone(0.3, 8000, 100.0), 8000)
    assert _fingerprints(root)[0] == before
    (root / "audio_train" / "b.wav").unlink()
    assert _fingerprints(root)[0]["train"] != before["train"]


def test_run_only_settings_are_not_compared():
    """Row 'compute.checkpoint_every, compute.eval_batch_size or compute.compile changed': the
    compared part of a training job's settings ignores them and keeps every other key."""
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    base = resolve_settings({**config, "run_preset": "paper"})
    other = resolve_settings(
        {
            **config,
            "run_preset": "paper",
            "compute": {
                **config["compute"],
                "checkpoint_every": {"epochs": 3, "minutes": None},
                "eval_batch_size": 7,
                "compile": True,
            },
        }
    )
    for iteration in (0, 1):
        job, changed = (fit_settings(s, "vgg_gap_spec2", iteration) for s in (base, other))
        assert job != changed
        assert compared_settings(job) == compared_settings(changed)
        assert "run" not in compared_settings(job) and "eval_batch_size" not in compared_settings(job)["fit"]
        assert compared_settings(job)["fit"]["epochs"] == job["fit"]["epochs"]
        assert compared_settings(job)["net"] == job["net"]
    assert compared_settings({"frames": 3000, "batch_size": 32, "device": "auto"}) == {
        "frames": 3000,
        "device": "auto",
    }


def test_name_room_counts_what_the_layout_adds():
    """The bound of a name is NAME_MAX less the fixed text of its component and, for a file,
    what a temporary name adds; constraints in a pattern are ignored."""
    patterns = [
        "results/chains/{chain}/models/{preset}/fold{fold}/best.pt",
        "results/logs/fuse/{chain,[a-z]+}.log",
    ]
    room = name_room(patterns, {"fold": ["10"], "chain": ["c"], "preset": ["p"]})
    assert room["chain"] == (NAME_MAX - TEMP_NAME_EXTRA - len(".log"), "{chain}.log")
    assert room["preset"] == (NAME_MAX, "{preset}")
    assert room["fold"][0] == NAME_MAX - len("fold")
    long_name = "c" * 300
    problems = overlong_values(patterns, {"chain": [long_name, "ok"]}, {"chain": "run_chains"})
    assert len(problems) == 1 and "config key run_chains" in problems[0] and "300 bytes" in problems[0]
    assert not overlong_values(patterns, {"chain": ["c" * room["chain"][0]]}, {"chain": "run_chains"})


def test_digest_of_a_larger_file_reads_it_whole(tmp_path):
    """Files above one read chunk differ in their last byte: their digests differ."""
    data = np.zeros(3 << 20, dtype=np.uint8)
    (tmp_path / "a").write_bytes(data.tobytes())
    data[-1] = 1
    (tmp_path / "b").write_bytes(data.tobytes())
    cache = DigestCache(None)
    assert cache.digest(tmp_path / "a") != cache.digest(tmp_path / "b")
    assert cache.digest(tmp_path / "missing") == "missing"


def test_link_leading_outside_the_dataset_is_not_read(tmp_path):
    """A training clip that is a symbolic link out of the dataset (validation skips it) adds
    its target's name, never its content; with follow_external_symlinks it is read."""
    root = _dataset(tmp_path / "data")
    outside = write_wav(tmp_path / "elsewhere" / "x.wav", tone(0.3, 8000, 100.0), 8000)
    clip = root / "audio_train" / "a.wav"
    clip.unlink()
    clip.symlink_to(outside)
    cache = DigestCache(None)
    before = split_fingerprints(root, DATASET, cache)
    assert cache.read == 3  # train.csv, b.wav and the test folder's t.wav: not the link's target
    outside.write_bytes(outside.read_bytes()[:-2] + b"\x01\x02")
    assert split_fingerprints(root, DATASET, DigestCache(None)) == before
    followed = {**DATASET, "follow_external_symlinks": True}
    first = split_fingerprints(root, followed, DigestCache(None))
    outside.write_bytes(outside.read_bytes()[:-2] + b"\x03\x04")
    assert split_fingerprints(root, followed, DigestCache(None))["train"] != first["train"]
