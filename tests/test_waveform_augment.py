"""Waveform augmentation in preprocessing (workflow_lib/waveform_augment.py, issue 21 item 2):
seeded copies made from the SoX-clipped audio, stored like the originals, trained on only where
their source clip trains; the noise folder is untrusted input; off changes nothing."""

from __future__ import annotations

import copy
import json
import logging
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_lib.cli import build_parser
from workflow_lib.config import ConfigError, check_noise_dir, resolve_settings
from workflow_lib.errors import UserError
from workflow_lib.io import read_csv_str, write_csv
from workflow_lib.job_settings import fit_settings, preprocessing_settings, waveform_augmentation_settings
from workflow_lib.layout import COPIES_SPLIT
from workflow_lib.preprocess import (
    SpectrogramStore,
    gather_shard,
    merge_manifests,
    shard_clips,
    write_shard_files,
)
from workflow_lib.stages import TrainingJob, fingerprint, run_training_job, training_sets, with_copies
from workflow_lib.training import FitSettings
from workflow_lib.waveform_augment import (
    COPY_COLUMNS,
    USABLE_NOISE,
    WaveformAugmentation,
    copy_clips,
    copy_name,
    noise_table,
    usable_noise,
)

from conftest import REPO, SPEC_SOX_EFFECTS, tone, write_wav

SR = 16000  # the files' rate; the model's is 32 kHz (the spectrogram functions' rate)
RATE = 32000
PRE = {"sample_rate": RATE, "sox_effects": list(SPEC_SOX_EFFECTS), "spectrograms": "fast"}
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
PRESET = "vgg_gap_spec1_1"


def _aug(noise_dir: str = "", seed: int = 7, copies: int = 2) -> WaveformAugmentation:
    return WaveformAugmentation(
        copies=copies,
        time_stretch=(0.8, 1.0),
        shift=0.5,
        rollover=True,
        gain_db=(-6.0, 6.0),
        noise_dir=noise_dir,
        snr_db=(3.0, 30.0),
        seed=seed,
    )


