"""Spectrogram augmentation in the training step (workflow_lib/augment.py, issue 21 item 1).

What is checked: the masks replace exactly the drawn bands by the example's mean (by hand on a
small tensor, then counts and widths on many draws), the noise has the asked standard deviation
relative to each example's, the roll is a circular shift along time; the draws come from the
seeded DeviceSampler, so a fit() with augmentation is deterministic and resumes exactly after a
kill; with augmentation off (absent or all zero) settings, fingerprints and results are those
of before it existed; the config refuses what cannot apply, naming the key.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_training import N_CLASSES, band_bank

from workflow_lib.augment import AUGMENT_KEYS, AugmentSettings, augment, band_mask, roll_time
from workflow_lib.config import ConfigError, resolve_settings
from workflow_lib.job_settings import AUGMENT_OFF, compared_settings, fit_settings
from workflow_lib.model import build_model
from workflow_lib.stages import TrainingJob
from workflow_lib.training import (
    HISTORY_COLUMNS,
    CheckpointPolicy,
    DeviceSampler,
    FitSettings,
    RunOptions,
    fit,
)

from conftest import REPO

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
PRESET = "vgg_gap_spec1_1"
ON = {
    "time_masks": 2,
    "time_mask_width": 20,
    "freq_masks": 2,
    "freq_mask_width": 16,
    "noise_std": 0.1,
    "roll": True,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Scripted:
    """A sampler whose draws are given in advance (and whose arguments are recorded)."""

    def __init__(self, *draws: list) -> None:
        self.draws = [torch.tensor(d) for d in draws]
        self.calls: list[tuple] = []

    def integers(self, high, shape):
        self.calls.append(("integers", high, shape))
        return self.draws.pop(0)

    def below(self, high):
        self.calls.append(("below", high.tolist()))
        return self.draws.pop(0)

    def normal(self, shape, dtype=torch.float32):
        raise AssertionError("no noise asked")


# ---------------------------------------------------------------- the augmentation itself


def test_masks_replace_exactly_the_drawn_bands_by_the_mean():
    """By hand: frames 3-4 (width 2 from 3) and bin 0 (width 1 from 0) of a 4 x 6 excerpt
    become its mean 11.5; every other value, and the input, stay as they were."""
    x = torch.arange(24.0).view(1, 1, 4, 6)
    settings = AugmentSettings(time_masks=1, time_mask_width=2, freq_masks=1, freq_mask_width=1)
    sampler = Scripted([[2]], [[3]], [[1]], [[0]])
    out = augment(x, settings, sampler)
    expected = torch.tensor(
        [
            [11.5, 11.5, 11.5, 11.5, 11.5, 11.5],
            [6.0, 7.0, 8.0, 11.5, 11.5, 11.0],
            [12.0, 13.0, 14.0, 11.5, 11.5, 17.0],
            [18.0, 19.0, 20.0, 11.5, 11.5, 23.0],
        ]
    )
    assert torch.equal(out[0, 0], expected)
    assert torch.equal(x, torch.arange(24.0).view(1, 1, 4, 6)), "the input is not modified"
    # widths 0 ... max, then a start where the drawn width fits: 6 - 2 + 1 and 4 - 1 + 1 starts
    assert sampler.calls == [
        ("integers", 3, (1, 1)),
        ("below", [[5]]),
        ("integers", 2, (1, 1)),
        ("below", [[4]]),
    ]


def test_mask_counts_and_widths_are_respected():
    """One mask: a contiguous band of 0 ... W frames inside the excerpt, every width drawn;
    several: at most masks x W masked frames; every example has its own bands."""
    sampler = DeviceSampler(3, "cpu")
    one = band_mask(sampler, 4000, 1, 7, 30)
    lengths = one.sum(1)
    assert set(lengths.tolist()) == set(range(8))
    for row in one[lengths > 0]:
        where = torch.nonzero(row).flatten()
        assert torch.equal(where, torch.arange(int(where[0]), int(where[0]) + len(where)))
    assert one[:, 0].any() and one[:, -1].any(), "bands reach both ends"
    several = band_mask(sampler, 2000, 3, 5, 40)
    assert several.sum(1).max() <= 15 and several.sum(1).max() >= 10
    x = torch.randn(300, 1, 16, 40)
    out = augment(x, AugmentSettings(time_masks=2, time_mask_width=10), sampler)
    frames = (out == out[:, :, :1, :]).all(dim=2).squeeze(1)  # all bins equal: a masked frame
    masked = frames[:, None, None, :].expand_as(out)
    mean = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(out)
    torch.testing.assert_close(out[masked], mean[masked])
    assert frames.sum(1).max() <= 20 and len({tuple(r.tolist()) for r in frames}) > 100
    assert torch.equal(out[~masked], x[~masked])


def test_noise_std_is_relative_to_each_example():
    """noise_std 0.5: the added noise has 0.5 x the example's own std (3 and 0.1 here), mean 0."""
    scales = torch.tensor([3.0, 0.1]).view(2, 1, 1, 1)
    x = 5.0 + scales * torch.randn(2, 1, 128, 2000, generator=torch.Generator().manual_seed(0))
    out = augment(x, AugmentSettings(noise_std=0.5), DeviceSampler(0, "cpu"))
    noise = (out - x).flatten(1)
    expected = 0.5 * x.flatten(1).std(dim=1, correction=0)
    np.testing.assert_allclose(noise.std(dim=1).numpy(), expected.numpy(), rtol=0.01)
    assert (noise.mean(dim=1).abs() < 0.01 * expected).all()


