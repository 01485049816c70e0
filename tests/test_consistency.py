"""Consistency training in fine-tuning (workflow_lib/consistency.py, issue 21 item 3).

What is checked: the term is 0 for identical outputs and its gradient is 2 * scale * (a - b) / N;
the sigmoid ramp-up's values; the unlabelled clips are exactly the fold's untrusted unverified
training clips; settings and fingerprints of chains without the key are unchanged; a small fit
with the term on is deterministic for a seed and resumes exactly, for both tasks; the schema
accepts and refuses values, naming the key.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_multilabel_training import CLASSES, job_for, store  # noqa: F401 (a fixture)
from test_training import N_CLASSES, band_bank

from workflow_lib.config import FINE_TUNING_ONLY_KEYS, ConfigError, resolve_settings
from workflow_lib.consistency import ConsistencySettings, consistency_loss, rampup
from workflow_lib.io import read_csv_str, write_csv
from workflow_lib.job_settings import AUGMENT_OFF, fit_settings
from workflow_lib.model import build_model
from workflow_lib.stages import TrainingJob, fingerprint, run_training_job, training_sets, unlabelled_clips
from workflow_lib.task import MULTI, SINGLE
from workflow_lib.training import CheckpointPolicy, FitSettings, RunOptions, fit

from conftest import REPO, TINY_FIT, fold_one_job

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
PRESET = "vgg_gap_spec1_1"
VIEWS = {"time_masks": 2, "time_mask_width": 20, "freq_masks": 2, "freq_mask_width": 16}
ON = {"weight": 2.0, "rampup_epochs": 2, "unlabelled": True, "augment": {**AUGMENT_OFF, **VIEWS}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_loss_is_zero_for_identical_outputs_and_its_gradient_is_documented():
    torch.manual_seed(0)
    a = torch.rand(4, 3, requires_grad=True)
    b = torch.rand(4, 3)
    assert float(consistency_loss(a.detach(), a.detach(), 2.5)) == 0.0
    weight, ramp = 2.0, rampup(1, 4)
    loss = consistency_loss(a, b, weight * ramp)
    loss.backward()
    torch.testing.assert_close(a.grad, 2 * weight * ramp * (a.detach() - b) / a.numel())
    assert math.isclose(
        float(loss.detach()), weight * ramp * float(((a.detach() - b) ** 2).mean()), rel_tol=1e-6
    )


def test_rampup_values():
    assert rampup(0, 5) == pytest.approx(math.exp(-5.0))
    assert rampup(2, 4) == pytest.approx(math.exp(-5.0 * 0.25))
    assert rampup(5, 5) == 1.0 and rampup(9, 5) == 1.0
    assert rampup(0, 0) == 1.0


def _job(tmp_path: Path, consistency=ON, train_list=True) -> TrainingJob:
    """Fold 1 of six clips over two folds; a training list trusting u1 of the unverified ones."""
    folds = pd.DataFrame(
        {
            "fname": ["v0", "u0", "u1", "v1", "u2", "u3"],
            "label": ["a"] * 6,
            "verified": ["1", "0", "0", "1", "0", "0"],
            "fold": ["0", "0", "0", "1", "1", "1"],
        }
    )
    listing = folds[["fname", "label"]].assign(manually_verified=["1", "0", "1", "1", "0", "0"])
    settings = FitSettings(**{**TINY_FIT, "mixup_alpha": None, "consistency": consistency})
    return fold_one_job(tmp_path, folds, listing if train_list else None, settings)


def test_unlabelled_clips_are_the_folds_untrusted_unverified_training_clips(tmp_path):
    """Fold 1 validates on v1, u2, u3 (never unlabelled); of its training part u0 is untrusted,
    u1 trusted, v0 verified."""
    assert unlabelled_clips(_job(tmp_path)) == ["u0"]
    assert unlabelled_clips(_job(tmp_path, {**ON, "unlabelled": False})) == []
    assert unlabelled_clips(_job(tmp_path, None)) == []
    assert unlabelled_clips(_job(tmp_path, train_list=False)) == []


def _config(consistency=None, run_preset="paper") -> dict:
    config = copy.deepcopy(CONFIG)
    config["run_preset"] = run_preset
    if consistency is not None:
        config["chains"]["warmup"]["consistency"] = consistency
    return config


def test_fit_settings_are_unchanged_without_the_key():
    """Chains without ``consistency`` (every existing one): the settings of before, with or
    without the chain; with it: only the chain's fine-tuning jobs get ``fit.consistency``."""
    plain = resolve_settings(_config())
    on = resolve_settings(_config({"weight": 1.0, "augment": VIEWS}))
    for chain in plain["chains"]:
        # fine-tuning options: their own tests
        if set(FINE_TUNING_ONLY_KEYS) & set(CONFIG["chains"][chain]) or chain == "warmup":
            continue
        for iteration in (0, 1, 2):
            before = fit_settings(plain, PRESET, iteration)
            assert fit_settings(plain, PRESET, iteration, chain) == before
            assert fit_settings(on, PRESET, iteration, chain) == before
    assert fit_settings(on, PRESET, 0, "warmup") == fit_settings(plain, PRESET, 0)
    tuned = fit_settings(on, PRESET, 1, "warmup")
    expected = {"weight": 1.0, "rampup_epochs": 0, "unlabelled": True, "augment": {**AUGMENT_OFF, **VIEWS}}
    assert tuned["fit"]["consistency"] == expected
    job = TrainingJob.from_settings(
        tuned, manifest_csv=None, folds_csv=None, classes_csv=None, fold=0, out_dir=None
    )
    assert job.fit.consistency == ConsistencySettings(**expected)
    assert "consistency" in job.fit.record()
    plain_job = fit_settings(plain, PRESET, 1, "warmup")
    assert "consistency" not in FitSettings(**plain_job["fit"]).record()


