"""Read and validate a dataset (docs/method.md "Data contract", "Multi-label mode").

Two layouts (config ``dataset.layout``): FSDKaggle2018, one label per clip (``train.csv``:
fname,label,manually_verified), and FSDKaggle2019, label sets (``train_curated.csv`` and
``train_noisy.csv``: fname,labels; curated = verified, noisy = unverified; test CSV
fname,labels[,usage]). Both give the same validated listings: a clip's set is written in the
``label`` column as in :mod:`workflow_lib.labels`. The layouts are registered in
:data:`workflow_lib.dataset_layouts.LAYOUTS`; each is read by its function in
:data:`TRAIN_READERS`, and its task (:mod:`workflow_lib.task`) says how a label cell is read.

Errors stop the run with the file and line named; recoverable problems become logged skips
listed in ``results/data/problems.csv``; data that cannot support a figure of the results
(no verified clips to validate on) is a logged ``warning`` row there, and the run goes on:

=============================================  ==========  =================================
problem                                        outcome     why
=============================================  ==========  =================================
missing required column / unreadable CSV       error       nothing sensible can be read
empty fname or label, bad manually_verified    error       the row's meaning is unknown
fname with a directory part                    error       would escape the audio folder
duplicate fname                                error       two labels for one clip
test label never seen in training (scored)     error       the model cannot predict it
unknown usage value in the test CSV            error       scoring sets would be wrong
class with fewer usable clips than folds       error       cannot stratify it
CSV with a header but no rows                  error       nothing to train or predict
label in RESERVED_LABELS (fname, __all__...)  error       a column/row of the outputs has it
label with whitespace                          error       the submission separates labels
                                                           with spaces: it could not be split
label with a comma                             error       label sets are comma-joined
repeated label in a set (2019 layout)          ignored     a set holds each label once
fname in both curated and noisy (2019 layout)  error       two label sets for one clip
decodable test audio not listed in the CSV     error       it would silently get no prediction
extra (unknown) column                         ignored     FSDKaggle ships extras
non-audio file in the test folder (no CSV)     ignored     notes, checksums
 or in the unlabelled pool's folder
pool file named like a training clip           skipped     one name, one clip (the pool's
                                                           decisions and lists are by name)
pool folder missing or without audio           error       a chain asked for the pool
listed audio file does not exist               skipped     a partial download must not stop
symlink leading outside the dataset root       skipped     unless dataset.follow_external_
                                                           symlinks: a link to /etc/passwd
                                                           must not be read as audio
test row with usage "Ignored"                  kept        predicted, never scored
no verified (curated) training clip at all     warning     no validation clips: CV scores
                                                           are empty, model selection cannot
                                                           compare iterations (the last wins)
class with no verified clip (2019: a label     warning     never validated: the CV scores
only among noisy clips)                                    leave it out, self-verification
                                                           cannot confirm its clips
=============================================  ==========  =================================

A test clip that is skipped stays in the test listing with an empty ``path``: it gets a row
with an empty prediction in the submission (every test clip is answered), and its reason is
in ``problems.csv`` and in ``submission_status.csv``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import soundfile as sf

from .dataset_layouts import FSDKAGGLE2018, FSDKAGGLE2019, DatasetLayout, layout_of, pool_audio_dir
from .errors import UserError
from .fingerprint import folder_files, outside_root
from .io import read_csv_str
from .labels import SEPARATOR, join_labels, split_labels
from .task import SINGLE, Task, task_named

TRAIN_COLUMNS = ("fname", "label", "manually_verified")
#: Columns of a FSDKaggle2019 training listing (curated or noisy); ``labels`` holds the set.
TRAIN_COLUMNS_2019 = ("fname", "labels")
TEST_USAGES = ("Public", "Private", "Ignored")
SCORED_USAGES = ("Public", "Private")
PROBLEM_COLUMNS = ["file", "line", "fname", "problem", "outcome"]

#: Name of the totals row of the per-class tables; a class may not be called so.
TOTAL_ROW = "__all__"
#: Labels that would collide with a column of a posterior table (``fname`` + one column per
#: class; ``valid_oof.csv`` adds ``label`` and ``fold``; ``confusion.csv`` has ``true_label``)
#: or with the totals row. Refused at validation, before hours of training.
RESERVED_LABELS = ("fname", "label", "fold", "true_label", TOTAL_ROW)
#: Extensions predicted (and reported when undecodable) when there is no test CSV.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")


class DatasetError(UserError, ValueError):
    """The dataset cannot be used as it is; the message names file and line."""


@dataclass
class Problems:
    """Problems found while validating; errors are raised together at the end."""

    rows: list[dict] = field(default_factory=list)

    def add(self, file: Path, line: int | str, fname: str, problem: str, outcome: str) -> None:
        self.rows.append(
            {"file": str(file), "line": line, "fname": fname, "problem": problem, "outcome": outcome}
        )

    def errors(self) -> list[dict]:
        return [r for r in self.rows if r["outcome"] == "error"]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=PROBLEM_COLUMNS)

    def raise_errors(self, limit: int = 20) -> None:
        errors = self.errors()
        if not errors:
            return
        lines = [f"{r['file']}, line {r['line']}: {r['problem']}" for r in errors[:limit]]
        more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
        raise DatasetError(f"the dataset has {len(errors)} error(s):\n  " + "\n  ".join(lines) + more)


def csv_line(index: int) -> int:
    """Row ``index`` of a CSV read with a header is on line ``index + 2``."""
    return int(index) + 2


def _read_listing(path: Path, problems: Problems) -> pd.DataFrame | None:
    """Read a listing CSV as strings, or record why it cannot be read."""
    try:
        frame = read_csv_str(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        problems.add(path, "-", "", f"cannot read CSV: {error}", "error")
        return None
    if not isinstance(frame.index, pd.RangeIndex):
        # pandas silently turns a surplus first field into the index, shifting every column.
        problems.add(path, 2, "", "rows have more fields than the header (trailing comma?)", "error")
        return None
    if frame.empty:
        problems.add(path, 2, "", "the CSV has a header but no rows", "error")
        return None
    return frame


def _read(path: Path, required: tuple[str, ...], problems: Problems) -> pd.DataFrame | None:
    frame = _read_listing(path, problems)
    if frame is None:
        return None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        problems.add(path, 1, "", f"missing column(s) {missing}; found {list(frame.columns)}", "error")
        return None
    for extra in [c for c in frame.columns if c not in required]:
        problems.add(path, 1, "", f"unknown column {extra!r} ignored", "ignored")
    return frame[list(required)]


def _check_names(frame: pd.DataFrame, path: Path, problems: Problems) -> None:
    for index, fname in frame["fname"].items():
        if not fname.strip():
            problems.add(path, csv_line(index), fname, "empty fname", "error")
        elif Path(fname).name != fname:
            problems.add(path, csv_line(index), fname, "fname must be a bare file name", "error")
    duplicated = frame["fname"].duplicated(keep=False)
    for fname, group in frame[duplicated].groupby("fname"):
        lines = ", ".join(str(csv_line(i)) for i in group.index)
        problems.add(
            path, csv_line(group.index[-1]), fname, f"duplicate fname {fname!r} on lines {lines}", "error"
        )


def _check_label(label: str) -> str:
    """Why a class name cannot be used ('' when it can)."""
    if label in RESERVED_LABELS:
        return (
            f"label {label!r} is a reserved name (reserved: {', '.join(RESERVED_LABELS)}): "
            "it would collide with a column or the totals row of the outputs; rename the class"
        )
    if any(ch.isspace() for ch in label):
        return (
            f"label {label!r} contains whitespace: the submission lists the top-3 labels "
            "separated by spaces, so it could not be split back; use '_' instead"
        )
    if SEPARATOR in label:
        return (
            f"label {label!r} contains {SEPARATOR!r}, the separator of label sets "
            "(workflow_lib/labels.py); rename the class"
        )
    return ""


def _check_exists(
    frame: pd.DataFrame, audio_dir: Path, path: Path, problems: Problems, root: Path, follow_links: bool
) -> pd.Series:
    """Listed files that exist and stay inside the dataset (or its audio folder's target)."""
    usable = []
    for index, fname in frame["fname"].items():
        file = audio_dir / fname
        target = "" if follow_links or not file.is_file() else outside_root(file, (root, audio_dir))
        if not file.is_file():
            problems.add(path, csv_line(index), fname, f"audio file not found in {audio_dir}", "skipped")
        elif target:
            problems.add(
                path,
                csv_line(index),
                fname,
                f"symbolic link leads outside the dataset root (to {target}); set "
                "dataset.follow_external_symlinks: true to read it",
                "skipped",
            )
        usable.append(file.is_file() and not target)
    return pd.Series(usable, index=frame.index, dtype=bool)


def read_train(
    csv_path: Path, audio_dir: Path, problems: Problems, root: Path | None = None, follow_links: bool = False
) -> pd.DataFrame | None:
    """Training listing with columns fname, label, verified (0/1), path."""
    frame = _read(csv_path, TRAIN_COLUMNS, problems)
    if frame is None:
        return None
    _check_names(frame, csv_path, problems)
    for index, row in frame.iterrows():
        if not row["label"].strip():
            problems.add(csv_path, csv_line(index), row["fname"], "empty label", "error")
        elif why := _check_label(row["label"]):
            problems.add(csv_path, csv_line(index), row["fname"], why, "error")
        if row["manually_verified"].strip() not in ("0", "1"):
            problems.add(
                csv_path,
                csv_line(index),
                row["fname"],
                f"manually_verified must be 0 or 1, got {row['manually_verified']!r}",
                "error",
            )
    exists = _check_exists(frame, audio_dir, csv_path, problems, root or csv_path.parent, follow_links)
    frame = frame[exists].copy()
    frame["verified"] = pd.to_numeric(frame.pop("manually_verified"), errors="coerce")
    frame["path"] = [str(audio_dir / name) for name in frame["fname"]]
    return frame.reset_index(drop=True)


def _parse_set(cell: str, path: Path, line: int, fname: str, problems: Problems) -> str:
    """The joined label set of a ``labels`` cell; problems of its labels are recorded."""
    parts = [part.strip() for part in str(cell).split(SEPARATOR) if part.strip()]
    if not parts:
        problems.add(path, line, fname, "empty labels", "error")
        return ""
    for label in parts:
        if why := _check_label(label):
            problems.add(path, line, fname, why, "error")
    if len(set(parts)) < len(parts):
        problems.add(path, line, fname, f"repeated label in {cell!r}; counted once", "ignored")
    return join_labels(parts)


def read_train_2019(
    csv_path: Path,
    audio_dir: Path,
    verified: int,
    problems: Problems,
    root: Path | None = None,
    follow_links: bool = False,
) -> pd.DataFrame | None:
    """A FSDKaggle2019 listing (curated: ``verified`` 1, noisy: 0) with the columns of
    :func:`read_train`: fname, label (the joined set), verified, path."""
    frame = _read(csv_path, TRAIN_COLUMNS_2019, problems)
    if frame is None:
        return None
    _check_names(frame, csv_path, problems)
    frame = frame.copy()
    frame["label"] = [
        _parse_set(cell, csv_path, csv_line(index), fname, problems)
        for index, fname, cell in zip(frame.index, frame["fname"], frame["labels"])
    ]
    exists = _check_exists(frame, audio_dir, csv_path, problems, root or csv_path.parent, follow_links)
    frame = frame.loc[exists, ["fname", "label"]].copy()
    frame["verified"] = int(verified)
    frame["path"] = [str(audio_dir / name) for name in frame["fname"]]
    return frame.reset_index(drop=True)


def _is_audio(path: Path) -> bool:
    """Decodable by libsndfile (the decoder the workflow uses)."""
    try:
        sf.info(str(path))
    except Exception:  # noqa: BLE001 - any failure means "not audio we can read"
        return False
    return True


def _unlisted_test_files(frame: pd.DataFrame, audio_dir: Path, csv_path: Path, problems: Problems) -> None:
    """Decodable audio in the test folder that the CSV does not list: an error, because it
    would silently get no prediction."""
    listed = set(frame["fname"])
    for file in folder_files(audio_dir):
        if file.name not in listed and _is_audio(file):
            problems.add(
                csv_path,
                "-",
                file.name,
                f"{file} is decodable audio but not listed in {csv_path.name}: list it "
                "(usage Ignored: predicted, never scored) or move it out of the folder",
                "error",
            )


def _test_files_without_csv(audio_dir: Path, problems: Problems, unused: str = "not predicted") -> list[str]:
    """Predict-only: every audio file of the test folder, whatever its extension. Files with
    an audio extension are kept even when undecodable (they get an empty prediction).
    ``unused``: what happens to a non-audio file, in problems.csv's words."""
    names = []
    for file in folder_files(audio_dir):
        if file.suffix.lower() in AUDIO_EXTENSIONS or _is_audio(file):
            names.append(file.name)
        else:
            problems.add(audio_dir, "-", file.name, f"not an audio file; {unused}", "ignored")
    return names


def read_test(
    csv_path: Path | None,
    audio_dir: Path,
    classes: list[str],
    problems: Problems,
    root: Path | None = None,
    follow_links: bool = False,
    *,
    layout: DatasetLayout = FSDKAGGLE2018,
) -> pd.DataFrame:
    """Test listing with columns fname, label ('' if unknown), usage, path.

    Without a CSV, every audio file in the test folder is predicted and nothing is evaluated.
    Rows whose file is missing or refused keep ``path`` empty: the submission answers them
    with an empty prediction. The ``layout`` names the CSV's label column (FSDKaggle2019:
    ``labels``), and its task how a cell is read (a label set is written back in sorted order).
    """
    task = task_named(layout.task)
    root = root if root is not None else audio_dir.parent
    if csv_path is None or not csv_path.is_file():
        names = _test_files_without_csv(audio_dir, problems)
        frame = pd.DataFrame({"fname": names, "label": "", "usage": ""}, dtype=str)
        usable = _check_exists(frame, audio_dir, audio_dir, problems, root, follow_links)
    else:
        frame = _read_listing(csv_path, problems)
        if frame is None:
            return pd.DataFrame(columns=["fname", "label", "usage", "path"])
        if "fname" not in frame.columns:
            problems.add(csv_path, 1, "", f"missing column 'fname'; found {list(frame.columns)}", "error")
            return pd.DataFrame(columns=["fname", "label", "usage", "path"])
        label_column = layout.test_label_column
        for column in (label_column, "usage"):
            if column not in frame.columns:
                frame[column] = ""
        for extra in [c for c in frame.columns if c not in ("fname", label_column, "usage")]:
            problems.add(csv_path, 1, "", f"unknown column {extra!r} ignored", "ignored")
        frame = frame[["fname", label_column, "usage"]].rename(columns={label_column: "label"})
        frame["label"] = frame["label"].map(task.canonical)
        _check_names(frame, csv_path, problems)
        _check_test_labels(frame, csv_path, classes, problems, task=task)
        _unlisted_test_files(frame, audio_dir, csv_path, problems)
        usable = _check_exists(frame, audio_dir, csv_path, problems, root, follow_links)
    frame = frame.copy()
    frame["path"] = [str(audio_dir / name) if ok else "" for name, ok in zip(frame["fname"], usable)]
    return frame.reset_index(drop=True)


def _check_test_labels(
    frame: pd.DataFrame, path: Path, classes: list[str], problems: Problems, *, task: Task = SINGLE
) -> None:
    """Usage values, and every label of a scored clip known from training."""
    known = set(classes)
    for index, row in frame.iterrows():
        usage = row["usage"]
        if usage and usage not in TEST_USAGES:
            problems.add(
                path,
                csv_line(index),
                row["fname"],
                f"usage must be one of {TEST_USAGES}, got {usage!r}",
                "error",
            )
        scored = usage in SCORED_USAGES or (usage == "" and row["label"] != "")
        for label in task.scored_labels(row["label"]) if scored else []:
            if label not in known:
                problems.add(
                    path, csv_line(index), row["fname"], f"label {label!r} never appears in training", "error"
                )


def class_members(train: pd.DataFrame) -> pd.DataFrame:
    """One row per (clip, label it carries): a multi-label clip counts for each of its labels,
    a single-label clip once."""
    return train.assign(label=train["label"].map(split_labels)).explode("label")


def check_class_sizes(train: pd.DataFrame, folds: int, csv_path: Path, problems: Problems) -> None:
    """Every class needs at least ``folds`` usable clips (that carry it) to be stratified."""
    for label, count in class_members(train)["label"].value_counts().items():
        if count < folds:
            problems.add(
                csv_path,
                "-",
                "",
                f"class {label!r} has {count} usable clip(s), fewer than the {folds} folds",
                "error",
            )


#: The problems.csv outcome of data the run can use but that cannot support every figure.
WARNING = "warning"


def check_verified_support(
    train: pd.DataFrame, csv_path: Path, problems: Problems, *, layout: DatasetLayout = FSDKAGGLE2018
) -> None:
    """Warn (``problems.csv`` rows with outcome ``warning``) where the verified clips cannot
    support the results: validation, the CV scores and model selection use the verified
    clips only, and self-verification trusts a noisy clip only through a model validated on
    them. Without any verified clip the CV columns are empty; a class without one is missing
    from the CV scores and self-verification cannot confirm its noisy clips. The ``layout``
    words it in its own terms (manually verified or curated clips).
    """
    if not train["verified"].astype(int).any():
        problems.add(
            csv_path,
            "-",
            "",
            f"no {layout.verified_clips}: there is nothing to validate on, so the CV scores are "
            "empty and model selection cannot compare iterations (the last iteration is used)",
            WARNING,
        )
        return
    table = class_table(train)
    for label in table.loc[table["n_verified"] == 0, "label"]:
        problems.add(
            csv_path,
            "-",
            "",
            f"class {label!r} appears {layout.unverified_where}: it is never validated (the CV "
            "scores leave it out) and self-verification cannot confirm its clips",
            WARNING,
        )


def attach_true_labels(
    train: pd.DataFrame, true_labels_csv: Path | None, *, task: Task = SINGLE
) -> pd.DataFrame:
    """Add a ``true_label`` column ('' where unknown) from an optional side CSV (label sets
    written joined in sorted order, :meth:`Task.canonical`)."""
    train = train.copy()
    train["true_label"] = ""
    if true_labels_csv is not None and true_labels_csv.is_file():
        truth = read_csv_str(true_labels_csv)
        if {"fname", "true_label"} <= set(truth.columns):
            mapping = dict(zip(truth["fname"], truth["true_label"]))
            train["true_label"] = train["fname"].map(mapping).fillna("")
    train["true_label"] = train["true_label"].map(task.canonical)
    return train


def _train_2018(
    root: Path, dataset: Mapping[str, Any], problems: Problems, follow: bool
) -> pd.DataFrame | None:
    """The one training list (train.csv: fname,label,manually_verified)."""
    train_csv = root / dataset["train_csv"]
    if not train_csv.is_file():
        raise DatasetError(f"{train_csv}: training list not found (config key dataset_root={root})")
    return read_train(train_csv, root / dataset["train_audio_dir"], problems, root, follow)


def _train_2019(
    root: Path, dataset: Mapping[str, Any], problems: Problems, follow: bool
) -> pd.DataFrame | None:
    """Curated (verified) then noisy (unverified) clips; a clip listed in both is an error."""
    parts = []
    listings = (("curated_csv", "curated_audio_dir", 1), ("noisy_csv", "noisy_audio_dir", 0))
    for csv_key, dir_key, verified in listings:
        if not dataset[csv_key]:
            continue  # a dataset without a noisy part
        csv_path = root / dataset[csv_key]
        if not csv_path.is_file():
            raise DatasetError(f"{csv_path}: training list not found (config key dataset.{csv_key})")
        parts.append(read_train_2019(csv_path, root / dataset[dir_key], verified, problems, root, follow))
    if any(part is None for part in parts):
        return None
    train = pd.concat(parts, ignore_index=True)
    for fname in sorted(set(parts[0]["fname"]) & set(parts[-1]["fname"])) if len(parts) > 1 else []:
        problems.add(
            root / dataset["noisy_csv"],
            "-",
            fname,
            f"{fname!r} is also in the curated list {dataset['curated_csv']}: two label sets for one clip",
            "error",
        )
    return train


#: Reads a layout's training listings into the common table (fname, label, verified, path):
#: (dataset root, dataset settings, problems, follow external symlinks) -> table, or None when
#: a listing could not be read (its problems are recorded).
TrainReader = Callable[[Path, Mapping[str, Any], Problems, bool], pd.DataFrame | None]
#: The reader of each layout of ``dataset_layouts.LAYOUTS`` (a test checks both name the same).
TRAIN_READERS: dict[str, TrainReader] = {FSDKAGGLE2018.name: _train_2018, FSDKAGGLE2019.name: _train_2019}


def validate_train(root: Path, dataset: Mapping[str, Any], folds: int) -> tuple[pd.DataFrame, Problems]:
    """The training listings (with their true labels); raise :class:`DatasetError` on errors.

    Its own job (rule validate_dataset), apart from the test split's (:func:`validate_test`):
    a changed test file then reruns the test side only, never the training. The layout
    (``dataset.layout``) chooses the reader (:data:`TRAIN_READERS`); problems of the whole
    training split are filed under its verified listing.
    """
    root = Path(root)
    problems = Problems()
    layout = layout_of(dataset)
    follow = bool(dataset.get("follow_external_symlinks", False))
    train_csv = root / dataset[layout.listing_keys[0]]
    train = TRAIN_READERS[layout.name](root, dataset, problems, follow)
    problems.raise_errors()
    check_class_sizes(train, folds, train_csv, problems)
    check_verified_support(train, train_csv, problems, layout=layout)
    problems.raise_errors()
    truth = root / dataset["true_labels_csv"] if dataset["true_labels_csv"] else None
    return attach_true_labels(train, truth, task=task_named(layout.task)), problems


def validate_test(
    root: Path, dataset: Mapping[str, Any], classes: list[str]
) -> tuple[pd.DataFrame, Problems]:
    """The test listing, its labels checked against the training ``classes``; raise
    :class:`DatasetError` on errors, return skips in ``Problems``."""
    root = Path(root)
    problems = Problems()
    follow = bool(dataset.get("follow_external_symlinks", False))
    test_csv = root / dataset["test_csv"] if dataset["test_csv"] else None
    test_dir = root / dataset["test_audio_dir"] if dataset["test_audio_dir"] else root / "_none_"
    test = read_test(test_csv, test_dir, classes, problems, root, follow, layout=layout_of(dataset))
    problems.raise_errors()
    return test, problems


def class_names(train: pd.DataFrame) -> list[str]:
    """The classes of a validated training listing, sorted (a set's labels each count)."""
    return sorted(class_members(train)["label"].unique())


def validate_dataset(
    root: Path, dataset: Mapping[str, Any], folds: int
) -> tuple[pd.DataFrame, pd.DataFrame, Problems]:
    """Both splits: :func:`validate_train`, then :func:`validate_test`; skips of both in
    ``Problems``."""
    train, problems = validate_train(root, dataset, folds)
    test, test_problems = validate_test(root, dataset, class_names(train))
    problems.rows += test_problems.rows
    return train, test, problems


def class_table(train: pd.DataFrame) -> pd.DataFrame:
    """One row per class (sorted): index, label, n_train, n_verified, n_unverified, each
    counting the clips that carry the class."""
    grouped = class_members(train).groupby("label")["verified"]
    table = pd.DataFrame({"n_train": grouped.size(), "n_verified": grouped.sum()}).reset_index()
    table["n_unverified"] = table["n_train"] - table["n_verified"]
    table.insert(0, "index", range(len(table)))
    return table.astype({"n_verified": int, "n_unverified": int})


def read_classes(classes_csv: Path) -> list[str]:
    """The class list, in index order (sorted labels of train.csv): the order of every
    network's outputs and of every posterior table's columns."""
    table = read_csv_str(classes_csv)
    return list(table.sort_values("index", key=lambda s: s.astype(int))["label"])


# --- the unlabelled pool (dataset.unlabelled_audio_dir; docs/method.md "Beyond the paper") ----


def pool_folder(root: Path, dataset: Mapping[str, Any]) -> Path:
    """The pool's folder (``dataset_layouts.pool_audio_dir``: ``unlabelled_audio_dir``, or the
    test audio folder when transductive) relative to the dataset root (an absolute path stays
    as given)."""
    return Path(root) / pool_audio_dir(dataset)


def validate_pool(
    root: Path, dataset: Mapping[str, Any], training_names: set[str]
) -> tuple[pd.DataFrame, Problems]:
    """The pool listing: fname, label and verified empty (no label is known), path ('' for a
    refused file), true_label (from ``unlabelled_true_labels_csv``, '' where unknown, for
    measuring only). Every audio file of the folder, as a test folder without a CSV, through
    the same checks (non-audio files ignored, links leading outside refused unless
    follow_external_symlinks); a file named like a training clip is skipped. Errors (no
    folder, no audio) raise :class:`DatasetError`."""
    root, problems = Path(root), Problems()
    folder = pool_folder(root, dataset)
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: the unlabelled pool's folder (dataset.unlabelled_audio_dir) does not exist"
        )
    follow = bool(dataset.get("follow_external_symlinks", False))
    names = _test_files_without_csv(folder, problems, "not in the pool")
    if not names:
        raise DatasetError(
            f"{folder}: the unlabelled pool (dataset.unlabelled_audio_dir) holds no audio file"
        )
    frame = pd.DataFrame({"fname": names, "label": "", "verified": ""}, dtype=str)
    usable = _check_exists(frame, folder, folder, problems, root, follow)
    for index in frame.index[frame["fname"].isin(training_names)]:
        problems.add(
            folder, "-", frame.at[index, "fname"], "named like a training clip; not in the pool", "skipped"
        )
        usable[index] = False
    frame["path"] = [str(folder / name) if ok else "" for name, ok in zip(frame["fname"], usable)]
    task = task_named(layout_of(dataset).task)
    return attach_true_labels(frame, _pool_truth(root, dataset), task=task), problems


def _pool_truth(root: Path, dataset: Mapping[str, Any]) -> Path | None:
    """The pool's true-label CSV, or None when not set; set but missing or without the
    columns fname,true_label is an error (a setting the user gives is never ignored)."""
    name = dataset.get("unlabelled_true_labels_csv", "")
    if not name:
        return None
    path = root / name
    if not path.is_file():
        raise DatasetError(f"{path}: dataset.unlabelled_true_labels_csv not found")
    columns = set(read_csv_str(path).columns)
    if not {"fname", "true_label"} <= columns:
        raise DatasetError(f"{path}: needs the columns fname,true_label; found {sorted(columns)}")
    return path
