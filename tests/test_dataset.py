"""Dataset validation (workflow_lib.dataset) and the synthetic demo dataset (workflow_lib.demo).

docs/method.md "Data contract": the FSDKaggle2018 layout (train.csv: fname,label,manually_verified;
test_post_competition.csv: fname,label,usage with usage Public | Private | Ignored), classes
taken from the CSV, never a hard-coded list. The outcome of each problem (error / skipped /
ignored / kept) is the table at the top of workflow_lib/dataset.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from workflow_lib import demo
from workflow_lib.dataset import DatasetError, class_table, validate_dataset
from workflow_lib.demo import generate_demo_dataset

from conftest import REPO

DATASET = yaml.safe_load((REPO / "config.yaml").read_text())["dataset"]
FOLDS = 4
TRAIN_HEADER = "fname,label,manually_verified"
TEST_HEADER = "fname,label,usage"


def make_dataset(
    root: Path,
    train_rows: list[str],
    test_rows: list[str] | None = None,
    train_audio: list[str] | None = None,
    test_audio: list[str] | None = None,
    train_header: str = TRAIN_HEADER,
    test_header: str = TEST_HEADER,
) -> Path:
    """Write CSVs and (empty) audio files: validation checks existence, not content."""
    (root / "audio_train").mkdir(parents=True, exist_ok=True)
    (root / "audio_test").mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("\n".join([train_header, *train_rows]) + "\n")
    if test_rows is not None:
        (root / "test_post_competition.csv").write_text("\n".join([test_header, *test_rows]) + "\n")
    if train_audio is None:
        train_audio = [row.split(",")[0] for row in train_rows]
    if test_audio is None:
        test_audio = [row.split(",")[0] for row in (test_rows or [])]
    for folder, names in (("audio_train", train_audio), ("audio_test", test_audio)):
        for name in names:
            if name and Path(name).name == name:
                (root / folder / name).write_bytes(b"")
    return root


def good_train_rows(classes=("dog", "cat", "bell"), per_class: int = 5) -> list[str]:
    rows = []
    for label in classes:
        for i in range(per_class):
            rows.append(f"{label}_{i}.wav,{label},{int(i < 2)}")
    return rows


GOOD_TEST = ["t0.wav,dog,Public", "t1.wav,cat,Private", "t2.wav,bell,Private"]


def expect_error(root: Path, *fragments: str, line: int | str | None = None, csv: str = "train.csv") -> str:
    with pytest.raises(DatasetError) as raised:
        validate_dataset(root, DATASET, FOLDS)
    message = str(raised.value)
    assert str(root / csv) in message, f"the message must name the file: {message}"
    if line is not None:
        assert re.search(rf"line {line}\b", message), f"the message must name line {line}: {message}"
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_good_dataset(tmp_path):
    """docs/method.md "Data contract": classes from the CSV; verified flags and paths read."""
    root = make_dataset(tmp_path, good_train_rows(), GOOD_TEST)
    train, test, problems = validate_dataset(root, DATASET, FOLDS)
    assert len(train) == 15 and len(test) == 3
    assert sorted(train["label"].unique()) == ["bell", "cat", "dog"]
    assert set(train["verified"]) == {0, 1}
    assert all(Path(p).is_file() for p in train["path"])
    assert list(test["usage"]) == ["Public", "Private", "Private"]
    assert problems.rows == []
    table = class_table(train)
    assert list(table["label"]) == ["bell", "cat", "dog"]
    assert list(table["n_verified"]) == [2, 2, 2] and list(table["n_unverified"]) == [3, 3, 3]


def test_missing_required_column_is_an_error(tmp_path):
    """dataset.py table: missing required column -> error (file, line 1)."""
    rows = [r.rsplit(",", 1)[0] for r in good_train_rows()]
    root = make_dataset(tmp_path, rows, GOOD_TEST, train_header="fname,label")
    expect_error(root, "manually_verified", line=1)


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe\x00\x81binary\x00", b'fname,label,manually_verified\n"a.wav,x,1\n'],
    ids=["empty-file", "not-utf8", "unterminated-quote"],
)
def test_unreadable_train_csv_is_an_error(tmp_path, content):
    """dataset.py table: unreadable CSV -> error naming the file (a DatasetError, no crash)."""
    root = make_dataset(tmp_path, good_train_rows(), GOOD_TEST)
    (root / "train.csv").write_bytes(content)
    expect_error(root)


def test_trailing_comma_rows_never_shift_columns(tmp_path):
    """dataset.py table: a row with more fields than the header is an unreadable CSV.

    pandas silently turns the first column(s) into the index when data rows have more fields
    than the header (e.g. a trailing comma from a spreadsheet), shifting every column. Either
    outcome is acceptable: a DatasetError naming the file, or the columns read correctly.
    """
    good = good_train_rows()
    rows = [row + "," for row in good]
    root = make_dataset(tmp_path, rows, GOOD_TEST, train_audio=[r.split(",")[0] for r in rows])
    try:
        train, _, _ = validate_dataset(root, DATASET, FOLDS)
    except DatasetError as error:
        assert str(root / "train.csv") in str(error)
        return
    assert list(train["fname"]) == [r.split(",")[0] for r in good]
    assert list(train["label"]) == [r.split(",")[1] for r in good]


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00\x81binary\x00"], ids=["empty-file", "not-utf8"])
def test_unreadable_test_csv_is_an_error(tmp_path, content):
    """dataset.py table: unreadable CSV -> error naming the file, for the test list too."""
    root = make_dataset(tmp_path, good_train_rows(), GOOD_TEST)
    (root / "test_post_competition.csv").write_bytes(content)
    expect_error(root, csv="test_post_competition.csv")


def test_test_csv_rows_with_extra_fields_never_shift_columns(tmp_path):
    """As above, for test_post_competition.csv: error naming the file, or columns read right."""
    root = make_dataset(
        tmp_path,
        good_train_rows(),
        [row + ",x" for row in GOOD_TEST],
        test_audio=["t0.wav", "t1.wav", "t2.wav"],
    )
    try:
        _, test, _ = validate_dataset(root, DATASET, FOLDS)
    except DatasetError as error:
        assert str(root / "test_post_competition.csv") in str(error)
        return
    assert list(test["fname"]) == ["t0.wav", "t1.wav", "t2.wav"]
    assert list(test["usage"]) == ["Public", "Private", "Private"]


@pytest.mark.parametrize(
    "row,fragment",
    [
        (",dog,1", "empty fname"),
        ("x.wav,,1", "empty label"),
        ("x.wav,dog,yes", "manually_verified must be 0 or 1"),
        ("x.wav,dog,", "manually_verified must be 0 or 1"),
        ("../x.wav,dog,1", "bare file name"),
        ("sub/x.wav,dog,1", "bare file name"),
    ],
)
def test_bad_train_row_is_an_error_naming_the_line(tmp_path, row, fragment):
    """dataset.py table: empty fname/label, bad manually_verified, directory part -> error."""
    rows = good_train_rows()
    rows.insert(3, row)  # header is line 1, so this row is on line 5
    root = make_dataset(tmp_path, rows, GOOD_TEST)
    expect_error(root, fragment, line=5)


def test_duplicate_fname_is_an_error_naming_both_lines(tmp_path):
    """dataset.py table: duplicate fname -> error (two labels for one clip)."""
    rows = good_train_rows()
    rows.append("dog_1.wav,cat,0")  # dog_1.wav is on line 3; the duplicate on line 17
    root = make_dataset(tmp_path, rows, GOOD_TEST)
    expect_error(root, "duplicate fname", "lines 3, 17", line=17)


def test_scored_test_label_unseen_in_training_is_an_error(tmp_path):
    """dataset.py table: test label never seen in training (scored) -> error."""
    root = make_dataset(tmp_path, good_train_rows(), [*GOOD_TEST, "t3.wav,trumpet,Public"])
    expect_error(root, "'trumpet' never appears in training", line=5, csv="test_post_competition.csv")


def test_unknown_usage_is_an_error(tmp_path):
    """dataset.py table / docs/method.md "Data contract": usage is Public | Private | Ignored."""
    root = make_dataset(tmp_path, good_train_rows(), [*GOOD_TEST, "t3.wav,dog,public"])
    expect_error(root, "usage must be one of", line=5, csv="test_post_competition.csv")


def test_class_with_fewer_usable_clips_than_folds_is_an_error(tmp_path):
    """dataset.py table: a class needs >= folds *usable* clips (missing audio does not count)."""
    rows = good_train_rows(per_class=5) + [f"rare_{i}.wav,rare,1" for i in range(4)]
    audio = [r.split(",")[0] for r in rows if r.split(",")[0] != "rare_3.wav"]
    root = make_dataset(tmp_path, rows, GOOD_TEST, train_audio=audio)
    expect_error(root, "class 'rare' has 3 usable clip(s)")


def test_extra_columns_are_ignored(tmp_path):
    """dataset.py table: extra (unknown) column -> ignored (FSDKaggle ships extras)."""
    rows = [f"{r},123,CC-BY" for r in good_train_rows()]
    test = [f"{r},999,CC0" for r in GOOD_TEST]
    root = make_dataset(
        tmp_path,
        rows,
        test,
        train_header=TRAIN_HEADER + ",freesound_id,license",
        test_header=TEST_HEADER + ",freesound_id,license",
    )
    train, test_frame, problems = validate_dataset(root, DATASET, FOLDS)
    assert len(train) == 15 and len(test_frame) == 3
    assert "freesound_id" not in train.columns
    ignored = problems.frame()
    assert set(ignored["outcome"]) == {"ignored"}
    assert len(ignored) == 4  # two extra columns in each CSV


def test_missing_audio_is_skipped_and_reported(tmp_path):
    """dataset.py table: listed audio file does not exist -> skipped, with file and line."""
    rows = good_train_rows()
    audio = [r.split(",")[0] for r in rows if r.split(",")[0] != "cat_4.wav"]
    root = make_dataset(tmp_path, rows, GOOD_TEST, train_audio=audio, test_audio=["t0.wav", "t1.wav"])
    train, test, problems = validate_dataset(root, DATASET, FOLDS)
    assert "cat_4.wav" not in set(train["fname"]) and len(train) == 14
    # a test clip stays listed without a path: the submission answers it with an empty row
    assert list(test["fname"]) == ["t0.wav", "t1.wav", "t2.wav"]
    assert list(test["path"] != "") == [True, True, False]
    frame = problems.frame()
    skipped = frame[frame["outcome"] == "skipped"]
    assert sorted(skipped["fname"]) == ["cat_4.wav", "t2.wav"]
    row = skipped.set_index("fname").loc["cat_4.wav"]
    assert row["file"] == str(root / "train.csv") and int(row["line"]) == 11


def test_ignored_usage_with_unknown_label_is_kept(tmp_path):
    """dataset.py table: test row with usage Ignored -> kept (predicted, never scored)."""
    root = make_dataset(tmp_path, good_train_rows(), [*GOOD_TEST, "t3.wav,trumpet,Ignored"])
    _, test, problems = validate_dataset(root, DATASET, FOLDS)
    assert list(test["fname"]) == ["t0.wav", "t1.wav", "t2.wav", "t3.wav"]
    assert test.set_index("fname").loc["t3.wav", "usage"] == "Ignored"
    assert problems.errors() == []


def test_without_test_csv_every_test_wav_is_listed(tmp_path):
    """docs/method.md "Data contract" (test list optional): all audio_test/*.wav, empty labels."""
    root = make_dataset(tmp_path, good_train_rows(), None, test_audio=["b.wav", "a.wav", "c.wav"])
    (root / "audio_test" / "notes.txt").write_text("not a wav")
    _, test, problems = validate_dataset(root, DATASET, FOLDS)
    assert list(test["fname"]) == ["a.wav", "b.wav", "c.wav"]
    assert list(test["label"]) == ["", "", ""]
    assert all(Path(p).is_file() for p in test["path"])
    assert problems.errors() == []


def test_fnames_and_labels_stay_strings(tmp_path):
    """docs/method.md "Data contract": labels come from the CSV as they are ('01' is not 1)."""
    rows = [f"{i:03d}.wav,0{i % 3},{i % 2}" for i in range(15)]
    root = make_dataset(tmp_path, rows, None)
    train, _, _ = validate_dataset(root, DATASET, FOLDS)
    assert sorted(train["label"].unique()) == ["00", "01", "02"]
    assert train["fname"].iloc[0] == "000.wav"


def test_true_labels_are_attached(tmp_path):
    """config.yaml dataset.true_labels_csv: the side CSV's true labels join on fname."""
    rows = good_train_rows()
    root = make_dataset(tmp_path, rows, GOOD_TEST)
    names = [r.split(",")[0] for r in rows]
    truth = pd.DataFrame({"fname": names[:-1], "true_label": ["x"] * (len(names) - 1)})
    truth.to_csv(root / "train_true_labels.csv", index=False)
    train, _, _ = validate_dataset(root, DATASET, FOLDS)
    mapping = dict(zip(train["fname"], train["true_label"]))
    assert all(mapping[n] == "x" for n in names[:-1])
    assert mapping[names[-1]] == ""


def test_missing_train_csv_names_the_key(tmp_path):
    """A wrong dataset_root gives one sentence naming the file and the config key."""
    with pytest.raises(DatasetError, match="dataset_root"):
        validate_dataset(tmp_path / "nowhere", DATASET, FOLDS)


# ---------------------------------------------------------------------------------------------
# The demo dataset


def _demo_settings(**changes) -> dict:
    settings = copy.deepcopy(yaml.safe_load((REPO / "config.yaml").read_text())["demo_data"])
    settings.update({"train_clips_per_class": 10, "test_clips_per_class": 4})
    settings.update(changes)
    return settings


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    """The same settings generated twice, with sound lengths recorded by wrapping generators."""
    settings = _demo_settings()
    roots, lengths = [], []
    with pytest.MonkeyPatch.context() as patch:
        for run in range(2):
            recorded: list[float] = []
            for label, make in list(demo.SOUND_CLASSES.items()):

                def wrapped(rng, t, sr, make=make, recorded=recorded):
                    recorded.append(t.size / sr)
                    return make(rng, t, sr)

                patch.setitem(demo.SOUND_CLASSES, label, wrapped)
            root = tmp_path_factory.mktemp(f"demo{run}")
            summary = generate_demo_dataset(root, settings)
            roots.append(root)
            lengths.append(recorded)
            # restore before the next run so wrappers do not nest
            patch.undo()
    return settings, roots, lengths, summary


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic(demo_pair, tmp_path):
    """Same seed -> byte-identical CSVs and WAVs; another seed -> different data."""
    settings, (first, second), _, _ = demo_pair
    a, b = _files(first), _files(second)
    assert a.keys() == b.keys()
    assert any(k.endswith(".wav") for k in a) and "train.csv" in a
    for name in a:
        assert a[name] == b[name], f"{name} differs between two runs with the same seed"
    generate_demo_dataset(tmp_path, {**settings, "seed": settings["seed"] + 1})
    other = _files(tmp_path)
    assert other["train.csv"] != a["train.csv"]


def test_demo_layout_classes_and_usage(demo_pair):
    """docs/method.md "Data contract": FSDKaggle layout, >= 8 classes, Public and Private test usage."""
    settings, (root, _), _, summary = demo_pair
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(root / "test_post_competition.csv", dtype=str, keep_default_na=False)
    assert list(train.columns) == ["fname", "label", "manually_verified"]
    assert list(test.columns) == ["fname", "label", "usage"]
    assert train["label"].nunique() >= 8
    assert set(test["usage"]) == {"Public", "Private"}
    assert set(train["manually_verified"]) == {"0", "1"}
    for folder, frame in (("audio_train", train), ("audio_test", test)):
        assert sorted(p.name for p in (root / folder).glob("*.wav")) == sorted(frame["fname"])
    # And it passes the project's own validation.
    train_v, test_v, problems = validate_dataset(root, DATASET, FOLDS)
    assert len(train_v) == len(train) and len(test_v) == len(test)
    assert problems.errors() == []
    assert summary["n_train"] == len(train)


def test_demo_label_noise_is_exact(demo_pair):
    """Exactly round(noise_rate * n_unverified) wrong labels; verified labels all correct."""
    settings, (root, _), _, summary = demo_pair
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(root / "train_true_labels.csv", dtype=str, keep_default_na=False)
    merged = train.merge(truth, on="fname", validate="one_to_one")
    assert len(merged) == len(train)
    wrong = merged["label"] != merged["true_label"]
    verified = merged["manually_verified"] == "1"
    assert not wrong[verified].any(), "verified labels must be correct"
    n_unverified = int((~verified).sum())
    assert int(wrong.sum()) == int(round(settings["noise_rate"] * n_unverified))
    assert int(wrong.sum()) == summary["n_wrong_labels"] > 0
    assert abs(verified.mean() - settings["verified_fraction"]) < 0.05


def test_demo_clip_lengths_and_silence(demo_pair):
    """Sound parts in [min_seconds, max_seconds], plus up to max_silence_seconds each side."""
    settings, (root, _), (lengths, _), _ = demo_pair
    sr = settings["sample_rate"]
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(root / "test_post_competition.csv", dtype=str, keep_default_na=False)
    paths = [root / "audio_train" / n for n in train["fname"]] + [
        root / "audio_test" / n for n in test["fname"]
    ]
    assert len(lengths) == len(paths)  # generation order: training clips, then test clips
    assert min(lengths) >= settings["min_seconds"] - 1 / sr
    assert max(lengths) <= settings["max_seconds"]
    assert min(lengths) < 1.0 and max(lengths) > 2.0, "short and long clips both occur"
    leading_silence = 0
    for path, sound_seconds in zip(paths, lengths):
        samples, file_sr = sf.read(str(path), dtype="int16")
        assert file_sr == sr and samples.ndim == 1
        seconds = len(samples) / sr
        assert sound_seconds <= seconds <= sound_seconds + 2 * settings["max_silence_seconds"]
        nonzero = np.flatnonzero(samples)
        assert len(nonzero) > 0, f"{path.name} is all silence"
        assert (nonzero[-1] - nonzero[0] + 1) / sr <= sound_seconds + 1 / sr, (
            "everything outside the sound part is digital silence"
        )
        leading_silence += nonzero[0] > 0.01 * sr
    assert leading_silence > 0.5 * len(paths), (
        "most clips should start with digital silence, so SoX has work to do"
    )
