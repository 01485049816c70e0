"""Multi-label datasets from pairs of single-label clips (workflow_lib.mixtures) and the demo.

docs/method.md "Multi-label mode (FSDKaggle2019)": a mixture of two clips of different classes is
labelled with both; curated mixtures keep their true set, a stated share of the noisy ones get one
label replaced by a wrong one; the true sets are kept in train_true_labels.csv; test mixtures are
made of held-out clips only (a group such as the speaker, or a stratified fraction).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from workflow_lib.dataset import validate_dataset
from workflow_lib.demo import generate_multilabel_demo_dataset
from workflow_lib.io import read_csv_str
from workflow_lib.labels import split_labels
from workflow_lib.mixtures import (
    MixtureSettings,
    main,
    mix_pair,
    pair_clips,
    plan_mixtures,
    replace_one_label,
)

from conftest import REPO

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
DATASET_2019 = {**CONFIG["dataset"], "layout": "fsdkaggle2019"}
PATTERN = r"^(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav$"


def sources_frame(classes=("0", "1", "2", "3"), groups=("ann", "bob", "cid"), takes=5) -> pd.DataFrame:
    rows = [(f"{c}_{g}_{t}.wav", c, g) for c in classes for g in groups for t in range(takes)]
    return pd.DataFrame(rows, columns=["fname", "label", "group"])


# --------------------------------------------------------------------------- pairing and noise


@pytest.mark.parametrize("uses", [1, 2, 3])
def test_pairs_mix_two_classes_and_use_each_clip_as_often_as_asked(uses):
    labels = np.repeat(["a", "b", "c", "d", "e"], [9, 7, 5, 3, 2])
    pairs = pair_clips(labels, uses, np.random.default_rng(1))
    assert pairs.shape == (len(labels) * uses // 2, 2)
    assert (labels[pairs[:, 0]] != labels[pairs[:, 1]]).all()
    used = np.bincount(pairs.ravel(), minlength=len(labels))
    assert used.max() == uses and (used >= uses - 1).all() and (used < uses).sum() <= 1


def test_a_class_with_more_than_half_the_clips_cannot_be_paired():
    with pytest.raises(ValueError, match="more than half"):
        pair_clips(["a"] * 6 + ["b"] * 5, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="more than half"):
        pair_clips(["a"] * 4, 1, np.random.default_rng(0))


def test_replace_one_label_changes_exactly_the_stated_share():
    classes = [f"c{i}" for i in range(6)]
    rng = np.random.default_rng(3)
    sets = [",".join(sorted(rng.choice(classes, 2, replace=False))) for _ in range(40)]
    noisy = replace_one_label(sets, 0.3, classes, np.random.default_rng(4))
    changed = [(a, b) for a, b in zip(sets, noisy) if a != b]
    assert len(changed) == 12
    for true, given in changed:
        true_set, given_set = set(split_labels(true)), set(split_labels(given))
        assert len(given_set) == 2 and len(true_set & given_set) == 1  # one label wrong, size kept
    assert replace_one_label(sets, 0.0, classes, np.random.default_rng(4)) == sets
    with pytest.raises(ValueError, match="more classes"):
        replace_one_label(["a,b"], 1.0, ["a", "b"], np.random.default_rng(0))


def test_plan_holds_out_groups_and_plants_noise_exactly():
    settings = MixtureSettings(test_groups=("cid",), curated_fraction=0.4, noise_rate=0.5, seed=7)
    sources = sources_frame()
    train, test = plan_mixtures(sources, settings)
    group = dict(zip(sources["fname"], sources["group"]))
    assert {group[n] for n in pd.concat([test["source_1"], test["source_2"]])} == {"cid"}
    assert "cid" not in {group[n] for n in pd.concat([train["source_1"], train["source_2"]])}
    assert len(train) == 20 and len(test) == 10
    curated = train[train["verified"] == 1]
    noisy = train[train["verified"] == 0]
    assert len(curated) == 8 and (curated["label"] == curated["true_label"]).all()
    assert (noisy["label"] != noisy["true_label"]).sum() == 6  # round(0.5 * 12)
    label = dict(zip(sources["fname"], sources["label"]))
    for row in train.itertuples():  # the true set is the two sources' classes
        assert row.true_label == ",".join(sorted({label[row.source_1], label[row.source_2]}))
    again_train, again_test = plan_mixtures(sources, settings)
    pd.testing.assert_frame_equal(train, again_train)
    pd.testing.assert_frame_equal(test, again_test)
    other, _ = plan_mixtures(sources, MixtureSettings(test_groups=("cid",), seed=8))
    assert not other[["source_1", "source_2"]].equals(train[["source_1", "source_2"]])


def test_unknown_held_out_group_is_an_error():
    with pytest.raises(ValueError, match="do not exist"):
        plan_mixtures(sources_frame(), MixtureSettings(test_groups=("zoe",)))


@pytest.mark.parametrize(
    "bad",
    [{"noise_rate": 1.5}, {"curated_fraction": -0.1}, {"uses_per_clip": 0}, {"gain_db": -1}, {"seed": -1}],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        MixtureSettings(**bad)


def test_mix_pair_places_the_shorter_clip_at_its_offset_and_normalises():
    long, short = np.ones(100), np.full(10, 0.25)  # both peak-normalised to 1 first
    out = mix_pair(long, short, gain_db=0.0, offset=0.5)
    assert out.shape == (100,) and out.dtype == np.float32
    assert np.isclose(np.abs(out).max(), 0.9)
    inside = np.zeros(100, dtype=bool)
    inside[45:55] = True  # round(0.5 * 90) = 45
    np.testing.assert_allclose(out[inside], 0.9, rtol=1e-6)
    np.testing.assert_allclose(out[~inside], 0.45, rtol=1e-6)
    quieter = mix_pair(short, long, gain_db=-6.0, offset=0.0)  # the second (long) one at -6 dB
    np.testing.assert_allclose(quieter[:10] / quieter[50], 1 + 10 ** (6 / 20), rtol=1e-5)
    assert np.all(mix_pair(np.zeros(5), np.zeros(3), 0.0, 0.0) == 0)


# --------------------------------------------------------------------------- the CLI on files


def write_sources(folder: Path, rate: int = 8000) -> Path:
    """Tiny labelled WAVs named like FSDD recordings: {digit}_{speaker}_{take}.wav."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for row in sources_frame(classes=("0", "1", "2"), takes=3).itertuples():
        samples = 0.5 * np.sin(
            2 * np.pi * (200 + 300 * int(row.label)) * np.arange(400 + 40 * row.Index) / rate
        )
        sf.write(str(folder / row.fname), samples * rng.uniform(0.2, 1.0), rate, subtype="PCM_16")
    return folder


