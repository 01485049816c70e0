"""Waveform augmentation in preprocessing (config ``preprocessing.waveform_augmentation``).

Not in the paper; after the Tomofun dog-sound system: each training clip gets ``copies``
augmented copies, made with audiomentations from the clip's SoX-clipped audio (time stretch,
time shift with roll-over, gain, and background noise from a folder the user names, mixed at a
random signal-to-noise ratio), and stored as extra spectrogram rows of every version the run
computes, in a manifest of their own (``spectrograms/v<version>/train_copies.csv``) that names
each copy's source clip. Training samples from them; nothing else reads them.

Why after SoX, not before: SoX's chain starts and ends with ``norm -0.1``, which would undo the
gain, and its silence detector (0.15 % of full scale) would keep the noise added before it as
"sound", so the copies would keep the silence SoX removes from every original. After SoX the
copy's audio is the original's as the spectrogram functions see it, then augmented, then the
same spectrogram functions (both versions, fast or reference) as the originals.

A copy is named ``<source fname>__aug<k>`` (k = 0 ... copies - 1) and seeded by (run seed,
source, k): a rerun, a resumed or re-sharded preprocessing gives the same audio. The copies of
a clip train only where the clip trains (workflow_lib/stages.py ``with_copies``): never in a
validation fold, never judged by self-verification, never predicted or scored.

The noise folder is untrusted input: every file under it is checked (links leading outside the
folder, undecodable, empty, non-finite or all-zero audio are skipped, each with its reason in
``data/noise_files.csv``), and a folder without one usable file is an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .audio import LoadedClip, is_digital_silence, probe
from .errors import UserError
from .job_settings import derive_seed
from .preprocess import MANIFEST_COLUMNS, clip_spectrograms, clipped_shard, manifest_row

log = logging.getLogger(__name__)

#: What joins a copy's name to its source's: ``<fname>__aug<k>``.
COPY_MARK = "__aug"
#: The copies' manifest: the originals' columns, the source clip, the copy's index and the
#: parameters audiomentations drew for it (JSON).
COPY_COLUMNS = [*MANIFEST_COLUMNS, "source", "copy", "augmentation"]
#: data/noise_files.csv: every file under the noise folder and whether it is used.
NOISE_COLUMNS = ["file", "status", "seconds", "detail"]
USABLE_NOISE = "usable"
#: Parameters audiomentations draws that change nothing here: whether a step applies (each
#: always does) and the absolute noise level (the noise is mixed at a relative level, snr_db).
UNRECORDED_PARAMETERS = frozenset({"should_apply", "rms_db"})


@dataclass(frozen=True, kw_only=True)
class WaveformAugmentation:
    """The resolved settings (job_settings.waveform_augmentation_settings), one object."""

    copies: int
    time_stretch: tuple[float, float]
    shift: float
    rollover: bool
    gain_db: tuple[float, float]
    noise_dir: str
    snr_db: tuple[float, float]
    seed: int

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> WaveformAugmentation:
        """From the job's JSON settings (lists become tuples)."""
        ranges = {key: tuple(settings[key]) for key in ("time_stretch", "gain_db", "snr_db")}
        return cls(**{**settings, **ranges})

    @property
    def noise(self) -> bool:
        """Whether copies get background noise (a noise folder is named)."""
        return bool(self.noise_dir)


def copy_name(fname: str, k: int) -> str:
    """The name of copy ``k`` of clip ``fname``."""
    return f"{fname}{COPY_MARK}{k}"


def copy_seed(seed: int, fname: str, k: int) -> int:
    """The seed of one copy: fixed by the run's seed, the source's name and the copy's index,
    so it does not depend on the shard or on the order the clips are processed in."""
    return derive_seed(seed, "waveform_copy", fname, k)


# --- the noise folder --------------------------------------------------------------------------


def _candidates(folder: Path) -> Iterator[Path]:
    """Every non-hidden file under ``folder``, sorted, never descending into a linked folder
    (os.walk lists it with the folders; it is returned as a candidate and refused by
    :func:`_noise_row`)."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        links = [d for d in dirs if (Path(root) / d).is_symlink()]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
        for name in sorted([*files, *links]):
            if not name.startswith("."):
                yield Path(root) / name


def _noise_row(path: Path, folder: Path) -> dict[str, Any]:
    """One row of the noise table: why a file is or is not used."""
    row = {"file": str(path.relative_to(folder)), "status": USABLE_NOISE, "seconds": 0.0, "detail": ""}
    if not path.resolve().is_relative_to(folder.resolve()):
        return {**row, "status": "skipped_outside", "detail": f"link to {path.resolve()}, outside the folder"}
    if path.is_dir():
        return {**row, "status": "skipped_folder_link", "detail": "a link to a folder is not followed"}
    status, info, detail = probe(path)
    if status != "ok":
        return {**row, "status": status, "detail": detail}
    row["seconds"] = round(info.frames / info.samplerate, 6)
    if is_digital_silence(path):
        return {**row, "status": "skipped_silent", "detail": "all samples are zero"}
    return row


def noise_table(folder: Path) -> pd.DataFrame:
    """Every file under the noise folder with its status (``usable`` or why it is skipped);
    a UserError when the folder is missing or holds no usable file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"config key preprocessing.waveform_augmentation.noise_dir: {folder} is not a folder")
    table = pd.DataFrame([_noise_row(p, folder) for p in _candidates(folder)], columns=NOISE_COLUMNS)
    if not (table["status"] == USABLE_NOISE).any():
        reasons = table["status"].value_counts().to_dict() if len(table) else "no files"
        raise UserError(
            f"config key preprocessing.waveform_augmentation.noise_dir: {folder} holds no usable "
            f"noise recording ({reasons}); add audio files or set noise_dir: '' (no noise)"
        )
    return table


