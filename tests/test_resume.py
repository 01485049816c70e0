"""Killed training jobs resume where they stopped (the real CLI, ``python -m workflow_lib.cli train``).

docs/method.md "Initial training" is 500 epochs per preset and fold, "about two days of training on
four GPUs" (docs/method.md "Metrics and the published numbers"): a job killed by a scheduler or a
crash must continue at the next epoch and end exactly as an uninterrupted run would, and must
never continue from a checkpoint written with other settings or data.

The inputs are built as the workflow builds them: a sharded spectrogram store
(preprocess.write_shard + merge_manifests), folds.csv from stages.folds_job, a classes.csv, and
the settings JSON of job_settings.fit_settings on a resolved config, as rules/train.smk passes it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from workflow_lib.config import resolve_settings
from workflow_lib.dataset import read_classes
from workflow_lib.io import read_csv_str, write_csv
from workflow_lib.job_settings import fit_settings
from workflow_lib.preprocess import MANIFEST_COLUMNS, merge_manifests, write_shard
from workflow_lib.stages import TrainingJob, fingerprint, training_sets
from workflow_lib.training import HISTORY_COLUMNS, FitSettings

from conftest import REPO

PRESET = "vgg_gap_spec1_1"
EPOCHS = 8
KILL_AFTER = 2  # SIGKILL once the checkpoint holds at least this many epochs
CLASSES = ["Applause", "Bark", "Cowbell"]
CLIPS_PER_CLASS = 20
FOLD = 0


def settings_for(epochs: int = EPOCHS, augment: dict | None = None) -> dict:
    """The settings JSON the rule would pass, from config.yaml with small-run overrides
    (``augment``: the preset's ``augment`` mapping, docs/method.md "Beyond the paper", "Augmentation")."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["run_preset"] = "demo"
    demo = config["run_presets"]["demo"]
    demo["method"].update(
        {"spectrogram_frames": 256, "excerpt_frames": 192, "dropout": {"conv": 0.05, "head": 0.1}}
    )
    demo["method"]["nets"][PRESET] = {"width": 8, "batch_size": 10}
    if augment is not None:
        demo["method"]["nets"][PRESET]["augment"] = augment
    demo["method"]["initial_training"] = {"epochs": epochs, "constant_epochs": 3}
    demo.setdefault("compute", {})["device"] = "cpu"
    return fit_settings(resolve_settings(config), PRESET, 0)


def _band_clips() -> tuple[list[dict], list[np.ndarray]]:
    """Manifest rows and spectrograms: CLIPS_PER_CLASS clips per class, each a band of energy
    at its class's place over noise, half of them verified; then one skipped file, as
    preprocessing reports them (it must simply be absent everywhere)."""
    rng = np.random.default_rng(2018)
    rows, parts, offset = [], [], 0
    for c, label in enumerate(CLASSES):
        for i in range(CLIPS_PER_CLASS):
            n = int(rng.integers(60, 250))
            spec = rng.normal(0, 0.3, (1, 128, n)).astype(np.float32)
            spec[:, 10 + 40 * c : 30 + 40 * c] += 2.0
            parts.append(spec)
            rows.append(
                {
                    "fname": f"{label.lower()}_{i:02d}.wav",
                    "label": label,
                    "verified": str(i % 2),
                    "n_frames": n,
                    "seconds_before_clipping": 1.0,
                    "seconds_after_clipping": 1.0,
                    "status": "clipped",
                    "shard": 0,
                    "offset": offset,
                    "detail": "",
                }
            )
            offset += n
    skipped = {"fname": "broken.wav", "n_frames": 0, "offset": offset, "status": "skipped_undecodable"}
    rows.append({**rows[-1], **skipped, "detail": "not audio"})
    return rows, parts


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Manifest + shard array, folds.csv and classes.csv of small band-pattern spectrograms."""
    root = tmp_path_factory.mktemp("resume_inputs")
    rows, parts = _band_clips()
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    spectrograms = root / "spectrograms" / "v1"
    write_shard(
        {1: np.concatenate(parts, axis=-1)},
        {1: manifest},
        {1: spectrograms / "train" / "shard0.npy"},
        {1: spectrograms / "train" / "shard0.csv"},
    )
    merge_manifests([spectrograms / "train" / "shard0.csv"], spectrograms / "train.csv")
    folds_command = ["folds", "--manifest", str(spectrograms / "train.csv"), "--out", str(root / "folds.csv")]
    subprocess.run(
        [sys.executable, "-m", "workflow_lib.cli", *folds_command, "--folds", "4", "--seed", "2018"],
        cwd=REPO,
        env=_env(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    write_csv(pd.DataFrame({"index": range(len(CLASSES)), "label": CLASSES}), root / "classes.csv")
    return {
        "manifest": spectrograms / "train.csv",
        "folds": root / "folds.csv",
        "classes": root / "classes.csv",
        "root": root,
    }


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def train_command(inputs: dict[str, Path], out_dir: Path, settings: dict) -> list[str]:
    """The command of rules/train.smk's train_initial rule."""
    return [
        sys.executable,
        "-m",
        "workflow_lib.cli",
        "train",
        "--manifest",
        str(inputs["manifest"]),
        "--folds",
        str(inputs["folds"]),
        "--classes",
        str(inputs["classes"]),
        "--fold",
        str(FOLD),
        "--out-dir",
        str(out_dir),
        "--threads",
        "1",
        "--lock-dir",
        str(inputs["root"] / "locks"),
        "--settings",
        json.dumps(settings),
    ]


def run_to_end(command: list[str], log: Path) -> str:
    with open(log, "w") as handle:
        done = subprocess.run(
            command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=handle, timeout=300
        )
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    return text


def checkpoint_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["state"]["epoch"])


