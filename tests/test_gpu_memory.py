"""The GPU memory model (workflow_lib/gpu_memory.py) against the tensors' own sizes.

On the CPU: a real bank's bytes, a real network's parameters, gradients, fused-Adam state and
best copy, and the storages autograd saves in a forward pass (counted with saved-tensor hooks,
each storage once) for a tiny net and for the paper's width-48 preset. With a GPU, the last
test compares a training epoch's torch.cuda.max_memory_allocated with the model (skipped here:
no GPU has run it yet).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_lib.data import ClipBank
from workflow_lib.gpu_memory import (
    BOOL,
    NetShape,
    bank_bytes,
    dropout_mask_bytes,
    frames_of_seconds,
    jobs_that_fit,
    network_bytes,
    saved_activation_bytes,
    training_job_bytes,
)
from workflow_lib.model import build_model
from workflow_lib.preprocess import SpectrogramStore

from conftest import REPO


def store_of(lengths: list[int]) -> SpectrogramStore:
    """An in-memory one-shard store of random clips of the given frame counts."""
    rng = np.random.default_rng(0)
    array = rng.normal(size=(int(sum(lengths)), 128)).astype(np.float32)
    offsets = np.cumsum(lengths) - np.asarray(lengths)
    rows = [
        {"fname": f"c{i}.wav", "status": "clipped", "shard": 0, "n_frames": int(n), "offset": int(o)}
        for i, (n, o) in enumerate(zip(lengths, offsets))
    ]
    return SpectrogramStore(pd.DataFrame(rows), {0: array})


def test_bank_bytes_are_the_banks_own_bytes():
    """ClipBank.from_store cuts every clip at the length fix; the model counts the same."""
    lengths = [5, 80, 120, 300, 400, 17]
    store = store_of(lengths)
    bank = ClipBank.from_store(store, [f"c{i}.wav" for i in range(len(lengths))], 200)
    held = sum(t.nbytes for t in (bank.frames_major, bank.offsets, bank.lengths))
    assert bank_bytes(lengths, 200) == held
    assert bank_bytes(lengths, 1000) > held  # the cut matters


@pytest.mark.parametrize("version, hop", [(1, 192), (2, 128)])
def test_frames_per_second_are_the_spectrograms(version, hop):
    """frames_of_seconds against the spectrogram functions themselves at 32 kHz (within one
    frame: version 2 frames from the first sample, version 1 centres its frames)."""
    from workflow_lib.spectrograms import compute_spectrogram

    samples = np.random.default_rng(1).normal(size=32000 * 3 // 2).astype(np.float32)
    frames = compute_spectrogram(version, samples, 32000).shape[-1]
    assert abs(int(frames_of_seconds(np.array([1.5]), 32000, hop)[0]) - frames) <= 1


def test_network_and_adam_bytes_are_the_tensors():
    """Parameters, buffers, gradients, fused Adam's moments and steps, the best copy."""
    model = build_model(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    model(torch.randn(2, 1, 128, 192)).sum().backward()
    optimizer.step()
    modelled = network_bytes(4, 3)
    assert modelled.parameters == sum(p.nbytes for p in model.parameters())
    assert modelled.buffers == sum(b.nbytes for b in model.buffers())
    grads = sum(p.grad.nbytes for p in model.parameters())
    adam = sum(t.nbytes for state in optimizer.state.values() for t in state.values())
    best = sum(v.detach().clone().nbytes for v in model.state_dict().values())
    assert modelled.training_state == modelled.weights + grads + adam + best


def saved_per_excerpt(model: torch.nn.Module, time: int, autocast: bool) -> int:
    """Bytes autograd saves per excerpt: the difference between batches of 2 and 1 (what does
    not grow with the batch, e.g. the weights' bf16 copies, cancels), each storage once."""

    def saved(batch: int) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
            model(torch.randn(batch, 1, 128, time))
        return sum(storages.values())

    return saved(2) - saved(1)


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("width, time", [(4, 192), (48, 384)], ids=["tiny", "paper-width-48"])
def test_saved_activations_are_what_autograd_saves(width, time, autocast):
    """Per excerpt, exactly: the paper's vgg_gap_spec1_1 width at its 384-frame excerpt, and a
    tiny net; float32 and bf16 autocast (the CUDA path's precision, on the CPU)."""
    torch.manual_seed(0)
    model = build_model(width, 41).train()
    activation = 2 if autocast else 4
    modelled = saved_activation_bytes(model, time, activation, dropout_mask_bytes("cpu", activation))
    assert modelled == saved_per_excerpt(model, time, autocast)
    assert dropout_mask_bytes("cuda", activation) == BOOL


def test_jobs_that_fit_divides_the_card_by_a_jobs_share():
    """A training job of the paper's width 64 on 7,000 clips of 3,000 frames takes over 10 GB
    (bank alone: 7,000 x 3,000 x 128 x 4 bytes); it fits once in 16e9 bytes' worth of jobs..."""
    net = NetShape(64, 41, 100, 384, 3000)
    job = training_job_bytes(net, [3000] * 7000, [3000] * 900)
    assert job.banks > 7000 * 3000 * 128 * 4
    assert jobs_that_fit(job, job.on_card) == 1
    assert jobs_that_fit(job, 3 * job.on_card - 1) == 2
    assert jobs_that_fit(job, job.on_card - 1) == 0


def test_readme_table_is_the_scripts():
    """README "On a GPU workstation" prints the table of benchmarks/gpu_memory_table.py."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_memory_table import table
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    readme = (REPO / "README.md").read_text()
    for line in table():
        assert line in readme, line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_training_peak_on_cuda_is_modelled(tmp_path):
    """A training epoch's torch.cuda.max_memory_allocated is within 25 % of the model (the
    model adds no margin; the allocator's rounding and cuDNN workspaces are the difference)."""
    from workflow_lib.training import CheckpointPolicy, FitSettings, RunOptions, fit

    device = torch.device("cuda")
    rng = np.random.default_rng(0)
    lengths = rng.integers(200, 3000, size=400)
    store = store_of(list(lengths))
    names = [f"c{i}.wav" for i in range(len(lengths))]
    train = ClipBank.from_store(store, names[:300], 3000, device)
    valid = ClipBank.from_store(store, names[300:], 3000, device)
    settings = FitSettings(1, 1e-3, 1, 100, 384, 0.3, 0, 32, True)
    torch.cuda.reset_peak_memory_stats(device)
    fit(
        build_model(32, 41).to(device),
        train,
        rng.integers(0, 41, 300),
        valid,
        rng.integers(0, 41, 100),
        settings,
        tmp_path / "resume.pt",
        "fp",
        options=RunOptions(CheckpointPolicy(epochs=1, minutes=None)),
    )
    measured = torch.cuda.max_memory_allocated(device)
    modelled = training_job_bytes(NetShape(32, 41, 100, 384, 3000), lengths[:300], lengths[300:]).allocated
    assert measured == pytest.approx(modelled, rel=0.25)
