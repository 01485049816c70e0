"""Build a noisy-label study dataset in the FSDKaggle2018 layout from any clean labelled corpus.

Why this exists: the self-verification method needs a training set in which a *known* part of
the labels is wrong and a known part is manually verified.  Real noisy corpora never tell you
which labels are wrong; starting from a clean corpus and corrupting labels on purpose does, so
``train_true_labels.csv`` can later score how well the method finds the corrupted clips.

Output (``<out>``), matching what the rest of the workflow reads for FSDKaggle2018::

    audio_train/*.wav  audio_test/*.wav
    train.csv                  fname,label,manually_verified   (1 = verified, 0 = not)
    test_post_competition.csv  fname,label,usage               (Public | Private)
    train_true_labels.csv      fname,true_label
    build_info.json            settings used and counts

With ``pool_fraction`` > 0 (CLI ``--pool-fraction``) a stratified share of the training clips
is held back without its labels, an unlabelled pool for ``dataset.unlabelled_audio_dir``::

    audio_unlabelled/*.wav      the pool (not in train.csv)
    unlabelled_true_labels.csv  fname,true_label: for dataset.unlabelled_true_labels_csv
                                (measuring the pool decisions only)

Every random step draws from its own child of ``SeedSequence(seed)``, so changing e.g. the
public fraction does not reshuffle which training labels get corrupted.

Command line::

    python -m workflow_lib.noisy_dataset --audio-dir recordings --out data/fsdd_noisy \\
        --name-pattern '^(?P<label>\\d+)_(?P<group>[a-z]+)_\\d+\\.wav$' --test-groups theo
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import write_csv, write_json

NOISE_MODELS = ("uniform", "pairs")
COPY_MODES = ("copy", "hardlink", "symlink")
PUBLIC, PRIVATE = "Public", "Private"

# errno values for which a hard link is impossible but a plain copy will work.
_NO_HARDLINK_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


@dataclass(frozen=True)
class NoisyDatasetSettings:
    """Everything that decides the content of a built dataset (recorded in build_info.json)."""

    test_groups: tuple[str, ...] = ()
    """Groups (e.g. speakers) held out entirely as the test set; empty -> use test_fraction.
    Holding out whole groups keeps near-duplicate clips of one speaker out of both splits."""

    test_fraction: float = 0.2
    """Share of clips per class put in the test set when no test_groups are given."""

    public_fraction: float = 0.2
    """Share of test clips marked usage=Public (the rest Private), as in the Kaggle split."""

    verified_fraction: float = 0.4
    """Share of training clips per class that are manually verified (label kept correct)."""

    noise_rate: float = 0.3
    """Share of the *unverified* training clips whose label is corrupted (exact count)."""

    noise_model: str = "uniform"
    """'uniform': wrong label drawn uniformly from the other classes; 'pairs': use ``pairs``."""

    pairs: Mapping[str, str] | None = field(default=None, hash=False)
    """Confusable-label mapping (true label -> wrong label) for noise_model='pairs'. Directed:
    give both ``1:7`` and ``7:1`` for a symmetric pair. Labels without an entry fall back to
    uniform noise."""

    copy_mode: str = "copy"
    """How audio lands in the output: 'copy', 'hardlink' (copy across filesystems), 'symlink'."""

    seed: int = 2018
    """Root seed of every random choice; same seed + same input -> byte-identical CSVs."""

    pool_fraction: float = 0.0
    """Share of the training clips per class held back as an unlabelled pool (labels withheld;
    audio_unlabelled/, true labels in unlabelled_true_labels.csv), drawn before the verified
    and noisy clips are chosen among the rest. 0: no pool, the build exactly as before."""

    def __post_init__(self) -> None:
        """Normalise containers (so the frozen object is safe to share) and reject bad values
        early, before any file is touched."""
        groups = (self.test_groups,) if isinstance(self.test_groups, str) else self.test_groups
        object.__setattr__(self, "test_groups", tuple(str(g) for g in groups))
        if self.pairs is not None:
            object.__setattr__(self, "pairs", {str(k): str(v) for k, v in self.pairs.items()})
        for name in ("test_fraction", "public_fraction", "verified_fraction", "noise_rate", "pool_fraction"):
            check_fraction(name, getattr(self, name))
        if self.noise_model not in NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {NOISE_MODELS}, got {self.noise_model!r}")
        if self.noise_model == "pairs" and not self.pairs:
            raise ValueError("noise_model 'pairs' needs a non-empty pairs mapping")
        if self.noise_model == "uniform" and self.pairs:
            raise ValueError("pairs were given but noise_model is 'uniform'; use noise_model='pairs'")
        if self.copy_mode not in COPY_MODES:
            raise ValueError(f"copy_mode must be one of {COPY_MODES}, got {self.copy_mode!r}")
        check_seed(self.seed)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form for build_info.json."""
        data = dataclasses.asdict(self)
        data["test_groups"] = list(self.test_groups)
        data["seed"] = int(self.seed)
        if not self.pool_fraction:  # builds without a pool record what they recorded before
            del data["pool_fraction"]
        return data


