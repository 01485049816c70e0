"""Sharded preprocessing: SoX clipping once per file, then every needed spectrogram version.

One Snakemake job processes one shard of a split, so a corpus of 10,000 files is a handful of
jobs, not 10,000. Shards are balanced by work, not by file count: a file's cost is its audio
duration (read from its header) plus a fixed per-file cost (SoX start, decoding), and files
are dealt out longest first to the least-loaded shard (:func:`shard_assignment`). Every shard
job computes the same assignment from the same listing, so no job needs to talk to another.
``preprocessing.shards: auto`` picks the number of shards from the number of files and the
cores Snakemake was given (:func:`workflow_lib.shards.resolve_shards`). A shard writes, per
version, one time-major array of shape (sum of frames, 128) holding its clips one after
another, and a manifest CSV with each clip's offset and length. Time-major because every
reader wants frames: a clip is one contiguous block, so building a training job's clip bank
(:class:`workflow_lib.data.ClipBank`) is a plain block copy, and a shard is assembled by
appending. :class:`SpectrogramStore` reads clips back (also from shards of the earlier
(1, 128, frames) layout, written before version 0.3).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from .audio import (
    SKIPPED_BY_VALIDATION,
    USABLE_STATUSES,
    LoadedClip,
    check_sox_effects,
    load_clipped,
    require_sox,
)
from .io import load_npy, npy_row_writer, read_csv_str, write_csv, write_npy

N_BINS = 128

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "fname",
    "label",
    "verified",
    "n_frames",
    "seconds_before_clipping",
    "seconds_after_clipping",
    "status",
    "shard",
    "offset",
    "detail",
]


#: Per-file cost in seconds-of-audio units (SoX start-up, temporary file, decode): on FSDD's
#: 0.44 s clips these dominate, on FSDKaggle2018's 2-10 s clips the duration does.
FIXED_COST_SECONDS = 0.5


def audio_seconds(paths: Sequence[str]) -> np.ndarray:
    """Duration of each file from its header (soundfile.info, no decoding); 0 if unreadable."""
    seconds = np.zeros(len(paths), dtype=np.float64)
    for i, path in enumerate(paths):
        try:
            info = sf.info(str(path))
            seconds[i] = info.frames / info.samplerate
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError):
            pass  # missing or undecodable: skipped quickly by the shard job, fixed cost only
    return seconds


def shard_assignment(costs: np.ndarray, n_shards: int) -> np.ndarray:
    """Shard index of every file: longest first to the least-loaded shard (LPT, deterministic).

    Ties go to the lowest shard index, so equal costs deal the files out round-robin.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    costs = np.asarray(costs, dtype=np.float64)
    assignment = np.zeros(len(costs), dtype=np.int64)
    loads = [(0.0, shard) for shard in range(n_shards)]
    for index in np.argsort(-costs, kind="stable"):
        load, shard = heapq.heappop(loads)
        assignment[index] = shard
        heapq.heappush(loads, (load + float(costs[index]), shard))
    return assignment


def file_costs(listing: pd.DataFrame) -> np.ndarray:
    """Expected work per listed file: duration from the header plus the fixed per-file cost."""
    if "path" not in listing.columns:
        return np.ones(len(listing))
    return audio_seconds(list(listing["path"])) + FIXED_COST_SECONDS


def shard_of(
    listing: pd.DataFrame, shard: int, n_shards: int, costs: np.ndarray | None = None
) -> pd.DataFrame:
    """The rows of one shard, in listing order; shards balanced by ``costs`` (default: by
    :func:`file_costs`). Disjoint and complete over ``range(n_shards)``."""
    costs = file_costs(listing) if costs is None else costs
    return listing[shard_assignment(costs, n_shards) == shard]


def manifest_row(row: pd.Series, clip, shard: int) -> dict:
    """The manifest's record of one clip before its spectrograms are written: durations
    before and after silence clipping, so a clip SoX emptied is visible in the manifest."""
    return {
        "fname": row["fname"],
        "label": row.get("label", ""),
        "verified": row.get("verified", ""),
        "n_frames": 0,
        "seconds_before_clipping": round(clip.seconds_before_clipping, 6),
        "seconds_after_clipping": round(clip.seconds_after_clipping, 6),
        "status": clip.status,
        "shard": shard,
        "offset": 0,
        "detail": clip.detail,
    }