def test_cli_builds_a_dataset_the_2019_reader_accepts(tmp_path):
    audio = write_sources(tmp_path / "recordings")
    out = tmp_path / "pairs"
    args = ["--audio-dir", str(audio), "--out", str(out), "--pattern", PATTERN, "--test-groups", "cid"]
    assert main([*args, "--noise-rate", "0.5", "--seed", "3"]) == 0
    info = json.loads((out / "build_info.json").read_text())
    assert info["n_train"] == 9 and info["n_test"] == 4 and info["classes"] == ["0", "1", "2"]
    assert info["source"]["name_pattern"] == PATTERN and info["split"] == "groups"
    train, test, problems = validate_dataset(out, DATASET_2019, 2)
    assert problems.rows == []
    assert len(train) == 9 and len(test) == 4 and set(test["usage"]) <= {"Public", "Private"}
    assert (train["label"].map(split_labels).map(len) == 2).all()
    wrong = train["label"] != train["true_label"]
    assert wrong.sum() == info["n_wrong_labels"] == round(0.5 * info["n_unverified"])
    assert not wrong[train["verified"] == 1].any()
    sources = read_csv_str(out / "mixture_sources.csv")
    assert len(sources) == 13 and set(sources["split"]) == {"curated", "noisy", "test"}
    test_sources = sources[sources["split"] == "test"][["source_1", "source_2"]].to_numpy().ravel()
    assert all("_cid_" in name for name in test_sources)
    clip = out / "train_curated" / train.loc[train["verified"] == 1, "fname"].iloc[0]
    assert sf.info(str(clip)).samplerate == 8000
    # Same arguments: the same dataset (after --overwrite); existing clips without it: refused.
    before = {p.name: p.read_bytes() for p in sorted((out / "train_noisy").iterdir())}
    assert main([*args, "--noise-rate", "0.5", "--seed", "3"]) == 1
    assert main([*args, "--noise-rate", "0.5", "--seed", "3", "--overwrite"]) == 0
    assert before == {p.name: p.read_bytes() for p in sorted((out / "train_noisy").iterdir())}


def test_cli_refuses_sources_of_different_sample_rates(tmp_path, capsys):
    audio = write_sources(tmp_path / "recordings")
    sf.write(str(audio / "0_ann_0.wav"), np.zeros(400), 16000, subtype="PCM_16")
    args = ["--audio-dir", str(audio), "--out", str(tmp_path / "o"), "--pattern", PATTERN]
    assert main([*args, "--uses-per-clip", "3"]) == 1
    assert "sample rate" in capsys.readouterr().err


# --------------------------------------------------------------------------- the multi-label demo


def small_demo_settings(**changes) -> dict:
    settings = {
        **CONFIG["demo_data"],
        "n_classes": 4,
        "train_clips_per_class": 4,
        "test_clips_per_class": 2,
        "min_seconds": 0.1,
        "max_seconds": 0.3,
        "max_silence_seconds": 0.1,
    }
    return {**settings, **changes}


def test_multilabel_demo_has_the_single_label_demo_sizes_and_is_reproducible(tmp_path):
    settings = small_demo_settings()
    summary = generate_multilabel_demo_dataset(tmp_path / "a", settings)
    assert summary["n_train"] == 16 and summary["n_test"] == 8  # n_classes x clips per class
    assert summary["n_verified"] == round(0.4 * 16)
    assert summary["n_wrong_labels"] == round(settings["noise_rate"] * summary["n_unverified"])
    train, test, _ = validate_dataset(tmp_path / "a", DATASET_2019, 2)
    assert len(train) == 16 and len(test) == 8
    assert set(train["label"].map(split_labels).explode()) <= set(summary["classes"])
    assert json.loads((tmp_path / "a" / "demo_info.json").read_text())["demo_settings"] == settings
    generate_multilabel_demo_dataset(tmp_path / "b", settings)
    for name in (
        "train_curated.csv",
        "train_noisy.csv",
        "train_true_labels.csv",
        "test_post_competition.csv",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    wavs = sorted((tmp_path / "a" / "audio_test").iterdir())
    assert [w.read_bytes() for w in wavs] == [
        (tmp_path / "b" / "audio_test" / w.name).read_bytes() for w in wavs
    ]