def check_seed(seed: object) -> None:
    """A bool, a float or a negative seed is a typo that numpy would take in a surprising way
    (True as 1, 7.0 refused deep inside), so it is refused here with the setting's name."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def check_fraction(name: str, value: float) -> None:
    """Fractions outside [0, 1] (or NaN) are always a typo, never a meaningful setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


# --------------------------------------------------------------------------- label noise


def corrupt_labels(
    true_labels: Sequence[str],
    rate: float,
    classes: Sequence[str],
    rng: np.random.Generator,
    model: str = "uniform",
    pairs: Mapping[str, str] | None = None,
) -> list[str]:
    """Return a copy of ``true_labels`` with exactly ``round(rate * len)`` entries changed.

    Why exact rather than per-clip Bernoulli: studies compare methods at a stated noise rate,
    so the realised rate must not wobble with the seed.  Every changed entry differs from its
    true label.  ``model='uniform'`` draws the wrong label uniformly from the other classes;
    ``model='pairs'`` maps a label through ``pairs`` (true -> confusable label) and falls back
    to uniform for labels without an entry.
    """
    labels = np.asarray([str(x) for x in true_labels], dtype=object)
    class_arr = np.asarray(list(dict.fromkeys(str(c) for c in classes)), dtype=object)
    check_fraction("rate", rate)
    if model not in NOISE_MODELS:
        raise ValueError(f"model must be one of {NOISE_MODELS}, got {model!r}")
    unknown = sorted(set(labels) - set(class_arr))
    if unknown:
        raise ValueError(f"true labels not in classes: {unknown[:10]}")
    pair_map = _check_pairs(pairs if model == "pairs" else None, class_arr)
    n_change = int(round(rate * len(labels)))
    if n_change == 0:
        return labels.tolist()
    if len(class_arr) < 2:
        raise ValueError("corrupting labels needs at least two classes")
    chosen = np.sort(rng.choice(len(labels), size=n_change, replace=False))
    noisy = labels.copy()
    noisy[chosen] = _wrong_labels(labels[chosen], class_arr, rng, pair_map)
    return noisy.tolist()


def _check_pairs(pairs: Mapping[str, str] | None, classes: np.ndarray) -> dict[str, str]:
    """A pair must point to a different, known class, or a 'corrupted' label could be right."""
    pair_map = {str(k): str(v) for k, v in (pairs or {}).items()}
    known = set(classes)
    bad = {k: v for k, v in pair_map.items() if k not in known or v not in known}
    if bad:
        raise ValueError(f"pairs use labels that are not classes: {bad}")
    same = sorted(k for k, v in pair_map.items() if k == v)
    if same:
        raise ValueError(f"pairs map labels to themselves: {same}")
    return pair_map


def _wrong_labels(
    truth: np.ndarray, classes: np.ndarray, rng: np.random.Generator, pair_map: dict[str, str]
) -> np.ndarray:
    """Pick a wrong label for each entry of ``truth`` (vectorised uniform draw over the others)."""
    index = {c: i for i, c in enumerate(classes)}
    true_idx = np.fromiter((index[t] for t in truth), dtype=np.int64, count=len(truth))
    # Draw from m-1 slots and skip over the true class: uniform over the other classes.
    draw = rng.integers(0, len(classes) - 1, size=len(truth))
    out = classes[draw + (draw >= true_idx)]
    paired = np.fromiter((t in pair_map for t in truth), dtype=bool, count=len(truth))
    out[paired] = [pair_map[t] for t in truth[paired]]
    return out