def history_of(out_dir: Path) -> pd.DataFrame:
    return pd.read_csv(out_dir / "history.csv")


@pytest.fixture(scope="module")
def killed_and_resumed(inputs, tmp_path_factory) -> dict:
    """Start a run, SIGKILL it once >= KILL_AFTER epochs are checkpointed, rerun the same command."""
    return kill_and_resume(inputs, tmp_path_factory.mktemp("killed"), settings_for())


def kill_and_resume(inputs: dict[str, Path], out_dir: Path, settings: dict) -> dict:
    """The train command of ``settings`` SIGKILLed once >= KILL_AFTER epochs are checkpointed,
    then rerun unchanged to the end."""
    command = train_command(inputs, out_dir, settings)
    resume = out_dir / "resume.pt"
    log = out_dir.parent / f"{out_dir.name}_first.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=handle)
    try:
        deadline, last_mtime = time.monotonic() + 240, None
        while process.poll() is None and time.monotonic() < deadline:
            try:
                mtime = resume.stat().st_mtime_ns  # replaced atomically after every epoch
                if mtime != last_mtime and checkpoint_epoch(resume) >= KILL_AFTER:
                    process.send_signal(signal.SIGKILL)
                    break
                last_mtime = mtime
            except FileNotFoundError:
                pass
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (
        f"the run ended (rc {process.returncode}) before it could be killed; make epochs "
        f"longer:\n{log.read_text()[-3000:]}"
    )
    killed_at = checkpoint_epoch(resume)
    assert KILL_AFTER <= killed_at < EPOCHS
    assert not (out_dir / "best.pt").exists()
    kept = out_dir.parent / f"{out_dir.name}_resume_copy.pt"
    shutil.copy(resume, kept)

    second_log = run_to_end(command, out_dir.parent / f"{out_dir.name}_second.log")
    return {
        "out_dir": out_dir,
        "killed_at": killed_at,
        "log": second_log,
        "first_log": log.read_text(),
        "checkpoint_copy": kept,
    }


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    log = run_to_end(train_command(inputs, out_dir, settings_for()), out_dir.parent / f"{out_dir.name}.log")
    assert "resuming" not in log
    return out_dir