def usable_noise(table: pd.DataFrame, folder: Path) -> list[Path]:
    """The paths of the usable files of a noise table (:func:`noise_table`)."""
    files = table.loc[table["status"] == USABLE_NOISE, "file"]
    if files.empty:
        raise UserError(f"no usable noise recording under {folder} (see data/noise_files.csv)")
    return [Path(folder) / name for name in files]


# --- the copies ------------------------------------------------------------------------------


def build_transform(aug: WaveformAugmentation, noise: Sequence[Path]) -> Any:
    """The audiomentations chain of the settings: each step that is on, always applied."""
    # audiomentations imports librosa and numba: only the jobs that make copies need it
    from audiomentations import AddBackgroundNoise, Compose, Gain, Shift, TimeStretch

    steps: list[Any] = []
    if aug.time_stretch != (1.0, 1.0):
        low, high = aug.time_stretch
        steps.append(TimeStretch(min_rate=low, max_rate=high, leave_length_unchanged=False, p=1.0))
    if aug.shift > 0:
        steps.append(Shift(min_shift=-aug.shift, max_shift=aug.shift, rollover=aug.rollover, p=1.0))
    if aug.gain_db != (0.0, 0.0):
        steps.append(Gain(min_gain_db=aug.gain_db[0], max_gain_db=aug.gain_db[1], p=1.0))
    if aug.noise:
        low, high = aug.snr_db
        steps.append(
            AddBackgroundNoise(sounds_path=[str(p) for p in noise], min_snr_db=low, max_snr_db=high, p=1.0)
        )
    return Compose(steps, p=1.0)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Python's and numpy's global random state seeded (audiomentations draws from both),
    and put back afterwards, so a copy depends on its seed only."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def augment_samples(
    transform: Any, samples: np.ndarray, sample_rate: int, seed: int, noise_dir: str = ""
) -> tuple[np.ndarray, dict[str, Any]]:
    """One copy of a clip's samples, and the parameters drawn for it (for its manifest row;
    the noise file relative to ``noise_dir``)."""
    with _seeded(seed), warnings.catch_warnings():
        # a noise file at another rate is resampled, as it should be: not a warning per copy
        warnings.filterwarnings("ignore", message=".*had to be resampled", category=UserWarning)
        out = transform(samples=np.asarray(samples, dtype=np.float32), sample_rate=sample_rate)
    drawn: dict[str, Any] = {}
    for step in transform.transforms:
        for key, value in step.parameters.items():
            if key in UNRECORDED_PARAMETERS:
                continue
            if key == "noise_file_path":
                value = os.path.relpath(value, noise_dir) if noise_dir else value
            drawn[f"{type(step).__name__}.{key}"] = round(float(value), 6) if _numeric(value) else str(value)
    out = np.asarray(out, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"waveform augmentation gave non-finite samples (seed {seed}, {drawn})")
    return out, drawn


def _numeric(value: Any) -> bool:
    """Whether a drawn parameter is a number (rounded in the manifest) rather than a name."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def copy_clips(
    listing: pd.DataFrame,
    shard: int,
    n_shards: int,
    versions: Sequence[int],
    preprocessing: dict[str, Any],
    aug: WaveformAugmentation,
    noise: Sequence[Path] = (),
) -> Iterator[tuple[dict, dict[int, np.ndarray]]]:
    """The copies of the shard's clips, one after another: per copy its manifest row
    (:data:`COPY_COLUMNS`) and per version its (frames, 128) spectrogram, as
    :func:`workflow_lib.preprocess.shard_clips` yields the originals. A clip preprocessing
    skips gets no copies, and a copy audiomentations cannot make (a clip of one sample) is
    left out; both are logged."""
    check_copy_names(listing["fname"], aug.copies)
    transform = build_transform(aug, noise)
    rate = preprocessing["sample_rate"]
    implementation = preprocessing.get("spectrograms", "fast")
    for row, clip in clipped_shard(listing, shard, n_shards, rate, preprocessing["sox_effects"]):
        if not clip.usable:
            log.warning("no copies of %s: %s (%s)", row["fname"], clip.status, clip.detail)
            continue
        for k in range(aug.copies):
            try:
                samples, drawn = augment_samples(
                    transform, clip.samples, rate, copy_seed(aug.seed, row["fname"], k), aug.noise_dir
                )
            except ValueError as error:  # e.g. a clip SoX cut to a single sample
                log.warning("no copy %d of %s: %s", k, row["fname"], error)
                continue
            copy = LoadedClip(clip.status, samples, clip.seconds_before_clipping, len(samples) / rate)
            copy_row = {
                **manifest_row(row, copy, shard),
                "fname": copy_name(row["fname"], k),
                "source": row["fname"],
                "copy": k,
                "augmentation": json.dumps(drawn, sort_keys=True),
            }
            yield copy_row, clip_spectrograms(copy, row, versions, rate, implementation)


def check_copy_names(fnames: pd.Series, copies: int) -> None:
    """A copy's name must not be a listed clip's (``x.wav__aug0`` listed next to ``x.wav``)."""
    names = set(fnames)
    clashes = [copy_name(f, k) for f in fnames for k in range(copies) if copy_name(f, k) in names]
    if clashes:
        raise UserError(
            f"waveform augmentation: the copy name(s) {clashes[:3]} are names of listed clips; "
            f"rename those clips (copies are named <fname>{COPY_MARK}<k>)"
        )
