"""Build a multi-label dataset in the FSDKaggle2019 layout by mixing pairs of single-label clips.

Why this exists: the multi-label mode (config ``dataset.layout: fsdkaggle2019``) needs data
whose label sets are *known*, with a known part of them wrong, to measure how well per-label
self-verification finds the wrong labels. Mixing two clips of different classes gives a clip
whose true set is both labels; replacing one label of some noisy clips' sets with a wrong one
plants noise at a stated rate. One function does it for the synthetic demo (sounds made in
memory by :mod:`workflow_lib.demo`) and for real recordings (the command line below).

Output (``<out>``), what the workflow reads for FSDKaggle2019::

    train_curated/*.wav  train_noisy/*.wav  audio_test/*.wav
    train_curated.csv          fname,labels        curated (= verified) clips, true sets
    train_noisy.csv            fname,labels        noisy clips, one label wrong for noise_rate
    test_post_competition.csv  fname,labels,usage  (Public | Private)
    train_true_labels.csv      fname,true_label    the true sets of the training clips
    mixture_sources.csv        fname,split,source_1,source_2,gain_db,offset_s
    build_info.json            settings and counts (the demo writes demo_info.json)

A mixture is made of two source clips of different classes from the same split (the test
sources are held out first: by group, e.g. the speaker, or a stratified fraction; see
:func:`workflow_lib.noisy_dataset.holdout_mask`). Each source is peak-normalised, the second
scaled by a random gain within +-``gain_db`` and placed at a random offset inside the longer
one; the sum is peak-normalised to 0.9. Every random step draws from its own child of
``SeedSequence(seed)``: the same sources and settings give the same dataset.

Command line (FSDD: ``{digit}_{speaker}_{take}.wav``, speaker theo held out)::

    python -m workflow_lib.mixtures --audio-dir recordings --out data/fsdd_pairs \\
        --name-pattern '^(?P<label>\\d)_(?P<group>[a-z]+)_\\d+\\.wav$' --test-groups theo
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from .io import atomic_path, write_csv, write_json
from .labels import join_labels, split_labels
from .noisy_dataset import (
    PRIVATE,
    PUBLIC,
    add_source_arguments,
    check_fraction,
    check_seed,
    holdout_mask,
    prepare_audio_dir,
    read_labels,
    run_builder_cli,
)

#: Audio folders and listings of the FSDKaggle2019 layout (config.yaml's defaults).
CURATED_DIR, NOISY_DIR, TEST_DIR = "train_curated", "train_noisy", "audio_test"
CURATED_CSV, NOISY_CSV, TEST_CSV = "train_curated.csv", "train_noisy.csv", "test_post_competition.csv"
TRUE_LABELS_CSV, SOURCES_CSV = "train_true_labels.csv", "mixture_sources.csv"
#: Peak of every written mixture (headroom for the 16-bit files).
PEAK = 0.9

#: Loads a source clip by its fname: (mono float samples, sample rate).
Loader = Callable[[str], tuple[np.ndarray, int]]


@dataclass(frozen=True)
class MixtureSettings:
    """Everything that decides the content of a built dataset (recorded in build_info.json)."""

    test_groups: tuple[str, ...] = ()
    """Groups (e.g. speakers) whose clips make the test mixtures; empty: use test_fraction."""

    test_fraction: float = 0.2
    """Share of the source clips per class held out for the test mixtures (no test_groups)."""

    public_fraction: float = 0.2
    """Share of the test mixtures marked usage=Public (the rest Private)."""

    curated_fraction: float = 0.4
    """Share of the training mixtures that are curated (label set kept correct)."""

    noise_rate: float = 0.3
    """Share of the noisy mixtures with one label of the set replaced by a wrong one (exact)."""

    uses_per_clip: int = 1
    """Mixtures each source clip appears in (so mixtures = clips x uses / 2)."""

    gain_db: float = 6.0
    """The second clip's level relative to the first: uniform in +-gain_db."""

    seed: int = 2019
    """Root seed of every random choice."""

    def __post_init__(self) -> None:
        """Normalise the groups and refuse bad values before any file is touched."""
        groups = (self.test_groups,) if isinstance(self.test_groups, str) else self.test_groups
        object.__setattr__(self, "test_groups", tuple(str(g) for g in groups))
        for name in ("test_fraction", "public_fraction", "curated_fraction", "noise_rate"):
            check_fraction(name, getattr(self, name))
        if (
            isinstance(self.uses_per_clip, bool)
            or not isinstance(self.uses_per_clip, int)
            or self.uses_per_clip < 1
        ):
            raise ValueError(f"uses_per_clip must be a positive integer, got {self.uses_per_clip!r}")
        if not 0 <= float(self.gain_db) <= 60:
            raise ValueError(f"gain_db must be in [0, 60], got {self.gain_db!r}")
        check_seed(self.seed)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form for build_info.json."""
        data = dataclasses.asdict(self)
        data["test_groups"] = list(self.test_groups)
        data["seed"] = int(self.seed)
        return data


# --------------------------------------------------------------------------- planning


def pair_clips(labels: Sequence[str], uses: int, rng: np.random.Generator) -> np.ndarray:
    """(m, 2) indices into ``labels``: pairs of clips of different classes, each clip in
    ``uses`` pairs (one clip fewer when the count is odd).

    A random deal, then every pair of one class swaps its second clip with another pair's
    where both pairs end up mixed; a class holding more than half the clips cannot be paired.
    """
    labels = np.asarray(labels, dtype=object)
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2 or counts.max() * 2 > len(labels):
        raise ValueError(
            f"cannot pair {len(labels)} clip(s) into mixtures of two classes: "
            "one class holds more than half of them (or there is only one class)"
        )
    pool = rng.permutation(np.repeat(np.arange(len(labels)), uses))
    pairs = pool[: len(pool) // 2 * 2].reshape(-1, 2)
    for i in range(len(pairs)):
        if labels[pairs[i, 0]] == labels[pairs[i, 1]]:
            _swap_partner(pairs, i, labels, rng)
    return pairs


def _swap_partner(pairs: np.ndarray, i: int, labels: np.ndarray, rng: np.random.Generator) -> None:
    """Swap pair ``i``'s second clip with a clip of another pair so both pairs mix two classes."""
    a, b = labels[pairs[i, 0]], labels[pairs[i, 1]]
    for j in rng.permutation(len(pairs)):
        for side in (0, 1):
            c, d = labels[pairs[j, side]], labels[pairs[j, 1 - side]]
            if c != a and b != d:
                pairs[i, 1], pairs[j, side] = pairs[j, side], pairs[i, 1]
                return
    raise ValueError(f"cannot pair the clips of class {a!r} with clips of other classes")