# --------------------------------------------------------------------------- reading labels


def read_labels(
    audio_dir: str | os.PathLike[str],
    labels_csv: str | os.PathLike[str] | None = None,
    name_pattern: str | re.Pattern[str] | None = None,
) -> pd.DataFrame:
    """List the ``.wav`` files of ``audio_dir`` with their label and group.

    Labels come from exactly one source: a CSV with ``fname,label`` (optional ``group``)
    columns, or a regex searched in each file name with a named group ``label`` (optional
    ``group``).  Returns columns ``fname,label,group`` sorted by fname, all strings; group is
    ``""`` when the source has none.  Non-.wav files are ignored; a .wav file without a label
    is an error naming the file, because silently dropping it would shrink a class unnoticed.
    """
    if (labels_csv is None) == (name_pattern is None):
        raise ValueError("give exactly one of labels_csv or name_pattern")
    wavs = _list_wavs(Path(audio_dir))
    if labels_csv is not None:
        frame = _labels_from_csv(Path(labels_csv), wavs)
    else:
        frame = _labels_from_pattern(name_pattern, wavs)  # type: ignore[arg-type]
    empty = frame.loc[frame["label"] == "", "fname"].tolist()
    if empty:
        raise ValueError(f"empty label for file {empty[0]!r} ({len(empty)} file(s) in all)")
    return frame.sort_values("fname", ignore_index=True)[["fname", "label", "group"]]