@pytest.fixture(scope="module")
def clips(tmp_path_factory, sox_binary) -> pd.DataFrame:
    """Eight synthetic clips of two classes (a tone with silence around it), as data/train.csv."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(3)
    rows = []
    for i in range(8):
        sound = tone(0.6 + 0.05 * i, SR, freq=300.0 if i % 2 else 900.0) + 0.01 * rng.standard_normal(
            int(round((0.6 + 0.05 * i) * SR))
        )
        samples = np.concatenate([np.zeros(SR // 5), sound, np.zeros(SR // 5)])
        path = write_wav(folder / f"clip{i}.wav", samples, SR)
        rows.append(
            {"fname": path.name, "label": f"c{i % 2}", "verified": str(int(i < 4)), "path": str(path)}
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(5)
    write_wav(folder / "hum.wav", 0.1 * rng.standard_normal(SR), SR)
    write_wav(folder / "sub" / "hiss.wav", 0.05 * rng.standard_normal(SR // 2), 8000)
    return folder


def _copies(listing, aug, noise=(), shard=0, n_shards=1, versions=(1, 2)):
    clips = copy_clips(listing, shard, n_shards, list(versions), PRE, aug, noise)
    return gather_shard(clips, list(versions), COPY_COLUMNS)


def test_copies_are_deterministic_for_a_seed_and_independent_of_sharding(clips, noise_dir):
    noise = usable_noise(noise_table(noise_dir), noise_dir)
    arrays, manifests = _copies(clips, _aug(str(noise_dir)), noise)
    again, manifests_again = _copies(clips, _aug(str(noise_dir)), noise)
    for version in (1, 2):
        np.testing.assert_array_equal(arrays[version], again[version])
        pd.testing.assert_frame_equal(manifests[version], manifests_again[version])
    manifest = manifests[1]
    assert list(manifest.columns) == COPY_COLUMNS and len(manifest) == 2 * len(clips)
    assert set(manifest["fname"]) == {copy_name(f, k) for f in clips["fname"] for k in (0, 1)}
    drawn = json.loads(manifest["augmentation"].iloc[0])
    assert {"TimeStretch.rate", "Shift.shift_amount", "Gain.amplitude_ratio"} <= set(drawn)
    assert drawn["AddBackgroundNoise.noise_file_path"] in {"hum.wav", "sub/hiss.wav"}
    other, _ = _copies(clips, _aug(str(noise_dir), seed=8), noise)
    assert not np.array_equal(arrays[1], other[1])
    # two shards: each copy is the same audio as in one shard (seeded per clip and copy)
    parts = [_copies(clips, _aug(str(noise_dir)), noise, shard=s, n_shards=2) for s in (0, 1)]
    for version in (1, 2):
        store = _store(arrays[version], manifests[version])
        for part_arrays, part_manifests in parts:
            part = _store(part_arrays[version], part_manifests[version])
            for name in part.manifest["fname"]:
                np.testing.assert_array_equal(part.get(name), store.get(name))


def _store(array: np.ndarray, manifest: pd.DataFrame) -> SpectrogramStore:
    return SpectrogramStore(manifest.assign(shard=0), {0: array})


def test_copies_follow_the_originals_sox_and_spectrogram_path(clips):
    """With every step off a copy is its clip, row for row, in both versions (the same SoX
    output, the same spectrogram functions); with a gain it differs from it."""
    originals, manifests = gather_shard(shard_clips(clips, 0, 1, [1, 2], RATE, PRE["sox_effects"]), [1, 2])
    off = replace(_aug(copies=1), time_stretch=(1.0, 1.0), shift=0.0, gain_db=(0.0, 0.0))
    arrays, copy_manifests = _copies(clips, off)
    gain = replace(off, gain_db=(6.0, 6.0))
    louder, _ = _copies(clips, gain)
    for version in (1, 2):
        original, copied = (
            _store(originals[version], manifests[version]),
            _store(arrays[version], copy_manifests[version]),
        )
        for name in clips["fname"]:
            np.testing.assert_array_equal(copied.get(copy_name(name, 0)), original.get(name))
        assert louder[version].shape == arrays[version].shape and not np.allclose(
            louder[version], arrays[version]
        )
    stretched, _ = _copies(clips, _aug(copies=1))
    assert stretched[1].shape[0] >= originals[1].shape[0]  # rates 0.8 ... 1: never shorter


def test_a_missing_or_empty_noise_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="noise_dir: .* is not a folder"):
        noise_table(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no usable noise recording"):
        noise_table(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "notes.txt").write_text("not audio")
    with pytest.raises(UserError, match="skipped_undecodable"):
        noise_table(tmp_path / "bad")
    settings = {"preprocessing": {"waveform_augmentation": {"copies": 1, "noise_dir": str(tmp_path / "x")}}}
    with pytest.raises(ConfigError, match="is not a folder"):
        check_noise_dir(settings)
    settings["preprocessing"]["waveform_augmentation"]["noise_dir"] = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match="holds no files"):
        check_noise_dir(settings)


def test_noise_files_are_untrusted_input(tmp_path):
    """Links outside the folder, linked folders, undecodable, empty and all-zero files are
    skipped, each with its reason; only the good file is used."""
    outside = write_wav(tmp_path / "outside.wav", 0.1 * np.ones(SR), SR)
    folder = tmp_path / "noise"
    write_wav(folder / "good.wav", 0.1 * np.random.default_rng(1).standard_normal(SR), SR)
    write_wav(folder / "zero.wav", np.zeros(SR), SR)
    write_wav(folder / "empty.wav", np.zeros(0), SR)
    (folder / "junk.wav").write_text("junk")
    (folder / "out.wav").symlink_to(outside)
    (folder / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    (folder / "sub").mkdir()
    (folder / "again").symlink_to(folder / "sub", target_is_directory=True)
    (folder / ".hidden.wav").write_text("never read")
    table = noise_table(folder).set_index("file")["status"].to_dict()
    assert table == {
        "again": "skipped_folder_link",
        "elsewhere": "skipped_outside",
        "empty.wav": "skipped_empty",
        "good.wav": USABLE_NOISE,
        "junk.wav": "skipped_undecodable",
        "out.wav": "skipped_outside",
        "zero.wav": "skipped_silent",
    }
    assert usable_noise(noise_table(folder), folder) == [folder / "good.wav"]


def _job(tmp_path: Path, manifest: Path, folds: Path, copies: dict | None) -> TrainingJob:
    return TrainingJob(
        manifest_csv=manifest,
        folds_csv=folds,
        classes_csv=tmp_path / "classes.csv",
        fold=0,
        out_dir=tmp_path / "out",
        preset="tiny",
        net={"width": 4, "dropout": [0.0, 0.0], "spectrogram": 1},
        fit=FitSettings(
            epochs=1, lr=1e-3, constant_epochs=1, batch_size=4, excerpt_frames=8, mixup_alpha=None, seed=1
        ),
        frames=16,
        device="cpu",
        copies=copies,
    )


@pytest.fixture(scope="module")
def stored(clips, tmp_path_factory) -> dict[str, Path]:
    """The originals' and the copies' v1 stores as the workflow writes them, and two folds."""
    root = tmp_path_factory.mktemp("stored")
    originals = shard_clips(clips, 0, 1, [1], RATE, PRE["sox_effects"])
    write_shard_files(originals, [1], {1: root / "v1/train/shard0.npy"}, {1: root / "v1/train/shard0.csv"})
    merge_manifests([root / "v1/train/shard0.csv"], root / "v1/train.csv")
    copies = copy_clips(clips, 0, 1, [1], PRE, _aug(copies=2))
    stem = root / f"v1/{COPIES_SPLIT}/shard0"
    write_shard_files(copies, [1], {1: stem.with_suffix(".npy")}, {1: stem.with_suffix(".csv")}, COPY_COLUMNS)
    merge_manifests([stem.with_suffix(".csv")], root / f"v1/{COPIES_SPLIT}.csv")
    folds = clips[["fname", "label", "verified"]].assign(fold=[0, 1] * 4)
    write_csv(folds, root / "folds.csv")
    return {"manifest": root / "v1/train.csv", "folds": root / "folds.csv", "root": root}


def test_copies_stay_in_their_source_fold_and_take_its_trust(stored, tmp_path):
    """Fold 0's job trains on its training part and exactly their copies (label, verified and
    weight of the source); no copy of a fold-0 validation clip; the copies are in no fold,
    so self-verification and prediction (which read folds.csv) never see one."""
    listing = read_csv_str(stored["folds"])[["fname", "label"]].assign(manually_verified="1", weight=1.0)
    listing.loc[listing["fname"] == "clip1.wav", "manually_verified"] = "0"  # not trusted
    listing.loc[listing["fname"] == "clip3.wav", "label"] = "c0"  # corrected by a policy
    write_csv(listing, tmp_path / "list.csv")
    (tmp_path / "classes.csv").write_text("index,label,n_verified\n0,c0,2\n1,c1,2\n")
    job = _job(tmp_path, stored["manifest"], stored["folds"], {"copies": 2})
    job = replace(job, train_list_csv=tmp_path / "list.csv")
    train, valid = training_sets(job, ["c0", "c1"])
    store = SpectrogramStore.open(job.manifest_csv)
    both, joined = with_copies(job, train, store)
    copies = both[both["fname"].str.contains("__aug")]
    sources = copies["fname"].str.rsplit("__aug", n=1).str[0]
    assert set(sources) == set(train["fname"]) == {"clip3.wav", "clip5.wav", "clip7.wav"}
    assert len(copies) == 2 * len(train)
    assert set(sources).isdisjoint(valid["fname"]) and "clip1.wav" not in set(sources)
    by_source = train.set_index("fname")
    for column in ("label", "target", "verified", "weight"):
        assert copies[column].tolist() == by_source.loc[sources, column].tolist()
    assert not read_csv_str(stored["folds"])["fname"].str.contains("__aug").any()
    assert set(both["fname"]) <= set(joined.manifest["fname"])
    plain = replace(job, copies=None)
    assert with_copies(plain, train, store) == (train, store)
    assert fingerprint(job, both, valid) != fingerprint(plain, train, valid)
    # a pool chain's fine-tuning: trusted pool rows (no copies of their own) stay last, the
    # order stages.training_bank reads (the training store, then the pool's)
    pool_row = train.iloc[[0]].assign(fname="pool_clip.wav")
    with_pool = pd.concat([train.assign(pool=False), pool_row.assign(pool=True)], ignore_index=True)
    ordered, _ = with_copies(job, with_pool, store)
    assert ordered["fname"].iloc[-1] == "pool_clip.wav" and ordered["pool"].sum() == 1
    assert len(ordered) == len(with_pool) + 2 * len(train)


def _config(augmentation: dict | None) -> dict:
    config = copy.deepcopy(CONFIG)
    if augmentation is None:
        del config["preprocessing"]["waveform_augmentation"]
    else:
        config["preprocessing"]["waveform_augmentation"] = augmentation
    return config


@pytest.mark.parametrize("preset", ["demo", "paper"])
def test_off_changes_no_job_setting(preset):
    """copies: 0 (config.yaml's default) and an absent section give the settings of before:
    the preprocessing jobs' exactly config's four keys, no training job a ``copies`` key."""
    runs = []
    for augmentation in (None, {"copies": 0}):
        config = _config(augmentation)
        config["run_preset"] = preset
        runs.append(resolve_settings(config))
    for settings in runs:
        assert waveform_augmentation_settings(settings) is None
        assert preprocessing_settings(settings) == {
            key: settings["preprocessing"][key]
            for key in ("shards", "sample_rate", "spectrograms", "sox_effects")
        }
        for preset_name in settings["method"]["presets"]:
            for iteration in (0, 1):
                assert "copies" not in fit_settings(settings, preset_name, iteration, "self_verification")
    preset_name = runs[0]["method"]["presets"][0]
    assert fit_settings(runs[0], preset_name, 0) == fit_settings(runs[1], preset_name, 0)
    on = resolve_settings(_config({"copies": 3, "gain_db": [0, 0]}))
    resolved = waveform_augmentation_settings(on)
    assert (
        resolved["copies"] == 3
        and resolved["gain_db"] == [0.0, 0.0]
        and resolved["time_stretch"] == [0.8, 1.0]
    )
    assert fit_settings(on, PRESET, 0)["copies"] == resolved
    assert preprocessing_settings(on) == preprocessing_settings(runs[0])  # originals not redone


@pytest.mark.parametrize(
    "augmentation, fragment",
    [
        (
            {"copies": 1, "time_stretch": [1.0, 0.8]},
            "time_stretch: \\[1.0, 0.8\\] has its lowest value above",
        ),
        ({"copies": 0, "noise_dir": "noise"}, "\\['noise_dir'\\] set but copies is 0"),
        ({"copies": -1}, "copies"),
        ({"copies": 1, "shift": 2}, "shift"),
        ({"copies": 1, "colour": "red"}, "colour"),
        ({"copies": 1, "time_stretch": [1, 1], "shift": 0, "gain_db": [0, 0]}, "every step is off"),
        ({"copies": 1, "snr_db": [0, 10]}, "snr_db: set without noise_dir"),
        ({"copies": 1, "shift": 0, "rollover": False}, "rollover: set with shift 0"),
    ],
)
def test_config_refuses_bad_settings_naming_the_key(augmentation, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_settings(_config(augmentation))


def _planned_commands(config: dict, workdir: Path, preset: str) -> list[str]:
    """Every job's shell command (with its settings JSON) of a dry run of the demo dataset."""
    workdir.mkdir(parents=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "-n", "-p", "--cores", "2"]
        + ["--snakefile", str(REPO / "Snakefile")]
        + ["--config", f"run_preset={preset}"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    return sorted(line for line in lines if "python -m workflow_lib.cli" in line)


@pytest.mark.parametrize("preset", ["demo", "paper"])
def test_off_plans_the_same_jobs_with_the_same_commands(tmp_path, preset):
    """config.yaml as it is (copies: 0) and config.yaml without the section plan the same jobs
    with the same commands and settings, for both run presets; copies >= 1 adds the copy jobs."""
    without = _config(None)
    planned = {
        name: _planned_commands(config, tmp_path / name, preset)
        for name, config in (("default", copy.deepcopy(CONFIG)), ("without", without))
    }
    assert planned["default"] == planned["without"] and len(planned["default"]) > 20
    assert not any("copy-shard" in line or "train_copies" in line for line in planned["default"])
    on = _planned_commands(_config({"copies": 1}), tmp_path / "on", preset)
    copy_jobs = [line for line in on if " copy-shard " in line]
    assert copy_jobs
    # the planned command parses as the CLI reads it; without a noise folder --noise '' is None
    for line in copy_jobs:
        words = shlex.split(line.split(" 2> ")[0])
        args = build_parser().parse_args(words[words.index("workflow_lib.cli") + 1 :])
        assert args.command == "copy-shard" and args.noise is None
    trained = [line for line in on if "workflow_lib.cli train " in line]
    assert trained and all('"copies": {' in line for line in trained)


def test_a_training_job_trains_on_the_copies_end_to_end(stored, tmp_path, caplog):
    """run_training_job on synthetic clips and their copies: the log names the copies added,
    the model trains (finite losses) and validates on the original clips of its fold only."""
    (tmp_path / "classes.csv").write_text("index,label,n_verified\n0,c0,2\n1,c1,2\n")
    job = _job(tmp_path, stored["manifest"], stored["folds"], {"copies": 2})
    job = replace(job, frames=256, fit=replace(job.fit, excerpt_frames=192, epochs=2))
    with caplog.at_level(logging.INFO, logger="workflow_lib.stages"):
        history = run_training_job(job)
    assert "waveform augmentation: 8 copies of 4 of the 4 training clips added (12 rows)" in caplog.text
    assert "4 training clips, 2 verified validation clips" in caplog.text
    assert len(history) == 2 and np.isfinite(history[["train_loss", "valid_loss"]].to_numpy()).all()


def test_a_clip_too_short_to_augment_is_left_out_with_a_warning(clips, noise_dir, caplog):
    """A one-sample clip (what SoX can leave of a click) gets no copy; the others do."""
    from workflow_lib import waveform_augment

    real = waveform_augment.clipped_shard

    def with_a_click(*args, **kwargs):
        for row, clip in real(*args, **kwargs):
            if row["fname"] == "clip0.wav":
                clip = replace(clip, samples=clip.samples[:1])
            yield row, clip

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(waveform_augment, "clipped_shard", with_a_click)
        noise = usable_noise(noise_table(noise_dir), noise_dir)
        _, manifests = _copies(clips, _aug(str(noise_dir), copies=1), noise, versions=(1,))
    assert "clip0.wav" not in set(manifests[1]["source"]) and len(manifests[1]) == len(clips) - 1
    assert "no copy 0 of clip0.wav" in caplog.text