def test_killed_run_resumes_at_the_next_epoch(killed_and_resumed):
    """A SIGKILLed job, rerun unchanged, continues at epoch N + 1 and ends with epochs 1..8 once."""
    run = killed_and_resumed
    n = run["killed_at"]
    # The killed run had really trained epochs 1..N (epoch N's log line follows its
    # checkpoint, so the kill may have come between the two).
    for epoch in range(1, n):
        assert f"epoch {epoch}/{EPOCHS} " in run["first_log"], run["first_log"][-3000:]
    assert f"resuming from epoch {n + 1} " in run["log"], run["log"][-3000:]
    assert run["log"].count("resuming from epoch") == 1
    assert "ignoring checkpoint" not in run["log"]
    # Epochs 1..N are not trained again: the second run logs only epochs N+1..8.
    for epoch in range(1, EPOCHS + 1):
        assert (f"epoch {epoch}/{EPOCHS} " in run["log"]) == (epoch > n), epoch
    history = history_of(run["out_dir"])
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    for name in ("best.pt", "last.pt", "history.csv"):
        assert (run["out_dir"] / name).is_file()
    assert not (run["out_dir"] / "resume.pt").exists(), "a finished run removes its checkpoint"


def test_resumed_run_equals_uninterrupted_run(killed_and_resumed, uninterrupted):
    """Determinism given the seed: kill + resume gives the uninterrupted run's result."""
    resumed, straight = history_of(killed_and_resumed["out_dir"]), history_of(uninterrupted)
    columns = [c for c in HISTORY_COLUMNS if c != "seconds"]
    assert straight["epoch"].tolist() == list(range(1, EPOCHS + 1))
    np.testing.assert_allclose(
        resumed[columns].to_numpy(float), straight[columns].to_numpy(float), rtol=0, atol=1e-5
    )
    # The run trained (so equality is not that of two idle runs).
    assert straight["train_loss"].iloc[-1] < straight["train_loss"].iloc[0]
    for name in ("best.pt", "last.pt"):
        a = torch.load(killed_and_resumed["out_dir"] / name, map_location="cpu", weights_only=False)
        b = torch.load(uninterrupted / name, map_location="cpu", weights_only=False)
        assert a["epoch"] == b["epoch"]
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key, tensor in a["state_dict"].items():
            other = b["state_dict"][key]
            if tensor.is_floating_point():
                assert torch.allclose(tensor, other, rtol=1e-4, atol=1e-5), (name, key)
            else:
                assert torch.equal(tensor, other), (name, key)


AUGMENT = {
    "time_masks": 2,
    "time_mask_width": 30,
    "freq_masks": 1,
    "freq_mask_width": 20,
    "noise_std": 0.2,
    "roll": True,
}


def test_killed_run_with_augmentation_equals_the_uninterrupted_run(inputs, uninterrupted, tmp_path):
    """With augmentation on (its draws from the checkpointed sampler), SIGKILL + rerun ends
    exactly as the uninterrupted run with augmentation; which differs from the run without."""
    settings = settings_for(augment=AUGMENT)
    assert settings["fit"]["augment"] == AUGMENT
    (tmp_path / "killed").mkdir()
    resumed = kill_and_resume(inputs, tmp_path / "killed", settings)
    assert f"resuming from epoch {resumed['killed_at'] + 1} " in resumed["log"]
    straight_dir = tmp_path / "straight"
    run_to_end(train_command(inputs, straight_dir, settings), tmp_path / "straight.log")
    columns = [c for c in HISTORY_COLUMNS if c != "seconds"]
    a, b = history_of(resumed["out_dir"])[columns], history_of(straight_dir)[columns]
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=0, atol=1e-5)
    plain = history_of(uninterrupted)[columns].to_numpy(float)
    assert not np.allclose(b.to_numpy(float), plain, atol=1e-4), "augmentation changed the run"
    for name in ("best.pt", "last.pt"):
        x = torch.load(resumed["out_dir"] / name, map_location="cpu", weights_only=False)["state_dict"]
        y = torch.load(straight_dir / name, map_location="cpu", weights_only=False)["state_dict"]
        for key, tensor in x.items():
            if tensor.is_floating_point():
                assert torch.allclose(tensor, y[key], rtol=1e-4, atol=1e-5), (name, key)
            else:
                assert torch.equal(tensor, y[key]), (name, key)