def shard_clips(
    listing: pd.DataFrame,
    shard: int,
    n_shards: int,
    versions: Sequence[int],
    sample_rate: int,
    sox_effects: Sequence[str],
    implementation: str = "fast",
) -> Iterator[tuple[dict, dict[int, np.ndarray]]]:
    """Clip and transform the shard's files one after another: per file its manifest row and
    per version its time-major (frames, 128) spectrogram ((0, 128) for a skipped file).

    ``implementation``: "fast" (default) or "reference" spectrograms (workflow_lib.spectrograms).
    One file at a time, so a consumer can write each clip out before the next is computed.
    """
    for row, clip in clipped_shard(listing, shard, n_shards, sample_rate, sox_effects):
        yield (
            manifest_row(row, clip, shard),
            clip_spectrograms(clip, row, versions, sample_rate, implementation),
        )


def clipped_shard(
    listing: pd.DataFrame, shard: int, n_shards: int, sample_rate: int, sox_effects: Sequence[str]
) -> Iterator[tuple[pd.Series, LoadedClip]]:
    """The shard's rows with their SoX-clipped audio, one file at a time: what
    :func:`shard_clips` turns into spectrograms, and what waveform augmentation
    (workflow_lib/waveform_augment.py) makes its copies from, so both start from the same audio.
    """
    require_sox()
    check_sox_effects(tuple(sox_effects))
    with tempfile.TemporaryDirectory(prefix="sox_clip_") as workdir:  # one for the whole shard
        for _, row in shard_of(listing, shard, n_shards).iterrows():
            if row["path"]:
                clip = load_clipped(Path(row["path"]), sample_rate, tuple(sox_effects), workdir=Path(workdir))
            else:  # a test row validation kept without a file (missing or refused symlink)
                clip = LoadedClip(SKIPPED_BY_VALIDATION, None, 0.0, 0.0, "see data/problems.csv")
            yield row, clip


def clip_spectrograms(
    clip: LoadedClip, row: pd.Series, versions: Sequence[int], sample_rate: int, implementation: str
) -> dict[int, np.ndarray]:
    """Per version the clip's (frames, 128) spectrogram; (0, 128) for a skipped clip."""
    from .spectrograms import compute_spectrogram  # librosa/madmom: only preprocessing needs them

    if not clip.usable:
        log.warning("skipped %s: %s (%s)", row["fname"], clip.status, clip.detail)
        return dict.fromkeys(versions, np.zeros((0, N_BINS), dtype=np.float32))
    # The fast functions return (1, 128, T) views of time-major storage, so this transpose is
    # free there; the reference ones are transposed here, one clip at a time.
    return {
        version: np.ascontiguousarray(
            compute_spectrogram(version, clip.samples, sample_rate, implementation)[0].T
        )
        for version in versions
    }


def _manifests(
    rows: list[dict], frames: dict[int, list[int]], columns: Sequence[str] = tuple(MANIFEST_COLUMNS)
) -> dict[int, pd.DataFrame]:
    """Per version: the rows with each clip's frame count and its offset in the shard array."""
    manifests = {}
    for version, counts in frames.items():
        manifest = pd.DataFrame(rows, columns=list(columns))
        n_frames = np.asarray(counts, dtype=np.int64)
        manifest["n_frames"] = n_frames
        manifest["offset"] = (np.cumsum(n_frames) - n_frames).astype(np.int64)
        manifests[version] = manifest
    return manifests


def _consume(
    clips: Iterable[tuple[dict, dict[int, np.ndarray]]],
    sinks: dict[int, Callable[[np.ndarray], None]],
    columns: Sequence[str] = tuple(MANIFEST_COLUMNS),
) -> dict[int, pd.DataFrame]:
    """Hand each clip's spectrogram of each version to that version's sink; the manifests
    (``columns``: the manifest's columns, waveform copies add theirs)."""
    rows: list[dict] = []
    frames: dict[int, list[int]] = {v: [] for v in sinks}
    for row, spectrograms in clips:
        rows.append(row)
        for version, sink in sinks.items():
            sink(spectrograms[version])
            frames[version].append(len(spectrograms[version]))
    return _manifests(rows, frames, columns)


def gather_shard(
    clips: Iterable[tuple[dict, dict[int, np.ndarray]]],
    versions: Sequence[int],
    columns: Sequence[str] = tuple(MANIFEST_COLUMNS),
) -> tuple[dict[int, np.ndarray], dict[int, pd.DataFrame]]:
    """The shard in memory (``clips`` from :func:`shard_clips`): per version its (frames, 128)
    array and its manifest. For inspection and tests; the job streams (:func:`write_shard_files`).
    """
    blocks: dict[int, list[np.ndarray]] = {v: [] for v in versions}
    manifests = _consume(clips, {v: blocks[v].append for v in versions}, columns)
    empty = np.zeros((0, N_BINS), dtype=np.float32)
    return {v: np.concatenate([empty, *blocks[v]]) for v in versions}, manifests


