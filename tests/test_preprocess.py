"""Sharded preprocessing: workflow_lib.preprocess and the preprocess-shard/merge-manifests CLI.

docs/method.md "Preprocessing" 1-4: every listed file is clipped once and transformed into every
needed version; undecodable files are skipped and reported, never a crash of the whole run;
arrays are stored time-major, (frames, 128) float32, with no normalisation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_lib.audio import (
    CLIPPED,
    FALLBACK_SILENT,
    SKIPPED_EMPTY,
    SKIPPED_MISSING,
    SKIPPED_UNDECODABLE,
    USABLE_STATUSES,
    load_clipped,
)
from workflow_lib.io import read_csv_str, write_csv
from workflow_lib.preprocess import (
    FIXED_COST_SECONDS,
    MANIFEST_COLUMNS,
    SpectrogramStore,
    audio_seconds,
    file_costs,
    gather_shard,
    merge_manifests,
    shard_assignment,
    shard_clips,
    shard_of,
    write_shard,
    write_shard_files,
)
from workflow_lib.shards import MAX_AUTO_SHARDS, listed_file_counts, resolve_shards
from workflow_lib.spectrograms import compute_spectrogram

from conftest import REPO, SPEC_SOX_EFFECTS, planted, tone, write_wav

SR = 32000
IN_SR = 16000
VERSIONS = [1, 2]


def _listing(rows: list[tuple[str, Path]]) -> pd.DataFrame:
    """A listing as results/data/train.csv holds it (strings, as read back from CSV)."""
    return pd.DataFrame(
        {
            "fname": [name for name, _ in rows],
            "label": [f"class{i % 3}" for i in range(len(rows))],
            "verified": [str(i % 2) for i in range(len(rows))],
            "path": [str(path) for _, path in rows],
        }
    )


@pytest.fixture(scope="module")
def mixed_listing(tmp_path_factory, fsdd_files, sox_binary):
    """Two real recordings, two synthetic good files and four hostile ones."""
    folder = tmp_path_factory.mktemp("audio")
    rows = [(p.name, p) for p in fsdd_files[:2]]
    rows.append(("planted.wav", write_wav(folder / "planted.wav", planted(IN_SR), IN_SR)))
    rows.append(("empty.wav", write_wav(folder / "empty.wav", np.zeros(0), IN_SR)))
    rows.append(("silent.wav", write_wav(folder / "silent.wav", np.zeros(IN_SR), IN_SR)))
    text = folder / "text.wav"
    text.write_text("not audio at all\n")
    rows.append(("text.wav", text))
    rows.append(("missing.wav", folder / "missing.wav"))
    rows.append(("odd name; it's.wav", write_wav(folder / "odd name; it's.wav", tone(0.4, IN_SR), IN_SR)))
    return _listing(rows)


EXPECTED_STATUS = {
    "planted.wav": CLIPPED,
    "empty.wav": SKIPPED_EMPTY,
    "silent.wav": FALLBACK_SILENT,
    "text.wav": SKIPPED_UNDECODABLE,
    "missing.wav": SKIPPED_MISSING,
    "odd name; it's.wav": CLIPPED,
}


def _check_manifest(manifest: pd.DataFrame, array: np.ndarray, listing: pd.DataFrame) -> None:
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert list(manifest["fname"]) == list(listing["fname"]), "one row per listed file, in order"
    n_frames = manifest["n_frames"].astype(np.int64).to_numpy()
    offsets = manifest["offset"].astype(np.int64).to_numpy()
    usable = manifest["status"].isin(USABLE_STATUSES).to_numpy()
    assert np.all(n_frames[~usable] == 0), "skipped rows have n_frames 0"
    assert np.all(n_frames[usable] > 0)
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(n_frames)[:-1]]))
    assert array.dtype == np.float32
    assert array.shape == (int(n_frames.sum()), 128)  # time-major
    assert np.all(np.isfinite(array)), "no NaN/inf may reach the network (e.g. silent clips)"


def test_shard_on_mixed_files(mixed_listing):
    """docs/method.md "Preprocessing" 1 and 4: the run finishes; every file gets a row and a status."""
    arrays, manifests = gather_shard(
        shard_clips(mixed_listing, 0, 1, VERSIONS, SR, SPEC_SOX_EFFECTS), VERSIONS
    )
    assert sorted(arrays) == sorted(manifests) == VERSIONS
    for version in VERSIONS:
        manifest = manifests[version]
        _check_manifest(manifest, arrays[version], mixed_listing)
        statuses = dict(zip(manifest["fname"], manifest["status"]))
        for name, status in EXPECTED_STATUS.items():
            assert statuses[name] == status, (name, statuses[name])
        for name in mixed_listing["fname"][:2]:  # the FSDD recordings
            assert statuses[name] in USABLE_STATUSES
        skipped = manifest[~manifest["status"].isin(USABLE_STATUSES)]
        assert (skipped["detail"].str.len() > 0).all(), "skips carry a reason"
        assert set(manifest["shard"]) == {0}
        assert list(manifest["label"]) == list(mixed_listing["label"])
    # Both versions describe the same files with the same statuses.
    assert list(manifests[1]["status"]) == list(manifests[2]["status"])


def test_store_returns_exactly_the_computed_spectrogram(mixed_listing, tmp_path, repeatable_sox):
    """docs/method.md "Preprocessing" 4: the stored (1, 128, T) array of a clip is its spectrogram.

    SoX runs with -R here (see the repeatable_sox fixture) so that recomputing is exact.
    """
    out = tmp_path / "spectrograms"
    n_shards = 3
    for shard in range(n_shards):
        arrays, manifests = gather_shard(
            shard_clips(mixed_listing, shard, n_shards, VERSIONS, SR, SPEC_SOX_EFFECTS), VERSIONS
        )
        write_shard(
            arrays,
            manifests,
            {v: out / f"v{v}/train/shard{shard}.npy" for v in VERSIONS},
            {v: out / f"v{v}/train/shard{shard}.csv" for v in VERSIONS},
        )
    for version in VERSIONS:
        merged = merge_manifests(
            [out / f"v{version}/train/shard{s}.csv" for s in range(n_shards)], out / f"v{version}/train.csv"
        )
        assert sorted(merged["fname"]) == sorted(mixed_listing["fname"])
        store = SpectrogramStore.open(out / f"v{version}/train.csv")
        assert len(store) == int(merged["status"].isin(USABLE_STATUSES).sum())
        assert "text.wav" not in set(store.manifest["fname"])
        for name in [mixed_listing["fname"][0], "planted.wav", "odd name; it's.wav"]:
            path = Path(mixed_listing.set_index("fname").loc[name, "path"])
            expected = compute_spectrogram(version, load_clipped(path, SR).samples, SR)
            got = store.get(name)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected)
        # Integer access matches name access.
        first = store.manifest["fname"][0]
        np.testing.assert_array_equal(store.get(0), store.get(first))


def test_shard_of_partitions_the_listing():
    """Every file lands in exactly one shard (disjoint and complete), in a stable order."""
    listing = pd.DataFrame({"fname": [f"{i:04d}.wav" for i in range(103)]})
    for n_shards in (1, 2, 4, 7, 150):
        parts = [shard_of(listing, s, n_shards) for s in range(n_shards)]
        names = [name for part in parts for name in part["fname"]]
        assert len(names) == len(set(names)) == len(listing)
        assert set(names) == set(listing["fname"])
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1, "balanced"
        assert shard_of(listing, 0, n_shards).equals(parts[0])


def test_shard_with_no_files(tmp_path, sox_binary):
    """More shards than files (a tiny test split, or none): an empty shard is valid and empty."""
    listing = _listing([("planted.wav", write_wav(tmp_path / "planted.wav", planted(IN_SR), IN_SR))])
    arrays, manifests = gather_shard(shard_clips(listing, 1, 2, VERSIONS, SR, SPEC_SOX_EFFECTS), VERSIONS)
    for version in VERSIONS:
        assert len(manifests[version]) == 0, manifests[version]
        assert arrays[version].shape == (0, 128)
    # The same through the files: merging a full and an empty shard gives one row per file.
    out = tmp_path / "out"
    for shard in range(2):
        arrays, manifests = gather_shard(shard_clips(listing, shard, 2, [1], SR, SPEC_SOX_EFFECTS), [1])
        write_shard(
            arrays, manifests, {1: out / f"v1/test/shard{shard}.npy"}, {1: out / f"v1/test/shard{shard}.csv"}
        )
    merged = merge_manifests([out / f"v1/test/shard{s}.csv" for s in range(2)], out / "v1/test.csv")
    assert list(merged["fname"]) == ["planted.wav"]
    assert len(SpectrogramStore.open(out / "v1/test.csv")) == 1


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "workflow_lib.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_preprocess_and_merge_end_to_end(tmp_path, fsdd_files, repeatable_sox):
    """The rules' commands, run by hand: preprocess-shard for every shard, then merge-manifests.

    docs/method.md "Preprocessing" 1-4; SoX runs with -R (repeatable_sox) so the check can be exact.
    """
    rows = [(p.name, p) for p in fsdd_files[:3]]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"\x00\x01garbage")
    rows.append(("bad.wav", bad))
    listing_csv = tmp_path / "train.csv"
    _listing(rows).to_csv(listing_csv, index=False)
    out = tmp_path / "spectrograms"
    settings = json.dumps({"shards": 2, "sample_rate": SR, "sox_effects": list(SPEC_SOX_EFFECTS)})
    for shard in range(2):
        done = _cli(
            "preprocess-shard",
            "--listing",
            str(listing_csv),
            "--split",
            "train",
            "--shard",
            str(shard),
            "--shards",
            "2",
            "--versions",
            "1",
            "2",
            "--out-dir",
            str(out),
            "--settings",
            settings,
        )
        assert done.returncode == 0, done.stderr
    for version in VERSIONS:
        shard_csvs = [str(out / f"v{version}/train/shard{s}.csv") for s in range(2)]
        done = _cli("merge-manifests", "--out", str(out / f"v{version}/train.csv"), *shard_csvs)
        assert done.returncode == 0, done.stderr
        merged = read_csv_str(out / f"v{version}/train.csv")
        assert sorted(merged["fname"]) == sorted(name for name, _ in rows)
        status = dict(zip(merged["fname"], merged["status"]))
        assert status["bad.wav"] == SKIPPED_UNDECODABLE
        store = SpectrogramStore.open(out / f"v{version}/train.csv")
        assert len(store) == 3
        for path in fsdd_files[:3]:
            spec = store.get(path.name)
            assert spec.shape[:2] == (1, 128) and spec.dtype == np.float32
            np.testing.assert_array_equal(
                spec, compute_spectrogram(version, load_clipped(path, SR).samples, SR)
            )


def test_cli_without_sox_fails_with_one_readable_line(tmp_path):
    """A missing SoX binary stops the shard job with install advice, not a traceback."""
    listing_csv = tmp_path / "train.csv"
    _listing([("x.wav", tmp_path / "x.wav")]).to_csv(listing_csv, index=False)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=str(empty_bin))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow_lib.cli",
            "preprocess-shard",
            "--listing",
            str(listing_csv),
            "--split",
            "train",
            "--shard",
            "0",
            "--shards",
            "1",
            "--versions",
            "1",
            "--out-dir",
            str(tmp_path / "o"),
            "--settings",
            json.dumps({"sample_rate": SR, "sox_effects": list(SPEC_SOX_EFFECTS)}),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "sox" in done.stderr.lower() and "apt-get install" in done.stderr


def test_shards_are_balanced_by_audio_duration(tmp_path):
    """Shards follow the work: durations read from the headers, longest first (LPT).

    Four 8 s files and twelve 0.5 s files in two shards: dealing every 2nd file would give
    one shard all the long files; by duration each shard gets two long ones.
    """
    rows = []
    for i in range(16):
        seconds = 8.0 if i % 2 == 0 and i < 8 else 0.5
        rows.append(
            (f"f{i:02d}.wav", write_wav(tmp_path / f"f{i:02d}.wav", np.zeros(int(seconds * 1000)), 1000))
        )
    listing = _listing(rows)
    np.testing.assert_allclose(
        audio_seconds(list(listing["path"])), [8.0 if i % 2 == 0 and i < 8 else 0.5 for i in range(16)]
    )
    parts = [shard_of(listing, s, 2) for s in range(2)]
    assert sorted(n for p in parts for n in p["fname"]) == sorted(listing["fname"])
    long_files = [
        sum(name in {"f00.wav", "f02.wav", "f04.wav", "f06.wav"} for name in p["fname"]) for p in parts
    ]
    assert long_files == [2, 2], long_files
    loads = [float(file_costs(p).sum()) for p in parts]
    assert abs(loads[0] - loads[1]) <= 0.5 + FIXED_COST_SECONDS, loads
    for part in parts:  # listing order kept inside a shard
        assert list(part.index) == sorted(part.index)
    # A missing file costs the fixed cost only and still lands in exactly one shard.
    with_missing = _listing(rows + [("gone.wav", tmp_path / "gone.wav")])
    assert sum(len(shard_of(with_missing, s, 3)) for s in range(3)) == 17


def test_shard_assignment_is_lpt_and_deterministic():
    costs = np.array([1.0, 9.0, 3.0, 3.0, 5.0, 1.0])
    assignment = shard_assignment(costs, 2)
    np.testing.assert_array_equal(assignment, shard_assignment(costs.copy(), 2))
    loads = np.bincount(assignment, weights=costs, minlength=2)
    assert sorted(loads) == [11.0, 11.0], loads  # 9+1+1 | 5+3+3
    with pytest.raises(ValueError):
        shard_assignment(costs, 0)


@pytest.mark.parametrize(
    "setting, n_files, cores, expected",
    [
        (4, 10_000, 16, 4),  # an integer is used as given
        (3, 0, 2, 3),
        ("auto", 9_473, 16, 16),  # FSDKaggle2018 train on 16 cores: one shard per core
        ("auto", 1_600, 16, 16),
        ("auto", 200, 16, 8),  # no shard below MIN_FILES_PER_SHARD files
        ("auto", 80, 2, 2),
        ("auto", 10, 16, 1),
        ("auto", 0, 4, 1),
        ("auto", 100_000, 10_000, MAX_AUTO_SHARDS),
    ],
)
def test_resolve_shards(setting, n_files, cores, expected):
    assert resolve_shards(setting, n_files, cores) == expected


def test_listed_file_counts(tmp_path):
    """Counts the Snakefile plans shards with: demo from its settings, a dataset from its CSVs."""
    settings = {
        "demo_data": {"n_classes": 3, "train_clips_per_class": 5, "test_clips_per_class": 2},
        "dataset": {"train_csv": "train.csv", "test_csv": "test.csv", "test_audio_dir": "audio_test"},
    }
    assert listed_file_counts(settings, None) == {"train": 15, "test": 6}
    (tmp_path / "train.csv").write_text("fname,label,manually_verified\na.wav,x,1\nb.wav,x,0\n")
    (tmp_path / "audio_test").mkdir()
    for name in ("t1.wav", "t2.wav", "t3.wav"):
        (tmp_path / "audio_test" / name).write_bytes(b"")
    assert listed_file_counts(settings, tmp_path) == {"train": 2, "test": 3}  # no test CSV
    (tmp_path / "test.csv").write_text("fname,label,usage\nt1.wav,x,Public\n")
    assert listed_file_counts(settings, tmp_path) == {"train": 2, "test": 1}


def test_merged_manifest_does_not_depend_on_the_sharding(tmp_path):
    """One row per file in fname order, whatever the number of shards (auto follows --cores)."""
    rows = [
        dict.fromkeys(MANIFEST_COLUMNS, "") | {"fname": f"{name}.wav", "shard": str(i % 3)}
        for i, name in enumerate(["d", "a", "c", "b", "e"])
    ]
    merged = {}
    for n_shards in (1, 3):
        paths = []
        for shard in range(n_shards):
            part = [r for i, r in enumerate(rows) if i % n_shards == shard]
            path = tmp_path / f"{n_shards}_shard{shard}.csv"
            write_csv(pd.DataFrame(part, columns=MANIFEST_COLUMNS), path)
            paths.append(path)
        merged[n_shards] = merge_manifests(paths, tmp_path / f"merged{n_shards}.csv")
    assert list(merged[1]["fname"]) == list(merged[3]["fname"]) == [f"{c}.wav" for c in "abcde"]
    assert list(read_csv_str(tmp_path / "merged3.csv")["fname"]) == list(merged[3]["fname"])


def test_streamed_shard_files_equal_the_in_memory_shard(mixed_listing, tmp_path, repeatable_sox):
    """The job's path (each clip appended to the array file as computed) writes exactly what
    gather_shard + write_shard write: same array bytes, same manifests."""
    paths = {
        kind: (
            {v: tmp_path / kind / f"v{v}.npy" for v in VERSIONS},
            {v: tmp_path / kind / f"v{v}.csv" for v in VERSIONS},
        )
        for kind in ("memory", "streamed")
    }
    arrays, manifests = gather_shard(
        shard_clips(mixed_listing, 0, 2, VERSIONS, SR, SPEC_SOX_EFFECTS), VERSIONS
    )
    write_shard(arrays, manifests, *paths["memory"])
    streamed = write_shard_files(
        shard_clips(mixed_listing, 0, 2, VERSIONS, SR, SPEC_SOX_EFFECTS), VERSIONS, *paths["streamed"]
    )
    for version in VERSIONS:
        pd.testing.assert_frame_equal(streamed[version], manifests[version])
        memory, stream = (np.load(paths[k][0][version]) for k in ("memory", "streamed"))
        assert stream.shape == memory.shape and stream.shape[0] > 0
        np.testing.assert_array_equal(stream, memory)
        assert paths["streamed"][1][version].read_bytes() == paths["memory"][1][version].read_bytes()


def test_a_failing_shard_job_leaves_no_array_file(mixed_listing, tmp_path, monkeypatch, sox_binary):
    """Killed half-way (here: an error on the third clip), the streamed shard leaves neither
    its array nor its manifest, so Snakemake reruns it instead of reading a partial file."""
    from workflow_lib import preprocess

    real = preprocess.load_clipped
    calls = []

    def failing(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(preprocess, "load_clipped", failing)
    out = tmp_path / "out"
    arrays = {v: out / f"v{v}.npy" for v in VERSIONS}
    csvs = {v: out / f"v{v}.csv" for v in VERSIONS}
    with pytest.raises(KeyboardInterrupt):
        write_shard_files(
            shard_clips(mixed_listing, 0, 1, VERSIONS, SR, SPEC_SOX_EFFECTS), VERSIONS, arrays, csvs
        )
    assert len(calls) == 3
    assert list(out.iterdir()) == [], "no array, no manifest, no temporary file"