def _fit(tmp_path, name, task, consistency=ON, epochs=3, kill_after=None, unlabelled=True):
    """The band problem of tests/test_training.py fine-tuned (no mixup), seed 5, checkpoints
    every 2 epochs, with a bank of unlabelled clips; ``kill_after``: stop as a kill."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train_bank, train_targets = band_bank(4, 256, rng)
    valid_bank, valid_targets = band_bank(2, 256, rng)
    extra, _ = band_bank(3, 256, rng)
    if task is MULTI:
        train_targets, valid_targets = (
            np.eye(N_CLASSES, dtype=np.float32)[t] for t in (train_targets, valid_targets)
        )
    model = build_model(4, N_CLASSES, dropout=(0.1, 0.2))
    settings = FitSettings(
        epochs=epochs,
        lr=3e-3,
        constant_epochs=2,
        batch_size=6,
        excerpt_frames=192,
        mixup_alpha=None,
        seed=5,
        consistency=consistency,
    )

    def on_epoch(history):
        if kill_after is not None and len(history) == kill_after:
            raise KeyboardInterrupt

    options = RunOptions(CheckpointPolicy(epochs=2, minutes=None))
    args = (train_bank, train_targets, valid_bank, valid_targets, settings, tmp_path / name, "fp")
    bank = extra if unlabelled else None
    return fit(model, *args, on_epoch=on_epoch, options=options, task=task, unlabelled_bank=bank), model


def _scores(state) -> np.ndarray:
    return pd.DataFrame(state.history)[["train_loss", "train_acc", "valid_loss", "valid_acc"]].to_numpy(float)


@pytest.mark.parametrize("task", [SINGLE, MULTI], ids=lambda t: t.name)
def test_fit_with_consistency_is_deterministic_and_resumes_exactly(tmp_path, task):
    first, _ = _fit(tmp_path, "a.pt", task)
    again, _ = _fit(tmp_path, "b.pt", task)
    np.testing.assert_array_equal(_scores(first), _scores(again))
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, "killed.pt", task, epochs=4, kill_after=3)
    resumed, _ = _fit(tmp_path, "killed.pt", task, epochs=4)
    straight, _ = _fit(tmp_path, "straight.pt", task, epochs=4)
    np.testing.assert_allclose(_scores(resumed), _scores(straight), rtol=0, atol=1e-6)
    off, _ = _fit(tmp_path, "off.pt", task, consistency=None)
    assert not np.allclose(_scores(first), _scores(off))
    labelled_only, _ = _fit(tmp_path, "l.pt", task, unlabelled=False)
    assert not np.allclose(_scores(first), _scores(labelled_only))


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as raised:
        resolve_settings(config)
    return str(raised.value)


def test_config_accepts_consistency_and_the_example_chain():
    settings = resolve_settings(_config(ON))
    assert settings["chains"]["warmup"]["consistency"]["weight"] == 2.0
    assert "consistency" in CONFIG["chains"]["ssl_consistency"]
    assert "ssl_consistency" not in CONFIG["run_chains"]
    resolve_settings(_config({"weight": 0.5}, run_preset="demo"))


@pytest.mark.parametrize(
    "consistency,fragment",
    [
        ({"rampup_epochs": 2}, "consistency"),
        ({"weight": 0}, "consistency.weight"),
        ({"weight": 1, "rampup_epochs": -1}, "consistency.rampup_epochs"),
        ({"weight": 1, "unlabelled": "yes"}, "consistency.unlabelled"),
        ({"weight": 1, "mean_teacher": True}, "consistency"),
        ({"weight": 1, "augment": {"freq_mask_width": 129}}, "consistency.augment.freq_mask_width"),
        ({"weight": 1, "augment": {"fine_tuning": True}}, "consistency.augment"),
        ({"weight": 1, "augment": {"time_mask_width": 385}}, "consistency.augment.time_mask_width: 385"),
    ],
)
def test_config_refuses_bad_consistency_naming_the_key(consistency, fragment):
    message = _error(_config(consistency))
    assert f"config key chains.warmup.{fragment}" in message, message


def test_a_fine_tuning_job_trains_with_its_unlabelled_clips(store, tmp_path):
    """run_training_job, multi-label, with a training list trusting every other unverified
    clip: the unlabelled clips are the fold's untrusted unverified training clips, they enter
    the fingerprint (the plain job's stays as it was), and the job trains through them."""
    folds = read_csv_str(store["folds"])
    noisy = folds["verified"] == "0"
    untrusted = noisy & (np.arange(len(folds)) % 8 == 3)
    listing = folds[["fname", "label"]].assign(manually_verified=np.where(untrusted, "0", "1"))
    write_csv(listing, tmp_path / "train_list.csv")
    plain = job_for(store, tmp_path / "plain", train_list_csv=tmp_path / "train_list.csv")
    plain = replace(plain, fit=replace(plain.fit, mixup_alpha=None))
    job = replace(plain, out_dir=tmp_path / "on", fit=replace(plain.fit, consistency=ON))
    expected = folds.loc[untrusted & (folds["fold"] != "0"), "fname"].tolist()
    assert expected and unlabelled_clips(job) == expected
    assert set(expected).isdisjoint(folds.loc[folds["fold"] == "0", "fname"])
    train, valid = training_sets(job, CLASSES)
    assert fingerprint(plain, train, valid) == fingerprint(plain, train, valid, [])
    assert fingerprint(job, train, valid, expected) != fingerprint(job, train, valid)
    history = run_training_job(job)
    assert len(history) == job.fit.epochs and np.isfinite(history["train_loss"]).all()


def test_consistency_runs_on_the_cuda_path_on_the_cpu(tmp_path):
    """bf16 autocast, channels-last and fused Adam (the CUDA set, switched on for a CPU run):
    the consistency step trains with finite losses, deterministically."""
    from test_gpu_paths import CUDA_PATH_ON_CPU

    def run(name: str) -> np.ndarray:
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        train_bank, train_targets = band_bank(4, 256, rng)
        valid_bank, valid_targets = band_bank(2, 256, rng)
        extra, _ = band_bank(2, 256, rng)
        settings = FitSettings(
            epochs=2,
            lr=3e-3,
            constant_epochs=1,
            batch_size=6,
            excerpt_frames=192,
            mixup_alpha=None,
            seed=5,
            amp=True,
            consistency=ON,
        )
        options = RunOptions(CheckpointPolicy(epochs=1, minutes=None), features=CUDA_PATH_ON_CPU)
        model = build_model(4, N_CLASSES, dropout=(0.1, 0.2))
        args = (train_bank, train_targets, valid_bank, valid_targets, settings, tmp_path / name, "fp")
        return _scores(fit(model, *args, options=options, unlabelled_bank=extra))

    first = run("a.pt")
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, run("b.pt"))
