"""Tests for workflow_lib.drum_corpus: the drum-sample corpus built from Hydrogen drum kits.

Hand-made kit folders in tmp_path (a drumkit.xml and a few short WAVs each) cover the
properties without the Debian package; one test builds from the real package
(``hydrogen-drumkits``) when it is installed and skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from workflow_lib import drum_corpus as dc
from workflow_lib.noisy_dataset import NoisyDatasetSettings, build_noisy_dataset

REAL_KITS = Path("/usr/share/hydrogen/data/drumkits")
RATE = 8000
NS = 'xmlns="http://www.hydrogen-music.org/drumkit"'


def _wav(path: Path, seed: int, seconds: float = 0.2, channels: int = 1) -> None:
    """A short distinct noise burst (distinct bytes, so no two count as the same audio)."""
    rng = np.random.default_rng(seed)
    sf.write(path, 0.3 * rng.standard_normal((int(seconds * RATE), channels)), RATE, subtype="PCM_16")


def _instrument(name: str, files: list[str], component: bool) -> str:
    layers = "".join(f"<layer><filename>{f}</filename><min>0</min><max>1</max></layer>" for f in files)
    body = f"<instrumentComponent>{layers}</instrumentComponent>" if component else layers
    return f"<instrument><id>0</id><name>{name}</name>{body}</instrument>"


def _kit(root: Path, name: str, instruments: dict[str, list[str]], *, new_format: bool, seed: int) -> Path:
    """A kit folder: drumkit.xml (Hydrogen's newer namespaced format with instrument
    components, or the old one without) and one WAV per listed file that is a plain name."""
    kit = root / name
    kit.mkdir(parents=True)
    body = "".join(_instrument(n, files, new_format) for n, files in instruments.items())
    xmlns = f" {NS}" if new_format else ""
    (kit / "drumkit.xml").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<drumkit_info{xmlns}><name>{name}</name>'
        f"<info>&lt;!DOCTYPE HTML&gt; text, not a declaration</info>"
        f"<license>GPL</license><instrumentList>{body}</instrumentList></drumkit_info>"
    )
    for i, files in enumerate(instruments.values()):
        for j, file in enumerate(files):
            if "/" not in file and not file.startswith("missing"):
                _wav(kit / file, seed * 1000 + i * 10 + j, seconds=0.2 + 0.1 * j)
    return kit


CLASSES_OF_KIT = {
    "Kick": ["kick1.wav", "kick2.wav"],
    "Snare Rock": ["snare1.wav", "snare2.wav"],
    "Closed HH": ["hhc1.wav", "hhc2.wav"],
    "Open HH": ["hho1.wav", "hho2.wav"],
    "Whistle": ["whistle.wav"],
}


@pytest.fixture
def kits(tmp_path: Path) -> Path:
    """Three kits of the same four classes (one with a stereo, long file), one instrument
    outside the vocabulary, one missing file, one class (cowbell) in one kit only."""
    root = tmp_path / "drumkits"
    _kit(root, "Alpha Kit", CLASSES_OF_KIT, new_format=True, seed=1)
    _kit(
        root,
        "Beta",
        {**CLASSES_OF_KIT, "Tom Hi": ["missing.wav"], "Cowbell": ["bell.wav"]},
        new_format=False,
        seed=2,
    )
    _kit(root, "gamma", CLASSES_OF_KIT, new_format=False, seed=3)
    _wav(root / "Alpha Kit" / "kick2.wav", 99, seconds=3.0, channels=2)  # long and stereo
    return root


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ('Kick (Tama Superstar 22")', "kick"),
        ("c3 - bass drum 1", "kick"),
        ("BassDrum", "kick"),
        ("Snare1", "snare"),
        ("Pearl Snare Rimshot", "snare"),
        ("Pearl Side Stick", "side_stick"),
        ("Rim Click (Pearl Free Floating Maple 14x3.5)", "side_stick"),
        ("Floor Tom", "tom"),
        ("tomhi2", "tom"),
        ('Hi-Hat Closed (Paiste Alpha Metal edge 14")', "hihat_closed"),
        ("VariBreaks Hat 1 Cl", "hihat_closed"),
        ("Hat Op Dirty", "hihat_open"),
        ("Hi Hat Opened", "hihat_open"),
        ("Pedal HH", "hihat_pedal"),
        ("crash16inch", "crash"),
        ("ride-cup", "ride"),
        ("Hand Clap", "clap"),
        ("Clap 2", "clap"),
        ("Cowbell", "cowbell"),
        ("Tambourine Pedal (Pearl PTM-10GH)", "tambourine"),
        ("Sabian Hat Semi-Open", None),
        ("Snare Roll", None),
        ("Hi Hat Free", None),
        ("ride-crash20inch", None),
        ("Djembe1 Slap", None),
        ("17", None),
        ("", None),
    ],
)
def test_instrument_names_map_to_the_vocabulary(name: str, label: str | None) -> None:
    found, reason = dc.classify_instrument(name)
    assert found == label
    assert (reason == "") == (label is not None)
    assert label is None or label in dc.DRUM_CLASSES


def test_ambiguous_name_says_which_classes() -> None:
    assert dc.classify_instrument("Crash/Ride Bow")[1] == "instrument name is ambiguous: crash, ride"


def test_source_clips_groups_and_skips(kits: Path, tmp_path: Path) -> None:
    info = dc.build_drum_source(kits, tmp_path / "src", max_seconds=1.0)
    labels = pd.read_csv(tmp_path / "src/labels.csv", dtype=str)
    skipped = pd.read_csv(tmp_path / "src/skipped.csv", dtype=str, keep_default_na=False)
    assert sorted(labels["group"].unique()) == ["alpha_kit", "beta", "gamma"]
    assert (labels.groupby(["group", "label"]).size() == 2).all()
    assert set(labels["label"]) == {"kick", "snare", "hihat_closed", "hihat_open"}
    assert info["n_clips"] == len(labels) == 24 and info["classes_per_kit"]["beta"] == 4
    reasons = dict(zip(skipped["kit"] + "/" + skipped["file"], skipped["reason"], strict=True))
    assert reasons["Beta/missing.wav"] == "sample file not found"
    assert reasons["Beta/bell.wav"] == "class in fewer than 3 kits"
    for kit in ("Alpha Kit", "Beta", "gamma"):
        assert reasons[f"{kit}/whistle.wav"] == "instrument name maps to no class of the vocabulary"
    assert sorted(p.name for p in (tmp_path / "src/audio").iterdir()) == sorted(labels["fname"])
    long_kick = labels.loc[labels["source"] == "Alpha Kit/kick2.wav", "fname"].item()
    audio, rate = sf.read(tmp_path / "src/audio" / long_kick)
    assert audio.ndim == 1 and rate == RATE and len(audio) == RATE  # mono, cut to 1.0 s
    assert abs(audio[-1]) < 1e-3  # faded out where cut
    assert json.loads((tmp_path / "src/corpus_info.json").read_text()) == info


def test_rebuild_refuses_stale_clips_unless_overwrite(kits: Path, tmp_path: Path) -> None:
    dc.build_drum_source(kits, tmp_path / "src")
    with pytest.raises(FileExistsError):
        dc.build_drum_source(kits, tmp_path / "src")
    again = dc.build_drum_source(kits, tmp_path / "src", kits=["gamma"], min_kits=1, overwrite=True)
    assert again["clips_per_kit"] == {"gamma": 8}
    assert len(list((tmp_path / "src/audio").iterdir())) == 8
    with pytest.raises(ValueError, match="not found"):
        dc.build_drum_source(kits, tmp_path / "other", kits=["delta"])


@pytest.mark.parametrize("model", ["uniform", "pairs"])
def test_held_out_kit_and_planted_noise(kits: Path, tmp_path: Path, model: str) -> None:
    """The noisy dataset is the FSDD builder's, from labels.csv: the held-out kit is the test
    set and never in training; the noise is planted as configured; true labels are kept."""
    dc.build_drum_source(kits, tmp_path / "src")
    pairs = {"hihat_closed": "hihat_open", "hihat_open": "hihat_closed", "kick": "snare", "snare": "kick"}
    settings = NoisyDatasetSettings(
        test_groups=("beta",),
        verified_fraction=0.25,
        noise_rate=0.5,
        noise_model=model,
        pairs=pairs if model == "pairs" else None,
        copy_mode="symlink",
        seed=5,
    )
    info = build_noisy_dataset(
        tmp_path / "src/audio", tmp_path / "ds", settings, labels_csv=tmp_path / "src/labels.csv"
    )
    source = pd.read_csv(tmp_path / "src/labels.csv", dtype=str).set_index("fname")
    train = pd.read_csv(tmp_path / "ds/train.csv", dtype=str).set_index("fname")
    test = pd.read_csv(tmp_path / "ds/test_post_competition.csv", dtype=str).set_index("fname")
    truth = pd.read_csv(tmp_path / "ds/train_true_labels.csv", dtype=str).set_index("fname")
    assert set(source.loc[test.index, "group"]) == {"beta"}
    assert "beta" not in set(source.loc[train.index, "group"])
    assert len(train) + len(test) == len(source) == 24
    assert (truth["true_label"] == source.loc[truth.index, "label"]).all()
    assert (test["label"] == source.loc[test.index, "label"]).all()
    verified = train["manually_verified"] == "1"
    wrong = train["label"] != truth.loc[train.index, "true_label"]
    assert not wrong[verified].any()
    assert wrong.sum() == info["n_corrupted"] == round(0.5 * (~verified).sum())
    if model == "pairs":
        assert (train.loc[wrong, "label"] == truth.loc[wrong[wrong].index, "true_label"].map(pairs)).all()


def test_sample_paths_outside_the_kit_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "drumkits"
    _wav(tmp_path / "secret.wav", 7)
    kit = _kit(
        root,
        "Evil",
        {
            "Kick": ["kick.wav", "../../secret.wav", str(tmp_path / "secret.wav"), "link.wav"],
            "Snare": ["snare.wav"],
        },
        new_format=True,
        seed=4,
    )
    (kit / "link.wav").unlink()  # written by _kit as a plain clip: make it a link out
    os.symlink(tmp_path / "secret.wav", kit / "link.wav")
    with pytest.raises(ValueError, match="leaves the kit"):
        dc.sample_path(kit, "../../secret.wav")
    clips, skipped, _ = dc.collect_clips(root)
    assert clips["path"].tolist() == [str((kit / "kick.wav").resolve()), str((kit / "snare.wav").resolve())]
    reasons = dict(zip(skipped["file"], skipped["reason"], strict=True))
    assert reasons["../../secret.wav"] == "sample path leaves the kit folder; refused"
    assert reasons["link.wav"] == "sample path leaves the kit folder; refused"
    assert reasons[str(tmp_path / "secret.wav")] == "absolute sample path refused"


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE drumkit_info [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<drumkit_info><name>&b;</name></drumkit_info>"""
EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE drumkit_info SYSTEM "file:///etc/passwd"><drumkit_info><name>x</name></drumkit_info>"""


@pytest.mark.parametrize(
    "text", [BILLION_LAUGHS, EXTERNAL, "<drumkit_info><name>&ent;</name></drumkit_info>"]
)
def test_doctype_and_entities_are_refused(tmp_path: Path, text: str) -> None:
    kit = tmp_path / "drumkits" / "Bad"
    kit.mkdir(parents=True)
    (kit / "drumkit.xml").write_text(text)
    with pytest.raises(dc.DrumKitError, match="refused|not well-formed"):
        dc.parse_drumkit(kit / "drumkit.xml")
    clips, skipped, _ = dc.collect_clips(tmp_path / "drumkits")
    assert clips.empty and skipped["file"].tolist() == ["drumkit.xml"]


def test_same_audio_under_two_classes_is_dropped(tmp_path: Path) -> None:
    """A file used by two instruments of one class is one clip; under two classes it has no
    true label, so neither use is kept (both listed)."""
    root = tmp_path / "drumkits"
    _kit(
        root,
        "Dup",
        {"Tom Mid": ["tom.wav"], "Tom Hi": ["tom.wav"], "Closed HH": ["hh.wav"], "Pedal HH": ["hh.wav"]},
        new_format=False,
        seed=6,
    )
    clips, skipped, _ = dc.collect_clips(root)
    assert clips["label"].tolist() == ["tom"]
    assert sorted(skipped["instrument"]) == ["Closed HH", "Pedal HH", "Tom Hi"]


def test_cli_rejects_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dc.main(["--kits-dir", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 1
    assert "drum kits folder not found" in capsys.readouterr().err


def test_real_hydrogen_drumkits(tmp_path: Path) -> None:
    """The Debian package: at least six kits usable as held-out test groups, and every class
    in three kits or more (holding out any one kit leaves two kits' clips of every class)."""
    if not REAL_KITS.is_dir():
        pytest.skip(f"{REAL_KITS} not found: install Debian's hydrogen-drumkits to run this test")
    info = dc.build_drum_source(REAL_KITS, tmp_path / "src", max_seconds=0.05)
    labels = pd.read_csv(tmp_path / "src/labels.csv", dtype=str)
    kits_per_class = labels.groupby("label")["group"].nunique()
    assert (kits_per_class >= 3).all(), kits_per_class
    usable = [g for g, n in info["classes_per_kit"].items() if n >= 5 and info["clips_per_kit"][g] >= 10]
    assert len(usable) >= 6, info["classes_per_kit"]
    assert set(info["classes"]) <= set(dc.DRUM_CLASSES) and info["n_skipped"] > 0


def test_driver_builds_once_and_holds_out_the_kit(kits: Path, tmp_path: Path) -> None:
    """experiments/drums/run_experiment.py: the corpus and the repetition's dataset are built
    once and reused when the settings match (a resumed study rebuilds nothing); the held-out
    kit is the test set."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location(
        "drums_driver", REPO / "experiments/drums/run_experiment.py"
    )
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    out = tmp_path / "rep"
    args = driver.parse_args(["--kits-dir", str(kits), "--out", str(out), "--test-kit", "gamma"])
    info = driver.build_dataset(args, out)
    assert info["settings"]["test_groups"] == ["gamma"] and info["n_test"] == 8
    stamps = {
        p: p.stat().st_mtime_ns for p in (out / "source/corpus_info.json", out / "dataset/build_info.json")
    }
    assert driver.build_dataset(args, out) == info
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    pairs = driver.parse_args(
        ["--kits-dir", str(kits), "--out", str(out), "--test-kit", "gamma", "--pairs", "kick:snare"]
    )
    assert driver.build_dataset(pairs, out)["settings"]["noise_model"] == "pairs"


def test_the_same_recording_is_kept_once(tmp_path: Path) -> None:
    """A gain-scaled copy of a layer in its kit and a re-encoded copy (stereo, another rate)
    in another kit are the recording already kept: listed, not written. Another hit of the
    same drum, merely similar, is kept."""
    from workflow_lib.audio import to_model_rate

    root = tmp_path / "drumkits"
    _kit(root, "One", {"Kick": ["k1.wav", "k2.wav", "k3.wav"], "Snare": ["s1.wav"]}, new_format=False, seed=8)
    _kit(root, "Two", {"Kick": ["k1.wav"], "Snare": ["s1.wav"]}, new_format=False, seed=9)
    hit, rate = sf.read(root / "One/k1.wav", dtype="float32")
    sf.write(root / "One/k2.wav", 0.5 * hit, rate, subtype="PCM_16")
    other = np.random.default_rng(1).standard_normal(hit.size).astype(np.float32)
    sf.write(root / "One/k3.wav", 0.7 * hit + 0.1 * other, rate, subtype="PCM_16")
    faster = to_model_rate(hit, rate, 2 * rate)
    sf.write(root / "Two/k1.wav", 0.8 * np.stack([faster, faster], axis=1), 2 * rate, subtype="PCM_16")
    dc.build_drum_source(root, tmp_path / "src", min_kits=1)  # kick: one kit once Two/k1 is dropped
    labels = pd.read_csv(tmp_path / "src/labels.csv", dtype=str)
    assert sorted(labels["source"]) == ["One/k1.wav", "One/k3.wav", "One/s1.wav", "Two/s1.wav"]
    skipped = pd.read_csv(tmp_path / "src/skipped.csv", dtype=str).set_index("file")
    assert skipped.loc["k2.wav", "reason"] == "same recording as One/k1.wav (correlation 1.000)"
    assert skipped.loc["k1.wav", "reason"].startswith("same recording as One/k1.wav (correlation 0.9")
