"""Test-time augmentation at prediction (method.tta_shifts): circularly time-shifted copies of
each whole spectrogram averaged; 0 (the default) leaves the predict job's settings and its
posteriors as they were."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml

from workflow_lib.config import ConfigError, resolve_settings
from workflow_lib.data import ClipBank
from workflow_lib.job_settings import prediction_settings
from workflow_lib.model import build_model
from workflow_lib.task import MULTI, SINGLE
from workflow_lib.training import predict_whole, tta_offsets

from conftest import REPO


def test_offsets_are_spread_evenly_over_the_clip():
    assert tta_offsets(200, 0) == [0]
    assert tta_offsets(200, 3) == [0, 50, 100, 150]
    assert tta_offsets(300, 2) == [0, 100, 200]


@pytest.mark.parametrize("task", [SINGLE, MULTI])
def test_shifted_posteriors_are_the_average_over_the_rolled_copies(task):
    torch.manual_seed(0)
    model = build_model(4, 3, (0.0, 0.0)).eval()
    frames, n = 200, 3
    bank = ClipBank(torch.randn(n * frames, 128), torch.arange(n) * frames, torch.full((n,), frames), frames)
    plain = predict_whole(model, bank, 2, amp=False, task=task)
    assert np.array_equal(plain, predict_whole(model, bank, 2, amp=False, task=task, shifts=0))
    shifted = predict_whole(model, bank, 2, amp=False, task=task, shifts=2)
    whole = bank.whole(torch.arange(n))
    with torch.no_grad():
        copies = [task.activation(model(whole.roll(k, dims=-1))) for k in (0, 67, 133)]
    np.testing.assert_allclose(shifted, torch.stack(copies).mean(0).numpy(), atol=1e-6)
    assert not np.allclose(shifted, plain, atol=1e-6)


@pytest.fixture(scope="module")
def base_config() -> dict:
    return {**yaml.safe_load((REPO / "config.yaml").read_text()), "run_preset": "paper"}


def test_the_predict_settings_carry_tta_only_when_it_is_on(base_config):
    plain = prediction_settings(resolve_settings(base_config))
    assert set(plain) == {"frames", "batch_size", "device"}
    config = copy.deepcopy(base_config)
    config["method"]["tta_shifts"] = 4
    assert prediction_settings(resolve_settings(config)) == {**plain, "tta_shifts": 4}
    del config["method"]["tta_shifts"]  # a config written before the key: off
    assert prediction_settings(resolve_settings(config)) == plain


def test_a_negative_shift_count_is_refused(base_config):
    config = copy.deepcopy(base_config)
    config["method"]["tta_shifts"] = -1
    with pytest.raises(ConfigError, match="tta_shifts"):
        resolve_settings(config)