def _list_wavs(audio_dir: Path) -> list[str]:
    """Names of the .wav files directly in ``audio_dir`` (case-insensitive suffix)."""
    if not audio_dir.is_dir():
        raise ValueError(f"audio directory not found: {audio_dir}")
    names = sorted(p.name for p in audio_dir.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
    if not names:
        raise ValueError(f"no .wav files in {audio_dir}")
    return names


def _labels_from_pattern(pattern: str | re.Pattern[str], wavs: list[str]) -> pd.DataFrame:
    """Parse label/group from each name; the first non-matching name is the error message."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    if "label" not in regex.groupindex:
        raise ValueError(f"name_pattern {regex.pattern!r} has no named group (?P<label>...)")
    has_group = "group" in regex.groupindex
    rows = []
    for name in wavs:
        match = regex.search(name)
        if match is None:
            raise ValueError(f"file name {name!r} does not match name_pattern {regex.pattern!r}")
        group = (match.group("group") or "") if has_group else ""
        rows.append((name, match.group("label") or "", group))
    return pd.DataFrame(rows, columns=["fname", "label", "group"], dtype=str)


def _labels_from_csv(csv_path: Path, wavs: list[str]) -> pd.DataFrame:
    """Join the CSV onto the files found; files and CSV rows must correspond one to one."""
    if not csv_path.is_file():
        raise ValueError(f"labels CSV not found: {csv_path}")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in ("fname", "label") if c not in table.columns]
    if missing:
        raise ValueError(f"labels CSV {csv_path} lacks column(s) {missing}; has {list(table.columns)}")
    if "group" not in table.columns:
        table["group"] = ""
    table = table[["fname", "label", "group"]].apply(lambda col: col.str.strip())
    dupes = table.loc[table["fname"].duplicated(), "fname"].tolist()
    if dupes:
        raise ValueError(f"labels CSV {csv_path} lists file {dupes[0]!r} more than once")
    unlabelled = sorted(set(wavs) - set(table["fname"]))
    if unlabelled:
        raise ValueError(
            f"file {unlabelled[0]!r} has no row in labels CSV {csv_path} ({len(unlabelled)} file(s) in all)"
        )
    absent = sorted(set(table["fname"]) - set(wavs))
    if absent:
        raise ValueError(
            f"labels CSV {csv_path} lists {absent[0]!r}, which is not a .wav file "
            f"in the audio directory ({len(absent)} row(s) in all)"
        )
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------- splitting


def _stratified_mask(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Select ``round(fraction * N)`` items spread over classes by largest remainder.

    Each class gets floor or ceil of ``fraction * n_class`` (so within one clip of its share)
    and the total is still exact, which per-class rounding alone would not guarantee.
    Ties in the remainders are broken at random so no class is systematically favoured.
    """
    n = len(labels)
    if n == 0:
        return np.zeros(0, dtype=bool)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = fraction * counts
    base = np.floor(quotas + 1e-9).astype(np.int64)
    remainder = np.clip(quotas - base, 0.0, None)
    has_rest = remainder > 1e-9
    extra = int(np.clip(round(fraction * n) - base.sum(), 0, has_rest.sum()))
    order = np.lexsort((rng.random(len(counts)), -remainder))
    take = base.copy()
    take[order[:extra]] += 1
    # Rank items inside their class in random order; keep the first take[class] of each.
    by_class = np.lexsort((rng.random(n), inverse))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - np.repeat(starts, counts)
    return rank < take[inverse]


def holdout_mask(
    clips: pd.DataFrame, test_groups: Sequence[str], test_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Held-out groups when given (no speaker leaks across splits), else stratified fraction.

    Also used by :mod:`workflow_lib.mixtures` to hold out the source clips of its test mixtures.
    """
    if not test_groups:
        return _stratified_mask(clips["label"].to_numpy(), test_fraction, rng)
    known = set(clips["group"]) - {""}
    if not known:
        raise ValueError(
            "test_groups given but the labels have no group information "
            "(add (?P<group>...) to name_pattern or a group column to the CSV)"
        )
    unknown = sorted(set(test_groups) - known)
    if unknown:
        raise ValueError(f"held-out group(s) {unknown} do not exist; groups are {sorted(known)}")
    return clips["group"].isin(list(test_groups)).to_numpy()


def _check_train_classes(classes: list[str], train_labels: pd.Series) -> None:
    """A class with no training clip cannot be learned; refuse rather than build a broken set."""
    empty = sorted(set(classes) - set(train_labels))
    if empty:
        raise ValueError(f"class(es) {empty} have no training clips left after the test split")


def _assign(
    clips: pd.DataFrame, settings: NoisyDatasetSettings
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Decide split, pool, usage, verification and noisy labels; returns (train, test, pool)
    frames (pool: fname, true_label; empty without ``pool_fraction``). The pool's stream is
    the fifth child of the seed, so the first four (and a build without a pool) are as before."""
    split_ss, public_ss, verified_ss, noise_ss, pool_ss = np.random.SeedSequence(int(settings.seed)).spawn(5)
    is_test = holdout_mask(
        clips, settings.test_groups, settings.test_fraction, np.random.default_rng(split_ss)
    )
    classes = sorted(clips["label"].unique())
    train = clips.loc[~is_test, ["fname", "label"]].reset_index(drop=True)
    test = clips.loc[is_test, ["fname", "label"]].reset_index(drop=True)
    in_pool = _stratified_mask(
        train["label"].to_numpy(), settings.pool_fraction, np.random.default_rng(pool_ss)
    )
    pool = train[in_pool].rename(columns={"label": "true_label"}).reset_index(drop=True)
    train = train[~in_pool].reset_index(drop=True)
    _check_train_classes(classes, train["label"])

    public = _stratified_mask(
        test["label"].to_numpy(), settings.public_fraction, np.random.default_rng(public_ss)
    )
    test["usage"] = np.where(public, PUBLIC, PRIVATE)

    train = train.rename(columns={"label": "true_label"})
    verified = _stratified_mask(
        train["true_label"].to_numpy(), settings.verified_fraction, np.random.default_rng(verified_ss)
    )
    train["manually_verified"] = verified.astype(np.int64)
    train["label"] = train["true_label"]
    train.loc[~verified, "label"] = corrupt_labels(
        train.loc[~verified, "true_label"].tolist(),
        settings.noise_rate,
        classes,
        np.random.default_rng(noise_ss),
        settings.noise_model,
        settings.pairs,
    )
    return train, test, pool


# --------------------------------------------------------------------------- writing


def prepare_audio_dir(path: Path, overwrite: bool) -> None:
    """Stale clips from an earlier build would silently join the new one, so refuse them
    unless ``overwrite`` says to remove them (only files/links; never a subdirectory)."""
    path.mkdir(parents=True, exist_ok=True)
    existing = list(path.iterdir())
    if existing and not overwrite:
        raise FileExistsError(f"{path} is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
    for entry in existing:
        if entry.is_dir() and not entry.is_symlink():
            raise FileExistsError(f"refusing to delete directory {entry} while overwriting")
        entry.unlink()


def _clear_stale_pool(out_path: Path, overwrite: bool) -> None:
    """A build without a pool must not leave an earlier build's pool beside it (it would be
    taken for this build's): refused as stale audio unless ``overwrite``, then removed."""
    folder = out_path / "audio_unlabelled"
    if folder.is_dir():
        prepare_audio_dir(folder, overwrite)
        folder.rmdir()
    (out_path / "unlabelled_true_labels.csv").unlink(missing_ok=True)


def _place_file(src: Path, dst: Path, mode: str) -> None:
    """Materialise one clip; symlinks are absolute so they work from any working directory."""
    if mode == "symlink":
        os.symlink(src.resolve(), dst)
        return
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK_ERRNOS:
                raise
    shutil.copy2(src, dst)


def _place_audio(audio_dir: Path, fnames: Sequence[str], dst_dir: Path, mode: str) -> None:
    """Put every listed clip into ``dst_dir``."""
    for name in fnames:
        _place_file(audio_dir / name, dst_dir / name, mode)


def build_noisy_dataset(
    audio_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: NoisyDatasetSettings,
    labels_csv: str | os.PathLike[str] | None = None,
    name_pattern: str | re.Pattern[str] | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build the dataset under ``out_dir`` and return the build_info dict it also writes.

    All decisions are made (and validated) before anything is written.  Audio goes first and
    ``build_info.json`` last, so its presence marks a finished build; CSVs are written
    atomically.  Existing clips in ``audio_train``/``audio_test`` are an error unless
    ``overwrite`` is true.
    """
    audio_path, out_path = Path(audio_dir), Path(out_dir)
    clips = read_labels(audio_path, labels_csv=labels_csv, name_pattern=name_pattern)
    train, test, pool = _assign(clips, settings)

    splits = (
        ("audio_train", train),
        ("audio_test", test),
        *((("audio_unlabelled", pool),) if len(pool) else ()),
    )
    for split, frame in splits:
        prepare_audio_dir(out_path / split, overwrite)
        _place_audio(audio_path, frame["fname"].tolist(), out_path / split, settings.copy_mode)
    if len(pool):  # the unlabelled pool's true labels, for measuring only
        write_csv(pool[["fname", "true_label"]], out_path / "unlabelled_true_labels.csv")
    else:
        _clear_stale_pool(out_path, overwrite)

    write_csv(train[["fname", "label", "manually_verified"]], out_path / "train.csv")
    write_csv(test[["fname", "label", "usage"]], out_path / "test_post_competition.csv")
    write_csv(train[["fname", "true_label"]], out_path / "train_true_labels.csv")
    info = _build_info(audio_path, labels_csv, name_pattern, settings, clips, train, test)
    if len(pool):
        info["n_pool"] = int(len(pool))
    write_json(info, out_path / "build_info.json")
    return info


def _build_info(
    audio_dir: Path,
    labels_csv: str | os.PathLike[str] | None,
    name_pattern: str | re.Pattern[str] | None,
    settings: NoisyDatasetSettings,
    clips: pd.DataFrame,
    train: pd.DataFrame,
    test: pd.DataFrame,
) -> dict[str, Any]:
    """Settings and counts, enough to reproduce and to sanity-check a build at a glance."""
    verified = train["manually_verified"] == 1
    corrupted = train["label"] != train["true_label"]
    pattern = name_pattern.pattern if isinstance(name_pattern, re.Pattern) else name_pattern
    return {
        "source": {
            "audio_dir": str(audio_dir),
            "labels_csv": None if labels_csv is None else str(labels_csv),
            "name_pattern": pattern,
        },
        "settings": settings.to_json(),
        "split": "groups" if settings.test_groups else "fraction",
        "n_train": int(len(train)),
        "n_verified": int(verified.sum()),
        "n_unverified": int((~verified).sum()),
        "n_corrupted": int(corrupted.sum()),
        "n_test": int(len(test)),
        "n_public": int((test["usage"] == PUBLIC).sum()),
        "n_private": int((test["usage"] == PRIVATE).sum()),
        "classes": sorted(clips["label"].unique().tolist()),
    }


# --------------------------------------------------------------------------- CLI


def _parse_pairs(text: str) -> dict[str, str]:
    """``'1:7,3:8'`` -> ``{'1': '7', '3': '8'}`` (directed: 1 becomes 7, 7 does not become 1)."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        src, sep, dst = item.partition(":")
        if not sep or not src.strip() or not dst.strip():
            raise argparse.ArgumentTypeError(f"bad pair {item!r}; expected LABEL:LABEL")
        pairs[src.strip()] = dst.strip()
    if not pairs:
        raise argparse.ArgumentTypeError("no pairs given")
    return pairs


def _parse_groups(text: str) -> tuple[str, ...]:
    """``'a,b'`` -> ``('a', 'b')``."""
    return tuple(g.strip() for g in text.split(",") if g.strip())


def add_source_arguments(p: argparse.ArgumentParser, test_fraction: float) -> None:
    """The arguments of a dataset builder's command line that name its labelled source clips,
    its output and the held-out test clips (this builder's and workflow_lib.mixtures')."""
    p.add_argument("--audio-dir", required=True, help="folder with the labelled single-label .wav clips")
    p.add_argument("--out", required=True, help="output dataset folder (dataset_root of the run)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels-csv", "--source-csv", help="CSV with fname,label[,group] columns")
    src.add_argument(
        "--name-pattern", "--pattern", help="regex on file names with (?P<label>..) [and (?P<group>..)]"
    )
    p.add_argument("--test-groups", type=_parse_groups, default=(), help="comma-separated held-out groups")
    p.add_argument("--test-fraction", type=float, default=test_fraction)


def run_builder_cli(
    build: Callable[[], Mapping[str, Any]], rejected: tuple[type[Exception], ...] = ()
) -> int:
    """The dataset builders' command-line contract, in one place: the build's info as JSON on
    stdout and 0, or one ``error:`` line on stderr and 1 for a rejected input (a bad setting,
    an earlier build in the way, or one of the builder's own ``rejected`` errors such as an
    unreadable audio file), never a traceback."""
    try:
        info = build()
    except (ValueError, FileExistsError, *rejected) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    """Argument parser; defaults mirror NoisyDatasetSettings."""
    d = NoisyDatasetSettings()
    p = argparse.ArgumentParser(
        prog="python -m workflow_lib.noisy_dataset",
        description="Build a noisy-label dataset in FSDKaggle2018 layout from clean labelled WAVs.",
    )
    add_source_arguments(p, d.test_fraction)
    p.add_argument("--verified-fraction", type=float, default=d.verified_fraction)
    p.add_argument("--noise-rate", type=float, default=d.noise_rate)
    p.add_argument(
        "--noise-model",
        choices=NOISE_MODELS,
        default=None,
        help="default: 'pairs' when --pairs is given, else 'uniform'",
    )
    p.add_argument("--pairs", type=_parse_pairs, default=None, help="directed pairs, e.g. 1:7,3:8")
    p.add_argument("--public-fraction", type=float, default=d.public_fraction)
    p.add_argument("--copy-mode", choices=COPY_MODES, default=d.copy_mode)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--pool-fraction",
        type=float,
        default=d.pool_fraction,
        help="share of training clips per class held back unlabelled (audio_unlabelled/); 0: none",
    )
    p.add_argument("--overwrite", action="store_true", help="replace clips from an earlier build")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints build_info as JSON.  Returns 0, or 1 on a rejected input."""
    args = _parser().parse_args(argv)

    def build() -> dict[str, Any]:
        settings = NoisyDatasetSettings(
            test_groups=args.test_groups,
            test_fraction=args.test_fraction,
            public_fraction=args.public_fraction,
            verified_fraction=args.verified_fraction,
            noise_rate=args.noise_rate,
            noise_model=args.noise_model or ("pairs" if args.pairs else "uniform"),
            pairs=args.pairs,
            copy_mode=args.copy_mode,
            seed=args.seed,
            pool_fraction=args.pool_fraction,
        )
        return build_noisy_dataset(
            args.audio_dir,
            args.out,
            settings,
            labels_csv=args.labels_csv,
            name_pattern=args.name_pattern,
            overwrite=args.overwrite,
        )

    return run_builder_cli(build)


if __name__ == "__main__":
    raise SystemExit(main())