def test_roll_is_a_circular_shift_along_time():
    """Each example is torch.roll of itself along time by its own shift; shifts cover 0 ... T-1."""
    x = torch.randn(500, 1, 8, 12)
    sampler = DeviceSampler(1, "cpu")
    state = sampler.get_state()
    out = augment(x, AugmentSettings(roll=True), sampler)
    sampler.set_state(state)
    shifts = sampler.integers(12, (500,))
    for b in range(len(x)):
        assert torch.equal(out[b], torch.roll(x[b], int(shifts[b]), dims=-1))
    assert set(shifts.tolist()) == set(range(12))
    assert torch.equal(roll_time(x, torch.zeros(500, dtype=torch.long)), x)


def test_augment_is_deterministic_for_a_seed_and_resumable():
    """Same seed, same augmentation; another seed differs; a saved state replays the stream."""
    settings = AugmentSettings(**ON)
    x = torch.randn(8, 1, 128, 64)
    a, b, c = (DeviceSampler(s, "cpu") for s in (7, 7, 8))
    first = augment(x, settings, a)
    assert torch.equal(first, augment(x, settings, b))
    assert not torch.equal(first, augment(x, settings, c))
    state = a.get_state()
    second = augment(x, settings, a)
    assert not torch.equal(first, second), "two draws of one excerpt differ (consistency training)"
    a.set_state(state)
    assert torch.equal(augment(x, settings, a), second)


def test_a_mask_wider_than_the_excerpt_is_refused():
    with pytest.raises(ValueError, match="exceed the excerpt"):
        augment(
            torch.zeros(2, 1, 16, 10),
            AugmentSettings(time_masks=1, time_mask_width=11),
            DeviceSampler(0, "cpu"),
        )


def test_off_has_one_representation():
    """Absent, all zero, or masks without a width: None, and FitSettings records no key."""
    assert AugmentSettings.from_mapping(None) is None
    assert AugmentSettings.from_mapping(dict(AUGMENT_OFF)) is None
    assert AugmentSettings.from_mapping({"time_masks": 3}) is None
    with pytest.raises(TypeError):
        AugmentSettings.from_mapping({"time_masks": 1, "fine_tuning": True})  # a config key only
    assert tuple(AUGMENT_OFF) == AUGMENT_KEYS == tuple(f.name for f in dataclasses.fields(AugmentSettings))
    base = {"epochs": 1, "lr": 1e-3, "constant_epochs": 1, "batch_size": 2, "excerpt_frames": 8}
    off = FitSettings(**base, mixup_alpha=None, seed=0, augment=dict(AUGMENT_OFF))
    assert off.augment is None and off == FitSettings(**base, mixup_alpha=None, seed=0)
    assert "augment" not in off.record()
    on = FitSettings(**base, mixup_alpha=None, seed=0, augment=ON)
    assert on.augment == AugmentSettings(**ON) and on.record()["augment"] == ON
    hash(on)  # frozen and hashable, as before


# ---------------------------------------------------------------- in fit()


