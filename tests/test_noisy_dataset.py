"""Tests for workflow_lib.noisy_dataset: the noisy-label study dataset builder.

Small synthetic WAV corpora in tmp_path cover the properties; one test runs on the real FSDD
recordings when they are present.
"""

from __future__ import annotations

import errno
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from workflow_lib import noisy_dataset as nd
from workflow_lib.noisy_dataset import (
    NoisyDatasetSettings,
    build_noisy_dataset,
    corrupt_labels,
    main,
    read_labels,
)

from conftest import fsdd_dir_or_skip

PATTERN = r"^(?P<label>\d+)_(?P<group>[a-z]+)_\d+\.wav$"
CLASSES = ["0", "1", "2", "3"]
GROUPS = ["alice", "bob", "carol"]
CSV_NAMES = ("train.csv", "test_post_competition.csv", "train_true_labels.csv")


def _write_wav(path: Path, value: float) -> None:
    """A tiny distinct clip, so copies can be told apart by content."""
    sf.write(path, np.full(64, value, dtype=np.float32), 8000, subtype="PCM_16")


def _make_corpus(root: Path, classes=CLASSES, groups=GROUPS, takes: int = 5) -> Path:
    """``{label}_{group}_{take}.wav`` for every combination, plus a non-wav distractor."""
    root.mkdir(parents=True, exist_ok=True)
    for ci, label in enumerate(classes):
        for group in groups:
            for take in range(takes):
                _write_wav(root / f"{label}_{group}_{take}.wav", (ci + 1) / 100)
    (root / "README.txt").write_text("not audio")
    return root


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return _make_corpus(tmp_path / "wavs")


def _build(corpus: Path, out: Path, **kw) -> dict:
    return build_noisy_dataset(corpus, out, NoisyDatasetSettings(**kw), name_pattern=PATTERN)


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, dtype=str, keep_default_na=False)


def _train_view(out: Path) -> pd.DataFrame:
    """train.csv joined with the true labels."""
    train = _read(out, "train.csv").merge(_read(out, "train_true_labels.csv"), on="fname", validate="1:1")
    assert len(train) == len(_read(out, "train.csv"))
    return train


# --------------------------------------------------------------------------- corrupt_labels


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("n", [1, 7, 10, 101])
def test_corrupt_labels_exact_count_and_always_wrong(rate: float, n: int) -> None:
    rng = np.random.default_rng(0)
    truth = [CLASSES[i % 4] for i in range(n)]
    noisy = corrupt_labels(truth, rate, CLASSES, rng)
    changed = [t != x for t, x in zip(truth, noisy)]
    assert len(noisy) == n
    assert sum(changed) == round(rate * n)
    assert set(noisy) <= set(CLASSES)


def test_corrupt_labels_uniform_reaches_every_other_class() -> None:
    rng = np.random.default_rng(1)
    noisy = corrupt_labels(["0"] * 3000, 1.0, CLASSES, rng)
    counts = Counter(noisy)
    assert "0" not in counts
    assert set(counts) == {"1", "2", "3"}
    assert all(900 < c < 1100 for c in counts.values()), counts


def test_corrupt_labels_pairs_map_as_given_with_uniform_fallback() -> None:
    rng = np.random.default_rng(2)
    truth = ["1"] * 50 + ["3"] * 50 + ["0"] * 50
    noisy = corrupt_labels(truth, 1.0, CLASSES, rng, model="pairs", pairs={"1": "2", "3": "0"})
    assert noisy[:50] == ["2"] * 50
    assert noisy[50:100] == ["0"] * 50
    assert all(x != "0" for x in noisy[100:])  # "0" has no pair: uniform over the others
    assert len(set(noisy[100:])) > 1


def test_corrupt_labels_ignores_pairs_for_uniform_model() -> None:
    noisy = corrupt_labels(["1"] * 200, 1.0, CLASSES, np.random.default_rng(3), pairs={"1": "2"})
    assert len(set(noisy)) == 3