def write_shard_files(
    clips: Iterable[tuple[dict, dict[int, np.ndarray]]],
    versions: Sequence[int],
    array_paths: dict[int, Path],
    manifest_paths: dict[int, Path],
    columns: Sequence[str] = tuple(MANIFEST_COLUMNS),
) -> dict[int, pd.DataFrame]:
    """What the ``preprocess_shard`` job does with :func:`shard_clips`: each clip's
    spectrograms are appended to the version's array file as soon as they are computed, so
    memory holds one clip, not the shard (a shard of FSDKaggle2018's training clips is
    gigabytes). Arrays and manifests are written atomically
    (:func:`workflow_lib.io.npy_row_writer`), the manifests last.
    """
    with contextlib.ExitStack() as stack:
        sinks = {v: stack.enter_context(npy_row_writer(array_paths[v], N_BINS)) for v in versions}
        manifests = _consume(clips, sinks, columns)
    for version, manifest in manifests.items():
        write_csv(manifest, manifest_paths[version])
    return manifests


def write_shard(
    arrays: dict[int, np.ndarray],
    manifests: dict[int, pd.DataFrame],
    array_paths: dict[int, Path],
    manifest_paths: dict[int, Path],
) -> None:
    """Write each version's in-memory array and manifest atomically (see :func:`gather_shard`)."""
    for version, array in arrays.items():
        write_npy(array, array_paths[version])
        write_csv(manifests[version], manifest_paths[version])


def merge_manifests(shard_manifests: Sequence[Path], out_path: Path) -> pd.DataFrame:
    """Concatenate shard manifests into the split's manifest (one row per listed file).

    Rows are sorted by fname, so the split's manifest (and every job reading clips in its
    order: test posteriors, the submission) does not depend on how the files were sharded.
    """
    frames = [read_csv_str(p) for p in shard_manifests]
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MANIFEST_COLUMNS)
    merged = merged.sort_values("fname", kind="stable").reset_index(drop=True)
    write_csv(merged, out_path)
    return merged


@dataclass
class SpectrogramStore:
    """Per-clip access to the sharded arrays of one version and split.

    Shard arrays are memory-mapped, so several training jobs reading the same files share the
    operating system's page cache instead of holding private copies.
    """

    manifest: pd.DataFrame
    shard_arrays: dict[int, np.ndarray]

    @classmethod
    def open(cls, manifest_csv: Path, usable_only: bool = True) -> SpectrogramStore:
        manifest = read_csv_str(manifest_csv)
        for column in ("n_frames", "shard", "offset"):
            manifest[column] = manifest[column].astype(np.int64)
        if usable_only:
            manifest = manifest[manifest["status"].isin(USABLE_STATUSES)].reset_index(drop=True)
        folder = Path(manifest_csv).with_suffix("")
        arrays = {
            int(s): load_npy(folder / f"shard{int(s)}.npy", rule="preprocess_shard")
            for s in manifest["shard"].unique()
        }
        return cls(manifest, arrays)

    def frames_of(self, shard: int, start: int, length: int) -> np.ndarray:
        """Frames [start, start + length) of a shard as a (length, 128) view, whichever layout
        the shard was written in."""
        array = self.shard_arrays[shard]
        if array.ndim == 3:  # (1, 128, frames): the layout before version 0.3
            return array[0, :, start : start + length].T
        return array[start : start + length]

    def get(self, fname_or_index: str | int) -> np.ndarray:
        """The (1, 128, T) spectrogram of one clip (the spectrogram functions' shape)."""
        if isinstance(fname_or_index, str):
            row = self.manifest.index[self.manifest["fname"] == fname_or_index][0]
        else:
            row = fname_or_index
        shard, offset, n = self.manifest.loc[row, ["shard", "offset", "n_frames"]]
        return np.asarray(self.frames_of(shard, offset, n).T)[np.newaxis]

    def __len__(self) -> int:
        return len(self.manifest)


def joined_store(first: SpectrogramStore, second: SpectrogramStore) -> SpectrogramStore:
    """One store over two (the training clips and their waveform copies,
    workflow_lib/waveform_augment.py), so a training job builds one clip bank from both:
    ``second``'s shards are renumbered after ``first``'s. A name in both is an error (a copy
    named like a clip would silently train on the wrong audio)."""
    shared = set(first.manifest["fname"]) & set(second.manifest["fname"])
    if shared:
        raise ValueError(f"{len(shared)} clip name(s) are in both stores, e.g. {sorted(shared)[:3]}")
    step = max(first.shard_arrays, default=-1) + 1
    moved = second.manifest.assign(shard=second.manifest["shard"] + step)
    manifest = pd.concat([first.manifest, moved], ignore_index=True)
    arrays = {**first.shard_arrays, **{shard + step: a for shard, a in second.shard_arrays.items()}}
    return SpectrogramStore(manifest, arrays)