def _fit(tmp_path, name, augment=None, epochs=3, kill_after=None):
    """The small band problem of tests/test_training.py, seed 5, mixup 0.2, checkpoints every
    2 epochs; ``kill_after``: raise out of fit() after that many epochs, as a kill."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train_bank, train_targets = band_bank(6, 256, rng)
    valid_bank, valid_targets = band_bank(3, 256, rng)
    model = build_model(6, N_CLASSES, dropout=(0.1, 0.2))
    settings = FitSettings(
        epochs=epochs,
        lr=3e-3,
        constant_epochs=2,
        batch_size=8,
        excerpt_frames=192,
        mixup_alpha=0.2,
        seed=5,
        augment=augment,
    )

    def on_epoch(history):
        if kill_after is not None and len(history) == kill_after:
            raise KeyboardInterrupt

    options = RunOptions(CheckpointPolicy(epochs=2, minutes=None))
    args = (train_bank, train_targets, valid_bank, valid_targets, settings, tmp_path / name, "fp")
    return fit(model, *args, on_epoch=on_epoch, options=options), model


def _scores(state) -> np.ndarray:
    columns = ["train_loss", "train_acc", "valid_loss", "valid_acc"]
    return pd.DataFrame(state.history)[columns].to_numpy(float)


def test_fit_without_augmentation_is_as_before(tmp_path, monkeypatch):
    """Off (absent or all zero): the step never augments, so it makes no extra random draw
    and trains as the code before augmentation did; both spellings of off train alike.
    (The history itself is not pinned: float results differ between CPU models.)"""
    import workflow_lib.training as training

    calls: list[AugmentSettings] = []

    def spy(inputs, settings, sampler):
        calls.append(settings)
        return augment(inputs, settings, sampler)

    monkeypatch.setattr(training, "augment", spy)
    absent, _ = _fit(tmp_path, "a.pt")
    zero, _ = _fit(tmp_path, "b.pt", augment=dict(AUGMENT_OFF))
    assert calls == []
    assert np.array_equal(_scores(absent), _scores(zero))
    _fit(tmp_path, "on.pt", ON, epochs=1)
    assert calls and all(settings == AugmentSettings.from_mapping(ON) for settings in calls)


def test_fit_with_augmentation_resumes_exactly_after_a_kill(tmp_path):
    """Augmentation on: killed after epoch 3 (checkpoint at 2), resumed, it ends as the
    uninterrupted run (history, kept and last parameters); and it differs from the run
    without augmentation."""
    straight, straight_model = _fit(tmp_path, "straight.pt", ON, epochs=5)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, "killed.pt", ON, epochs=5, kill_after=3)
    assert torch.load(tmp_path / "killed.pt", weights_only=False)["state"]["epoch"] == 2
    resumed, resumed_model = _fit(tmp_path, "killed.pt", ON, epochs=5)
    assert [h["epoch"] for h in resumed.history] == list(range(1, 6))
    assert list(pd.DataFrame(resumed.history).columns) == HISTORY_COLUMNS
    np.testing.assert_allclose(_scores(resumed), _scores(straight), rtol=0, atol=1e-6)
    for key, tensor in straight.best_state.items():
        torch.testing.assert_close(resumed.best_state[key], tensor, rtol=1e-5, atol=1e-6)
    for key, tensor in straight_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], tensor, rtol=1e-5, atol=1e-6)
    off, _ = _fit(tmp_path, "off.pt", epochs=5)
    assert not np.allclose(_scores(straight), _scores(off), atol=1e-3)


# ---------------------------------------------------------------- settings and config


def _config(augment=None, run_preset="paper", **net) -> dict:
    config = copy.deepcopy(CONFIG)
    config["run_preset"] = run_preset
    if augment is not None:
        config["method"]["nets"][PRESET]["augment"] = augment
    config["method"]["nets"][PRESET].update(net)
    return config


def test_fit_settings_carry_augment_only_when_on():
    """Absent or off: every job's settings are those of before (no key, the net unchanged);
    on: the initial-training job's ``fit.augment`` (all keys), fine-tuning only when asked."""
    for run_preset in ("paper", "demo"):
        plain = resolve_settings(_config(run_preset=run_preset))
        zero = resolve_settings(_config({"time_masks": 0, "noise_std": 0.0}, run_preset))
        for iteration in (0, 1):
            before = fit_settings(plain, PRESET, iteration)
            assert "augment" not in before["fit"] and "augment" not in before["net"]
            assert fit_settings(zero, PRESET, iteration) == before
    on = resolve_settings(_config({"time_masks": 1, "time_mask_width": 8}))
    initial = fit_settings(on, PRESET, 0)
    assert initial["fit"]["augment"] == {**AUGMENT_OFF, "time_masks": 1, "time_mask_width": 8}
    assert "augment" not in initial["net"]
    assert fit_settings(on, PRESET, 1) == fit_settings(resolve_settings(_config()), PRESET, 1)
    both = resolve_settings(_config({"noise_std": 0.2, "fine_tuning": True}))
    assert fit_settings(both, PRESET, 1)["fit"]["augment"] == {**AUGMENT_OFF, "noise_std": 0.2}
    assert fit_settings(both, PRESET, 0)["fit"]["augment"] == {**AUGMENT_OFF, "noise_std": 0.2}
    assert compared_settings(initial) != compared_settings(
        fit_settings(resolve_settings(_config()), PRESET, 0)
    )
    job = TrainingJob.from_settings(
        initial, manifest_csv=None, folds_csv=None, classes_csv=None, fold=0, out_dir=None
    )
    assert job.fit.augment == AugmentSettings(time_masks=1, time_mask_width=8)


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as raised:
        resolve_settings(config)
    return str(raised.value)