def test_corrupt_labels_is_reproducible() -> None:
    truth = [CLASSES[i % 4] for i in range(100)]
    a = corrupt_labels(truth, 0.3, CLASSES, np.random.default_rng(5))
    b = corrupt_labels(truth, 0.3, CLASSES, np.random.default_rng(5))
    c = corrupt_labels(truth, 0.3, CLASSES, np.random.default_rng(6))
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 1.5}, r"rate must be in \[0, 1\]"),
        ({"rate": -0.1}, r"rate must be in \[0, 1\]"),
        ({"true_labels": ["0", "9"]}, "not in classes"),
        ({"classes": ["0"], "true_labels": ["0", "0"]}, "at least two classes"),
        ({"model": "pairs", "pairs": {"1": "1"}}, "to themselves"),
        ({"model": "pairs", "pairs": {"1": "9"}}, "not classes"),
        ({"model": "gaussian"}, "model must be one of"),
    ],
)
def test_corrupt_labels_rejects_bad_input(kwargs: dict, message: str) -> None:
    args = {
        "true_labels": ["0", "1", "2", "3"],
        "rate": 0.5,
        "classes": CLASSES,
        "rng": np.random.default_rng(0),
    } | kwargs
    with pytest.raises(ValueError, match=message):
        corrupt_labels(**args)


# --------------------------------------------------------------------------- read_labels


def test_read_labels_from_pattern(corpus: Path) -> None:
    labels = read_labels(corpus, name_pattern=PATTERN)
    assert list(labels.columns) == ["fname", "label", "group"]
    assert len(labels) == 4 * 3 * 5  # README.txt ignored
    assert labels["fname"].is_monotonic_increasing
    row = labels.set_index("fname").loc["2_bob_3.wav"]
    assert (row["label"], row["group"]) == ("2", "bob")


def test_read_labels_pattern_without_group_gives_empty_group(corpus: Path) -> None:
    labels = read_labels(corpus, name_pattern=r"^(?P<label>\d+)_")
    assert set(labels["group"]) == {""}


def test_read_labels_names_the_file_that_does_not_match(corpus: Path) -> None:
    _write_wav(corpus / "odd-name.wav", 0.5)
    with pytest.raises(ValueError, match="odd-name.wav"):
        read_labels(corpus, name_pattern=PATTERN)


def test_read_labels_needs_label_group_and_one_source(corpus: Path) -> None:
    with pytest.raises(ValueError, match=r"\(\?P<label>"):
        read_labels(corpus, name_pattern=r"^(\d+)_")
    with pytest.raises(ValueError, match="exactly one"):
        read_labels(corpus)


def test_read_labels_from_csv(corpus: Path, tmp_path: Path) -> None:
    ref = read_labels(corpus, name_pattern=PATTERN)
    csv = tmp_path / "labels.csv"
    ref.sample(frac=1.0, random_state=0).to_csv(csv, index=False)
    got = read_labels(corpus, labels_csv=csv)
    pd.testing.assert_frame_equal(got, ref)
    ref[["fname", "label"]].to_csv(csv, index=False)
    assert set(read_labels(corpus, labels_csv=csv)["group"]) == {""}