def _mixture_plan(
    sources: pd.DataFrame, split: str, settings: MixtureSettings, rng: np.random.Generator
) -> pd.DataFrame:
    """One row per mixture of ``sources``: fname, source_1, source_2, label (true set), gain_db,
    offset (share of the longer clip's spare length before the shorter one)."""
    pairs = pair_clips(sources["label"].tolist(), settings.uses_per_clip, rng)
    names, labels = sources["fname"].to_numpy(), sources["label"].to_numpy()
    return pd.DataFrame(
        {
            "fname": [f"{split}_{i:05d}.wav" for i in range(len(pairs))],
            "source_1": names[pairs[:, 0]],
            "source_2": names[pairs[:, 1]],
            "label": [join_labels(labels[pair]) for pair in pairs],
            "gain_db": rng.uniform(-settings.gain_db, settings.gain_db, len(pairs)),
            "offset": rng.random(len(pairs)),
        }
    )


def replace_one_label(
    sets: Sequence[str], rate: float, classes: Sequence[str], rng: np.random.Generator
) -> list[str]:
    """``sets`` with exactly ``round(rate * len)`` of them changed: one label of the set (at
    random) replaced by a class not in the set (uniform), so the set keeps its size and every
    changed set holds exactly one wrong label."""
    check_fraction("rate", rate)
    out = list(sets)
    n_change = int(round(rate * len(out)))
    for index in np.sort(rng.choice(len(out), size=n_change, replace=False)) if n_change else []:
        labels = split_labels(out[index])
        others = [c for c in classes if c not in labels]
        if not others:
            raise ValueError(f"no class is outside the set {out[index]!r}: noise needs more classes")
        labels[int(rng.integers(len(labels)))] = others[int(rng.integers(len(others)))]
        out[index] = join_labels(labels)
    return out