def test_checkpoint_from_other_settings_is_ignored(killed_and_resumed, inputs, tmp_path):
    """A resume.pt written with other settings is never continued: training starts at epoch 1."""
    out_dir = tmp_path / "other_settings"
    out_dir.mkdir()
    shutil.copy(killed_and_resumed["checkpoint_copy"], out_dir / "resume.pt")
    assert checkpoint_epoch(out_dir / "resume.pt") >= KILL_AFTER
    log = run_to_end(train_command(inputs, out_dir, settings_for(epochs=3)), tmp_path / "run.log")
    assert "ignoring checkpoint" in log
    assert "resuming" not in log
    assert "epoch 1/3 " in log
    assert history_of(out_dir)["epoch"].tolist() == [1, 2, 3]


def test_fingerprint_identifies_settings_and_data(inputs, tmp_path):
    """What makes a checkpoint foreign: any fit setting, the net, the fold's data, the init file."""
    settings = settings_for()
    job = TrainingJob(
        manifest_csv=inputs["manifest"],
        folds_csv=inputs["folds"],
        classes_csv=inputs["classes"],
        fold=FOLD,
        out_dir=tmp_path,
        preset=PRESET,
        net=settings["net"],
        fit=FitSettings(**settings["fit"]),
        frames=settings["frames"],
        device="cpu",
    )
    classes = read_classes(inputs["classes"])
    assert classes == CLASSES

    def print_of(j: TrainingJob) -> str:
        return fingerprint(j, *training_sets(j, classes))

    base = print_of(job)
    assert print_of(replace(job, out_dir=tmp_path / "elsewhere", threads=2)) == base
    variants = {
        "seed": replace(job, fit=replace(job.fit, seed=job.fit.seed + 1)),
        "epochs": replace(job, fit=replace(job.fit, epochs=job.fit.epochs + 1)),
        "lr": replace(job, fit=replace(job.fit, lr=job.fit.lr / 2)),
        "mixup": replace(job, fit=replace(job.fit, mixup_alpha=None)),
        "width": replace(job, net={**job.net, "width": 10}),
        "frames": replace(job, frames=job.frames + 1),
        "fold": replace(job, fold=FOLD + 1),
    }
    init = tmp_path / "init.pt"
    init.write_bytes(b"parameters of iteration i")
    variants["init"] = replace(job, init_checkpoint=init)
    prints = {name: print_of(variant) for name, variant in variants.items()}
    assert all(value != base for value in prints.values()), prints
    assert len(set(prints.values())) == len(prints)
    init.write_bytes(b"other parameters of iteration i")
    assert print_of(variants["init"]) != prints["init"]
    # A changed training list (fine-tuning: the self-verified list) changes it too.
    folds = read_csv_str(inputs["folds"])
    listed = folds.rename(columns={"verified": "manually_verified"})[["fname", "label", "manually_verified"]]
    write_csv(listed, tmp_path / "list_a.csv")
    flipped = listed.copy()
    in_training = (flipped["manually_verified"] == "0") & (folds["fold"].astype(int) != FOLD)
    flipped.loc[flipped.index[in_training][0], "manually_verified"] = "1"  # self-verified
    write_csv(flipped, tmp_path / "list_b.csv")
    a = print_of(replace(job, train_list_csv=tmp_path / "list_a.csv"))
    b = print_of(replace(job, train_list_csv=tmp_path / "list_b.csv"))
    assert a != b and a != base