def test_read_labels_csv_errors_name_the_file(corpus: Path, tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    ref = read_labels(corpus, name_pattern=PATTERN)
    ref.rename(columns={"label": "class"}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"labels\.csv.*lacks column.*label"):
        read_labels(corpus, labels_csv=csv)
    ref.iloc[1:].to_csv(csv, index=False)
    with pytest.raises(ValueError, match=ref["fname"].iloc[0]):
        read_labels(corpus, labels_csv=csv)


# --------------------------------------------------------------------------- build


def test_build_group_split_properties(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    info = _build(corpus, out, test_groups=["carol"])
    train, test = _train_view(out), _read(out, "test_post_competition.csv")

    assert list(_read(out, "train.csv").columns) == ["fname", "label", "manually_verified"]
    assert list(test.columns) == ["fname", "label", "usage"]
    assert list(_read(out, "train_true_labels.csv").columns) == ["fname", "true_label"]

    # Held-out group is exactly the test set, and nothing else.
    assert set(test["fname"]) == {f for f in os.listdir(corpus) if "_carol_" in f}
    assert not set(test["fname"]) & set(train["fname"])
    assert not train["fname"].str.contains("_carol_").any()
    assert set(test["usage"]) == {"Public", "Private"}
    assert (test["usage"] == "Public").sum() == round(0.2 * len(test))
    assert (test["label"] == test["fname"].str.split("_").str[0]).all()  # test labels are clean

    # True labels really are the clean labels.
    assert (train["true_label"] == train["fname"].str.split("_").str[0]).all()
    verified = train["manually_verified"] == "1"
    assert set(train["manually_verified"]) == {"0", "1"}
    assert (train.loc[verified, "label"] == train.loc[verified, "true_label"]).all()
    for label, grp in train.groupby("true_label"):
        assert abs((grp["manually_verified"] == "1").sum() - 0.4 * len(grp)) <= 1, label

    n_unverified = int((~verified).sum())
    corrupted = train["label"] != train["true_label"]
    assert corrupted.sum() == round(0.3 * n_unverified)
    assert set(train.loc[corrupted, "label"]) <= set(CLASSES)

    assert info == json.loads((out / "build_info.json").read_text())
    assert (info["n_train"], info["n_test"]) == (40, 20)
    assert info["n_verified"] + info["n_unverified"] == info["n_train"]
    assert info["n_unverified"] == n_unverified
    assert info["n_corrupted"] == int(corrupted.sum())
    assert info["classes"] == CLASSES
    assert info["settings"]["test_groups"] == ["carol"]

    # Audio folders hold exactly the listed clips, copied byte for byte.
    assert sorted(os.listdir(out / "audio_train")) == sorted(train["fname"])
    assert sorted(os.listdir(out / "audio_test")) == sorted(test["fname"])
    clip = train["fname"].iloc[0]
    assert not (out / "audio_train" / clip).is_symlink()
    assert (out / "audio_train" / clip).read_bytes() == (corpus / clip).read_bytes()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_build_fraction_split_is_stratified(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    info = _build(corpus, out, test_fraction=0.3, verified_fraction=0.5, noise_rate=0.5)
    test = _read(out, "test_post_competition.csv")
    assert info["split"] == "fraction"
    assert len(test) == round(0.3 * 60)
    for label, n in test["label"].value_counts().items():
        assert abs(n - 0.3 * 15) <= 1, label
    train = _train_view(out)
    assert not set(test["fname"]) & set(train["fname"])
    assert len(train) + len(test) == 60
    n_unverified = (train["manually_verified"] == "0").sum()
    assert (train["label"] != train["true_label"]).sum() == round(0.5 * n_unverified)


def test_build_same_seed_same_csvs_other_seed_differs(corpus: Path, tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    _build(corpus, a, test_groups=["bob"], seed=7)
    _build(corpus, b, test_groups=["bob"], seed=7)
    _build(corpus, c, test_groups=["bob"], seed=8)
    for name in CSV_NAMES[:2]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()


def test_build_pairs_model(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pairs = {"0": "1", "1": "0", "2": "3"}
    _build(corpus, out, test_groups=["alice"], noise_rate=1.0, noise_model="pairs", pairs=pairs)
    train = _train_view(out)
    unverified = train[train["manually_verified"] == "0"]
    assert len(unverified) > 0
    assert (unverified["label"] != unverified["true_label"]).all()
    for true, wrong in pairs.items():
        rows = unverified[unverified["true_label"] == true]
        assert len(rows) > 0 and (rows["label"] == wrong).all(), true
    assert (unverified.loc[unverified["true_label"] == "3", "label"] != "3").all()


def test_build_copy_modes(corpus: Path, tmp_path: Path) -> None:
    _build(corpus, tmp_path / "s", test_groups=["bob"], copy_mode="symlink")
    link = tmp_path / "s" / "audio_test" / "0_bob_0.wav"
    assert link.is_symlink() and Path(os.readlink(link)).is_absolute()
    assert link.resolve() == (corpus / "0_bob_0.wav").resolve()

    _build(corpus, tmp_path / "h", test_groups=["bob"], copy_mode="hardlink")
    hard = tmp_path / "h" / "audio_test" / "0_bob_0.wav"
    assert not hard.is_symlink()
    assert os.path.samefile(hard, corpus / "0_bob_0.wav")


def test_hardlink_falls_back_to_copy_across_filesystems(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(nd.os, "link", cross_device)
    out = tmp_path / "out"
    _build(corpus, out, test_groups=["bob"], copy_mode="hardlink")
    clip = out / "audio_test" / "0_bob_0.wav"
    assert clip.read_bytes() == (corpus / "0_bob_0.wav").read_bytes()
    assert not os.path.samefile(clip, corpus / "0_bob_0.wav")


def test_build_refuses_stale_audio_unless_overwrite(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(corpus, out, test_groups=["bob"])
    with pytest.raises(FileExistsError, match="not empty"):
        _build(corpus, out, test_groups=["carol"])
    build_noisy_dataset(
        corpus, out, NoisyDatasetSettings(test_groups=("carol",)), name_pattern=PATTERN, overwrite=True
    )
    assert all("_carol_" in f for f in os.listdir(out / "audio_test"))
    assert len(os.listdir(out / "audio_train")) == 40


def test_build_rejects_unknown_group(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"held-out group\(s\) \['dave'\] do not exist"):
        _build(corpus, tmp_path / "out", test_groups=["bob", "dave"])
    assert not (tmp_path / "out").exists()  # validated before writing anything


def test_build_rejects_groups_without_group_info(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no group information"):
        build_noisy_dataset(
            corpus,
            tmp_path / "out",
            NoisyDatasetSettings(test_groups=("bob",)),
            name_pattern=r"^(?P<label>\d+)_",
        )


def test_build_rejects_class_without_training_clips(corpus: Path, tmp_path: Path) -> None:
    _write_wav(corpus / "9_carol_0.wav", 0.9)  # class 9 only exists in the held-out group
    with pytest.raises(ValueError, match=r"\['9'\] have no training clips"):
        _build(corpus, tmp_path / "out", test_groups=["carol"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"test_fraction": 1.2},
        {"public_fraction": -0.1},
        {"verified_fraction": 2},
        {"noise_rate": float("nan")},
        {"noise_rate": -1e-9},
    ],
)
def test_settings_reject_fractions_outside_unit_interval(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        NoisyDatasetSettings(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_model": "gauss"}, "noise_model must be one of"),
        ({"noise_model": "pairs"}, "non-empty pairs"),
        ({"pairs": {"1": "7"}}, "noise_model is 'uniform'"),
        ({"copy_mode": "move"}, "copy_mode must be one of"),
        ({"seed": -1}, "seed"),
    ],
)
def test_settings_reject_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NoisyDatasetSettings(**kwargs)


def test_settings_are_frozen_and_normalised() -> None:
    s = NoisyDatasetSettings(test_groups=["a", "b"], noise_model="pairs", pairs={1: 7})
    assert s.test_groups == ("a", "b")
    assert s.pairs == {"1": "7"}
    with pytest.raises(AttributeError):
        s.seed = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- CLI


def test_cli_builds_dataset(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    rc = main(
        [
            "--audio-dir",
            str(corpus),
            "--out",
            str(out),
            "--name-pattern",
            PATTERN,
            "--test-groups",
            "alice,bob",
            "--verified-fraction",
            "0.5",
            "--noise-rate",
            "1",
            "--pairs",
            "0:1,1:0",
            "--public-fraction",
            "0.5",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["settings"]["noise_model"] == "pairs"
    assert (info["n_test"], info["n_train"], info["n_verified"]) == (40, 20, 10)
    assert info["n_corrupted"] == 10
    test = _read(out, "test_post_competition.csv")
    assert (test["usage"] == "Public").sum() == 20
    train = _train_view(out)
    zeros = train[(train["true_label"] == "0") & (train["manually_verified"] == "0")]
    assert len(zeros) > 0 and (zeros["label"] == "1").all()


def test_cli_with_labels_csv(corpus: Path, tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    read_labels(corpus, name_pattern=PATTERN)[["fname", "label"]].to_csv(csv, index=False)
    rc = main(
        [
            "--audio-dir",
            str(corpus),
            "--out",
            str(tmp_path / "o"),
            "--labels-csv",
            str(csv),
            "--test-fraction",
            "0.25",
        ]
    )
    assert rc == 0
    assert len(_read(tmp_path / "o", "test_post_competition.csv")) == 15


def test_cli_reports_errors(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(
        [
            "--audio-dir",
            str(corpus),
            "--out",
            str(tmp_path / "o"),
            "--name-pattern",
            PATTERN,
            "--test-groups",
            "zed",
        ]
    )
    assert rc == 1
    assert "zed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--audio-dir",
                str(corpus),
                "--out",
                str(tmp_path / "o"),
                "--name-pattern",
                PATTERN,
                "--pairs",
                "1-7",
            ]
        )
    assert exc.value.code == 2
    with pytest.raises(SystemExit):  # label source is required
        main(["--audio-dir", str(corpus), "--out", str(tmp_path / "o")])


def test_builder_cli_contract_json_or_one_error_line(capsys) -> None:
    """run_builder_cli, shared by the three dataset builders: info as JSON and 0; a rejected
    input (ValueError, FileExistsError, or a builder's own listed error) one line and 1; any
    other exception is a bug and propagates."""
    assert nd.run_builder_cli(lambda: {"n_train": 3}) == 0
    assert json.loads(capsys.readouterr().out) == {"n_train": 3}

    def refuse(exc: Exception):
        def build():
            raise exc

        return build

    assert nd.run_builder_cli(refuse(ValueError("noise_rate must be in [0, 1]"))) == 1
    assert capsys.readouterr().err == "error: noise_rate must be in [0, 1]\n"
    assert nd.run_builder_cli(refuse(FileExistsError("stale clips"))) == 1
    assert nd.run_builder_cli(refuse(sf.LibsndfileError(1, "bad.wav: ")), rejected=(sf.LibsndfileError,)) == 1
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(KeyError):
        nd.run_builder_cli(refuse(KeyError("a bug")))
    for seed in (True, 7.0, -1, "7"):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            nd.check_seed(seed)
    nd.check_seed(np.int64(7))


# --------------------------------------------------------------------------- real corpus


def test_real_fsdd_hold_out_one_speaker(tmp_path: Path) -> None:
    fsdd = fsdd_dir_or_skip("the real-corpus check")
    out = tmp_path / "fsdd_noisy"
    info = _build(fsdd, out, test_groups=["theo"], copy_mode="symlink")
    assert (info["n_test"], info["n_train"]) == (500, 2500)
    assert (info["n_verified"], info["n_unverified"]) == (1000, 1500)
    assert info["n_corrupted"] == 450
    train, test = _train_view(out), _read(out, "test_post_competition.csv")
    assert test["fname"].str.contains("_theo_").all()
    assert not train["fname"].str.contains("_theo_").any()
    assert ((train["label"] != train["true_label"]).sum()) == 450
    per_class = train[train["manually_verified"] == "1"].groupby("true_label").size()
    assert per_class.to_dict() == {str(d): 100 for d in range(10)}  # 250 train clips per digit
    assert (test["usage"] == "Public").sum() == 100
    assert len(os.listdir(out / "audio_train")) == 2500
    link = out / "audio_test" / test["fname"].iloc[0]
    assert link.is_symlink() and sf.info(str(link)).samplerate == 8000