def _exact_mask(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``round(fraction * n)`` of ``n`` items, at random."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: int(round(fraction * n))]] = True
    return mask


def plan_mixtures(sources: pd.DataFrame, settings: MixtureSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decide every mixture before any audio is made: (train, test) plans.

    ``sources``: fname, label (one class), group ('' when none). Train plan columns: those of
    :func:`_mixture_plan` with label = the given set, plus true_label and verified (1 curated,
    0 noisy); test plan: plus usage.
    """
    split_ss, train_ss, test_ss, curated_ss, noise_ss, public_ss = np.random.SeedSequence(
        int(settings.seed)
    ).spawn(6)
    is_test = holdout_mask(
        sources, settings.test_groups, settings.test_fraction, np.random.default_rng(split_ss)
    )
    classes = sorted(sources["label"].unique())
    train = _mixture_plan(sources[~is_test], "train", settings, np.random.default_rng(train_ss))
    test = _mixture_plan(sources[is_test], "test", settings, np.random.default_rng(test_ss))
    train["true_label"] = train["label"]
    curated = _exact_mask(len(train), settings.curated_fraction, np.random.default_rng(curated_ss))
    train["verified"] = curated.astype(np.int64)
    train.loc[~curated, "label"] = replace_one_label(
        train.loc[~curated, "true_label"].tolist(),
        settings.noise_rate,
        classes,
        np.random.default_rng(noise_ss),
    )
    public = _exact_mask(len(test), settings.public_fraction, np.random.default_rng(public_ss))
    test["usage"] = np.where(public, PUBLIC, PRIVATE)
    return train, test


# --------------------------------------------------------------------------- audio


def mix_pair(first: np.ndarray, second: np.ndarray, gain_db: float, offset: float) -> np.ndarray:
    """Both clips peak-normalised, the second scaled by ``gain_db``, the shorter placed at
    ``offset`` (share of the spare length) inside the longer; the sum peak-normalised to PEAK."""
    first = _peak_normalised(first)
    second = _peak_normalised(second) * 10 ** (gain_db / 20)
    longer, shorter = (first, second) if len(first) >= len(second) else (second, first)
    start = int(round(offset * (len(longer) - len(shorter))))
    out = longer.astype(np.float64).copy()
    out[start : start + len(shorter)] += shorter
    return (_peak_normalised(out) * PEAK).astype(np.float32)


def _peak_normalised(samples: np.ndarray) -> np.ndarray:
    """Samples scaled to peak 1 (an all-zero clip stays zero)."""
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    return np.asarray(samples, dtype=np.float64) / (peak if peak > 0 else 1.0)


def _write_mixtures(plan: pd.DataFrame, folder: Path, load: Loader) -> list[float]:
    """Write each mixture of ``plan`` into ``folder``; return the offsets in seconds."""
    offsets = []
    for row in plan.itertuples(index=False):
        (a, rate_a), (b, rate_b) = load(row.source_1), load(row.source_2)
        if rate_a != rate_b:
            raise ValueError(
                f"{row.source_1} ({rate_a} Hz) and {row.source_2} ({rate_b} Hz) differ in sample "
                "rate; resample the sources to one rate first"
            )
        offsets.append(round(row.offset * abs(len(a) - len(b)) / rate_a, 4))
        with atomic_path(folder / row.fname) as tmp:
            sf.write(
                str(tmp), mix_pair(a, b, row.gain_db, row.offset), rate_a, subtype="PCM_16", format="WAV"
            )
    return offsets


def file_loader(audio_dir: Path) -> Loader:
    """Load sources from ``audio_dir``: mono (channels averaged), float, native rate."""

    def load(fname: str) -> tuple[np.ndarray, int]:
        samples, rate = sf.read(str(audio_dir / fname), dtype="float64", always_2d=True)
        return samples.mean(axis=1), int(rate)

    return load


# --------------------------------------------------------------------------- writing


def write_mixture_dataset(
    out_dir: str | os.PathLike[str],
    sources: pd.DataFrame,
    load: Loader,
    settings: MixtureSettings,
    *,
    overwrite: bool = False,
    info_name: str = "build_info.json",
    info_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan, mix and write the dataset under ``out_dir``; return the info it also writes
    (counts and settings, plus ``info_extra``, e.g. where the sources came from).

    Every decision is made (and checked) before anything is written; ``info_name`` is written
    last, so its presence marks a finished build. Clips from an earlier build in the audio
    folders are an error unless ``overwrite``.
    """
    out = Path(out_dir)
    train, test = plan_mixtures(sources, settings)
    curated = train[train["verified"] == 1]
    noisy = train[train["verified"] == 0]
    offsets = {}
    for folder, plan in ((CURATED_DIR, curated), (NOISY_DIR, noisy), (TEST_DIR, test)):
        prepare_audio_dir(out / folder, overwrite)
        offsets[folder] = _write_mixtures(plan, out / folder, load)
    write_csv(curated.rename(columns={"label": "labels"})[["fname", "labels"]], out / CURATED_CSV)
    write_csv(noisy.rename(columns={"label": "labels"})[["fname", "labels"]], out / NOISY_CSV)
    write_csv(test.rename(columns={"label": "labels"})[["fname", "labels", "usage"]], out / TEST_CSV)
    write_csv(train[["fname", "true_label"]], out / TRUE_LABELS_CSV)
    write_csv(_sources_table(curated, noisy, test, offsets), out / SOURCES_CSV)
    info = {**_build_info(settings, sources, train, test), **(info_extra or {})}
    write_json(info, out / info_name)
    return info


def _sources_table(
    curated: pd.DataFrame, noisy: pd.DataFrame, test: pd.DataFrame, offsets: dict[str, list[float]]
) -> pd.DataFrame:
    """Which two clips each mixture holds, the second's gain and the shorter's offset."""
    parts = []
    splits = (("curated", curated, CURATED_DIR), ("noisy", noisy, NOISY_DIR), ("test", test, TEST_DIR))
    for split, plan, folder in splits:
        part = plan[["fname", "source_1", "source_2"]].copy()
        part.insert(1, "split", split)
        part["gain_db"] = plan["gain_db"].round(3).to_numpy()
        part["offset_s"] = offsets[folder]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _build_info(
    settings: MixtureSettings, sources: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame
) -> dict[str, Any]:
    """Settings and counts, enough to reproduce and to sanity-check a build at a glance."""
    wrong = train["label"] != train["true_label"]
    return {
        "settings": settings.to_json(),
        "split": "groups" if settings.test_groups else "fraction",
        "classes": sorted(sources["label"].unique().tolist()),
        "n_sources": int(len(sources)),
        "n_train": int(len(train)),
        "n_verified": int((train["verified"] == 1).sum()),
        "n_unverified": int((train["verified"] == 0).sum()),
        "n_wrong_labels": int(wrong.sum()),
        "n_test": int(len(test)),
        "n_public": int((test["usage"] == PUBLIC).sum()),
        "n_private": int((test["usage"] == PRIVATE).sum()),
    }


def build_mixture_dataset(
    audio_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: MixtureSettings,
    labels_csv: str | os.PathLike[str] | None = None,
    name_pattern: str | re.Pattern[str] | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Real recordings: the labelled ``.wav`` clips of ``audio_dir`` (labels and groups from a
    CSV or the file names, :func:`workflow_lib.noisy_dataset.read_labels`) mixed in pairs."""
    sources = read_labels(audio_dir, labels_csv=labels_csv, name_pattern=name_pattern)
    pattern = name_pattern.pattern if isinstance(name_pattern, re.Pattern) else name_pattern
    origin = {
        "audio_dir": str(audio_dir),
        "labels_csv": None if labels_csv is None else str(labels_csv),
        "name_pattern": pattern,
    }
    return write_mixture_dataset(
        out_dir,
        sources,
        file_loader(Path(audio_dir)),
        settings,
        overwrite=overwrite,
        info_extra={"source": origin},
    )


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    """Argument parser; defaults mirror MixtureSettings."""
    d = MixtureSettings()
    p = argparse.ArgumentParser(
        prog="python -m workflow_lib.mixtures",
        description="Build a multi-label dataset (FSDKaggle2019 layout) by mixing pairs of labelled WAVs.",
    )
    add_source_arguments(p, d.test_fraction)
    p.add_argument("--curated-fraction", type=float, default=d.curated_fraction)
    p.add_argument("--noise-rate", type=float, default=d.noise_rate)
    p.add_argument("--public-fraction", type=float, default=d.public_fraction)
    p.add_argument("--uses-per-clip", type=int, default=d.uses_per_clip)
    p.add_argument("--gain-db", type=float, default=d.gain_db)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--overwrite", action="store_true", help="replace clips from an earlier build")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints build_info as JSON. Returns 0, or 1 on a rejected input."""
    args = _parser().parse_args(argv)

    def build() -> dict[str, Any]:
        settings = MixtureSettings(
            test_groups=args.test_groups,
            test_fraction=args.test_fraction,
            public_fraction=args.public_fraction,
            curated_fraction=args.curated_fraction,
            noise_rate=args.noise_rate,
            uses_per_clip=args.uses_per_clip,
            gain_db=args.gain_db,
            seed=args.seed,
        )
        return build_mixture_dataset(
            args.audio_dir,
            args.out,
            settings,
            labels_csv=args.labels_csv,
            name_pattern=args.name_pattern,
            overwrite=args.overwrite,
        )

    return run_builder_cli(build, rejected=(sf.LibsndfileError,))


if __name__ == "__main__":
    raise SystemExit(main())
