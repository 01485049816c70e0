"""The FSDKaggle2019 layout (config dataset.layout: fsdkaggle2019): reader, validation, config keys.

docs/method.md "Multi-label mode (FSDKaggle2019)": curated (= verified) and noisy (= unverified)
lists ``fname,labels`` with comma-separated label sets, a test list ``fname,labels[,usage]``; the
validated listings write a clip's set in the ``label`` column, sorted and comma-joined
(workflow_lib/labels.py). Validation rules and problems.csv as for the 2018 layout.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from workflow_lib.config import ConfigError, check_dataset_root, load_schema, resolve_settings
from workflow_lib.dataset import DatasetError, class_table, validate_dataset
from workflow_lib.dataset_layouts import LAYOUTS, train_listing_keys
from workflow_lib.shards import listed_file_counts

from conftest import REPO

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
DATASET = {**CONFIG["dataset"], "layout": "fsdkaggle2019"}
FOLDS = 2
CURATED = ['c0.wav,"Bark,Dog"', "c1.wav,Bark", "c2.wav,Dog", 'c3.wav,"Dog,Bell"', "c4.wav,Bell"]
NOISY = ['n0.wav,"Dog,Bark"', "n1.wav,Bell", 'n2.wav,"Bell,Bark"', "n3.wav,Dog"]
TEST = ['t0.wav,"Dog,Bark",Public', "t1.wav,Bell,Private", "t2.wav,,Ignored"]


def write_2019(
    root: Path,
    curated: list[str] = CURATED,
    noisy: list[str] | None = NOISY,
    test: list[str] | None = TEST,
    header: str = "fname,labels",
    truth: list[str] | None = None,
) -> Path:
    """CSVs and (empty) audio files of a FSDKaggle2019-layout dataset."""
    lists = [("train_curated", curated, header), ("train_noisy", noisy, header)]
    lists.append(("audio_test", test, "fname,labels,usage"))
    for folder, rows, head in lists:
        (root / folder).mkdir(parents=True, exist_ok=True)
        if rows is None:
            continue
        csv = {"train_curated": "train_curated.csv", "train_noisy": "train_noisy.csv"}
        (root / csv.get(folder, "test_post_competition.csv")).write_text("\n".join([head, *rows]) + "\n")
        for row in rows:
            (root / folder / row.split(",")[0]).write_bytes(b"")
    if truth is not None:
        (root / "train_true_labels.csv").write_text("\n".join(["fname,true_label", *truth]) + "\n")
    return root


def expect_error(root: Path, *fragments: str, dataset: dict = DATASET) -> str:
    with pytest.raises(DatasetError) as raised:
        validate_dataset(root, dataset, FOLDS)
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_good_2019_dataset(tmp_path):
    """Curated = verified, noisy = unverified; sets sorted; counts per clip carrying a class."""
    truth = ['n0.wav,"Dog,Bark"', 'n1.wav,"Bell,Dog"', "n2.wav,Bell", "n3.wav,Dog"]
    root = write_2019(tmp_path, truth=truth)
    train, test, problems = validate_dataset(root, DATASET, FOLDS)
    assert problems.rows == []
    assert list(train.columns) == ["fname", "label", "verified", "path", "true_label"]
    by_name = train.set_index("fname")
    assert by_name.loc["c0.wav", "label"] == "Bark,Dog" and by_name.loc["c3.wav", "label"] == "Bell,Dog"
    assert by_name.loc["n0.wav", "label"] == "Bark,Dog"  # "Dog,Bark" written sorted
    assert list(train["verified"]) == [1] * 5 + [0] * 4
    assert by_name.loc["n1.wav", "true_label"] == "Bell,Dog" and by_name.loc["c0.wav", "true_label"] == ""
    assert all(
        Path(p).parent.name == ("train_curated" if n[0] == "c" else "train_noisy")
        for n, p in by_name["path"].items()
    )
    assert list(test["label"]) == ["Bark,Dog", "Bell", ""]
    assert list(test.columns) == ["fname", "label", "usage", "path"]
    table = class_table(train).set_index("label")
    assert list(table.index) == ["Bark", "Bell", "Dog"]
    # Bark: c0, c1 curated; n0, n2 noisy. Dog: c0, c2, c3 / n0, n3. Bell: c3, c4 / n1, n2.
    assert table.loc["Bark"].tolist()[1:] == [4, 2, 2]
    assert table.loc["Dog"].tolist()[1:] == [5, 3, 2]
    assert table.loc["Bell"].tolist()[1:] == [4, 2, 2]


def test_no_noisy_part(tmp_path):
    """noisy_csv '' = a curated-only dataset."""
    root = write_2019(tmp_path, noisy=None)
    train, _, _ = validate_dataset(root, {**DATASET, "noisy_csv": ""}, FOLDS)
    assert set(train["verified"]) == {1} and len(train) == 5


def test_missing_curated_list_names_the_key(tmp_path):
    root = write_2019(tmp_path)
    (root / "train_curated.csv").unlink()
    expect_error(root, "train_curated.csv", "dataset.curated_csv")


def test_missing_labels_column_is_an_error_on_line_1(tmp_path):
    root = write_2019(tmp_path, header="fname,label")
    message = expect_error(root, "'labels'", str(root / "train_curated.csv"))
    assert re.search(r"line 1\b", message)


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ("c9.wav,", "empty labels"),
        ('c9.wav,"Dog, "', None),  # a trailing separator only: the set is {Dog}, no error
        ('c9.wav,"Dog,Big Cat"', "whitespace"),
        ('c9.wav,"Dog,__all__"', "reserved"),
        ('c9.wav,"Dog,fname"', "reserved"),
    ],
)
def test_bad_label_cells(tmp_path, row, fragment):
    root = write_2019(tmp_path, curated=[*CURATED, row])
    if fragment is None:
        train, _, _ = validate_dataset(root, DATASET, FOLDS)
        assert train.set_index("fname").loc["c9.wav", "label"] == "Dog"
        return
    message = expect_error(root, fragment, str(root / "train_curated.csv"))
    assert re.search(r"line 7\b", message), message


def test_repeated_label_is_counted_once_and_listed(tmp_path):
    root = write_2019(tmp_path, curated=[*CURATED, 'c9.wav,"Dog,Bark,Dog"'])
    train, _, problems = validate_dataset(root, DATASET, FOLDS)
    assert train.set_index("fname").loc["c9.wav", "label"] == "Bark,Dog"
    [row] = problems.rows
    assert row["outcome"] == "ignored" and row["fname"] == "c9.wav" and "repeated" in row["problem"]


def test_clip_in_both_lists_is_an_error(tmp_path):
    root = write_2019(tmp_path, noisy=[*NOISY, "c1.wav,Dog"])
    expect_error(root, "'c1.wav' is also in the curated list", str(root / "train_noisy.csv"))


def test_duplicate_fname_within_a_list_is_an_error(tmp_path):
    root = write_2019(tmp_path, noisy=[*NOISY, "n1.wav,Dog"])
    expect_error(root, "duplicate fname 'n1.wav'", str(root / "train_noisy.csv"))


def test_class_sizes_count_every_clip_that_carries_the_class(tmp_path):
    """'Cat' is carried by one clip only: fewer than 2 folds."""
    root = write_2019(tmp_path, noisy=[*NOISY, 'n9.wav,"Cat,Dog"'])
    message = expect_error(root, "class 'Cat' has 1 usable clip")
    assert "'Dog'" not in message


def test_unknown_test_label_in_a_set_is_an_error(tmp_path):
    root = write_2019(tmp_path, test=[*TEST, 't3.wav,"Dog,Cat",Private'])
    expect_error(root, "label 'Cat' never appears in training", "test_post_competition.csv")


def test_ignored_test_row_may_carry_unknown_labels(tmp_path):
    root = write_2019(tmp_path, test=[*TEST, 't3.wav,"Dog,Cat",Ignored'])
    _, test, _ = validate_dataset(root, DATASET, FOLDS)
    assert test.set_index("fname").loc["t3.wav", "label"] == "Cat,Dog"


def test_missing_audio_is_skipped_and_listed(tmp_path):
    root = write_2019(tmp_path)
    (root / "train_noisy" / "n1.wav").unlink()
    train, _, problems = validate_dataset(root, DATASET, FOLDS)
    assert "n1.wav" not in set(train["fname"])
    assert [(r["fname"], r["outcome"]) for r in problems.rows] == [("n1.wav", "skipped")]


def test_comma_in_a_2018_label_is_an_error(tmp_path):
    """A class name may not hold the set separator in either layout."""
    (tmp_path / "audio_train").mkdir()
    rows = [f"{label}_{i}.wav,{label},1" for label in ("dog", "cat") for i in range(2)]
    rows.append('x.wav,"dog,cat",0')
    (tmp_path / "train.csv").write_text("\n".join(["fname,label,manually_verified", *rows]) + "\n")
    for row in rows:
        (tmp_path / "audio_train" / row.split(",")[0]).write_bytes(b"")
    dataset = {**CONFIG["dataset"], "test_csv": ""}
    with pytest.raises(DatasetError, match="separator of label sets"):
        validate_dataset(tmp_path, dataset, FOLDS)


# --------------------------------------------------------------------------- config keys


def _config(**dataset) -> dict:
    config = copy.deepcopy(CONFIG)
    config["dataset"].update(dataset)
    return config


def test_schema_defaults_are_config_yaml_values():
    """The layout keys' defaults (schema) are config.yaml's: an unchanged key is 'not set'."""
    properties = load_schema()["properties"]["dataset"]["properties"]
    for layout in LAYOUTS.values():
        for key in layout.keys:
            assert properties[key]["default"] == CONFIG["dataset"][key], key


def test_2019_layout_resolves_with_its_keys():
    settings = resolve_settings(_config(layout="fsdkaggle2019", curated_csv="meta/curated.csv"))
    assert train_listing_keys(settings["dataset"]) == ["curated_csv", "noisy_csv"]
    assert train_listing_keys({**settings["dataset"], "noisy_csv": ""}) == ["curated_csv"]
    assert train_listing_keys(CONFIG["dataset"]) == ["train_csv"]


@pytest.mark.parametrize(
    ("layout", "key", "value"),
    [
        ("fsdkaggle2019", "train_csv", "mine.csv"),
        ("fsdkaggle2019", "train_audio_dir", "wavs"),
        ("fsdkaggle2018", "curated_csv", "curated.csv"),
        ("fsdkaggle2018", "noisy_csv", ""),
    ],
)
def test_key_of_the_other_layout_is_an_error(layout, key, value):
    with pytest.raises(ConfigError, match=rf"dataset\.{key}: read only by dataset.layout"):
        resolve_settings(_config(layout=layout, **{key: value}))


def test_key_of_the_other_layout_given_by_the_user_is_an_error_even_at_its_default():
    """--config dataset={layout: fsdkaggle2019, train_csv: train.csv}: given, so not ignored."""
    user = {"dataset": {"layout": "fsdkaggle2019", "train_csv": "train.csv"}}
    config = _config(layout="fsdkaggle2019")
    with pytest.raises(ConfigError, match=r"dataset\.train_csv"):
        resolve_settings(config, user)
    resolve_settings(config, {"dataset": {"layout": "fsdkaggle2019"}})  # the layout alone is fine


def test_dataset_root_check_and_file_counts_follow_the_layout(tmp_path):
    root = write_2019(tmp_path)
    settings = resolve_settings(_config(layout="fsdkaggle2019"))
    settings["dataset_root"] = str(root)
    check_dataset_root(settings)
    assert listed_file_counts(settings, root) == {"train": 9, "test": 3}
    (root / "train_curated.csv").unlink()
    with pytest.raises(ConfigError, match="train_curated.csv"):
        check_dataset_root(settings)


# --------------------------------------------------------------------------- the workflow plans it


def _dry_run(tmp_path: Path, root: Path, *config: str):
    from test_workflow_dryrun import job_counts, run_snakemake

    done, _ = run_snakemake(
        "-n",
        "--cores",
        "2",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path / "work"),
        "--configfile",
        str(REPO / "config.yaml"),
        "--config",
        f"dataset_root={root}",
        *config,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    return done.returncode, output, (job_counts(output) if done.returncode == 0 else {})


def test_workflow_plans_a_2019_dataset_and_refuses_a_key_of_the_other_layout(tmp_path):
    root = write_2019(tmp_path / "data")
    code, output, counts = _dry_run(tmp_path, root, "dataset={layout: fsdkaggle2019}")
    assert code == 0, output
    assert counts["validate_dataset"] == 1 and "demo_dataset" not in counts
    code, output, _ = _dry_run(tmp_path, root, "dataset={layout: fsdkaggle2019, train_audio_dir: x}")
    assert code != 0 and "config key dataset.train_audio_dir: read only by" in output, output
    assert "Traceback" not in output