def test_config_accepts_augmentation():
    settings = resolve_settings(_config(dict(ON, fine_tuning=False)))
    assert settings["method"]["nets"][PRESET]["augment"]["time_mask_width"] == 20


@pytest.mark.parametrize(
    "augment,fragment",
    [
        ({"time_masks": -1}, "augment.time_masks"),
        ({"time_masks": 1.5}, "augment.time_masks"),
        ({"freq_mask_width": 129}, "augment.freq_mask_width"),
        ({"noise_std": -0.1}, "augment.noise_std"),
        ({"roll": "yes"}, "augment.roll"),
        ({"time_stretch": 0.1}, "augment"),
        ({"time_mask_width": 385, "time_masks": 1}, "augment.time_mask_width: 385 frames exceeds"),
        ({"freq_masks": 2}, "augment.freq_masks: 2 masks of width 0"),
    ],
)
def test_config_refuses_bad_augmentation_naming_the_key(augment, fragment):
    message = _error(_config(augment))
    assert f"config key method.nets.{PRESET}.{fragment}" in message, message


def test_time_mask_width_is_checked_against_the_run_presets_excerpt():
    """The demo's excerpt is 192 frames: a width of 200 fits the paper's 384, not the demo's."""
    augment = {"time_masks": 1, "time_mask_width": 200}
    resolve_settings(_config(augment))
    assert "method.excerpt_frames: 192" in _error(_config(augment, run_preset="demo"))


# --------------------------------------------------------------------------- a chain's own


def test_a_chains_augment_acts_in_its_fine_tuning_only():
    """chains.<name>.augment: the chain's fine-tuning jobs augment (every key resolved), its
    iteration 0 is the method's (shared), every other chain's jobs are as before; all keys off
    in a chain removes the presets' fine-tuning augmentation from that chain only."""
    config = _config()
    config["chains"]["mine"] = {
        "start": "all",
        "policy": "paper",
        "augment": {"noise_std": 0.2, "roll": True},
    }
    settings = resolve_settings(config)
    plain = resolve_settings(_config())
    tuned = fit_settings(settings, PRESET, 1, chain="mine")
    assert tuned["fit"]["augment"] == {**AUGMENT_OFF, "noise_std": 0.2, "roll": True}
    assert fit_settings(settings, PRESET, 0, chain="mine") == fit_settings(plain, PRESET, 0)
    method = fit_settings(settings, PRESET, 1, chain="self_verification")
    assert method == fit_settings(plain, PRESET, 1, chain="self_verification")
    assert "augment" not in method["fit"]
    job = TrainingJob.from_settings(
        tuned, manifest_csv=None, folds_csv=None, classes_csv=None, fold=0, out_dir=None
    )
    assert job.fit.augment == AugmentSettings(noise_std=0.2, roll=True)
    # the presets augment fine-tuning; a chain with every key off does not
    config = _config({"noise_std": 0.3, "fine_tuning": True})
    config["chains"]["mine"] = {
        "start": "all",
        "policy": "paper",
        "augment": {"time_masks": 0, "roll": False},
    }
    both = resolve_settings(config)
    assert fit_settings(both, PRESET, 1, chain="self_verification")["fit"]["augment"]["noise_std"] == 0.3
    assert "augment" not in fit_settings(both, PRESET, 1, chain="mine")["fit"]
    assert CONFIG["chains"]["augmented"]["augment"] and "augmented" not in CONFIG["run_chains"]


@pytest.mark.parametrize(
    "augment,iterations,fragment",
    [
        ({"time_stretch": 0.1}, 3, "chains.mine.augment: Unevaluated properties are not allowed"),
        ({"fine_tuning": True}, 3, "chains.mine.augment: Unevaluated properties are not allowed"),
        ({"noise_std": -1}, 3, "chains.mine.augment.noise_std"),
        (
            {"time_masks": 1, "time_mask_width": 385},
            3,
            "chains.mine.augment.time_mask_width: 385 frames exceeds",
        ),
        ({"freq_masks": 1}, 3, "chains.mine.augment.freq_masks: 1 masks of width 0"),
        ({"roll": True}, 0, "chains.mine.augment: acts in fine-tuning only"),
    ],
)
def test_config_refuses_a_bad_chain_augment_naming_the_key(augment, iterations, fragment):
    config = _config()
    config["chains"]["mine"] = {"start": "all", "policy": "paper", "augment": augment}
    config["run_chains"] = ["self_verification", "mine"]
    config["method"]["self_verification"]["iterations"] = iterations
    message = _error(config)
    assert f"config key {fragment}" in message, message
