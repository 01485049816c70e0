"""The training step's CUDA path, run on the CPU wherever PyTorch allows it.

No GPU has run this code yet and CI has none, so every branch a CUDA job takes is switched on
for a CPU run through :class:`workflow_lib.training.DeviceFeatures`: bf16 autocast, the
channels-last layout and fused Adam (PyTorch >= 2.4 has all three on the CPU), torch.compile,
and the sampler generator's state through a checkpoint and a resume. What cannot run here:
``cudnn.benchmark`` (no cuDNN on a CPU) and ``torch.cuda.get_rng_state`` (it initialises CUDA);
both are single calls behind a device check in training.py, marked there.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from workflow_lib.data import ClipBank
from workflow_lib.model import build_model
from workflow_lib.task import MULTI, SINGLE
from workflow_lib.training import (
    CheckpointPolicy,
    DeviceFeatures,
    FitSettings,
    RunOptions,
    _is_channels_last,
    evaluate,
    fit,
    make_optimizer,
)

N_CLASSES = 3
FRAMES, EXCERPT = 256, 192
#: What a CUDA job gets (DeviceFeatures.for_device("cuda")), less cudnn.benchmark.
CUDA_PATH_ON_CPU = DeviceFeatures(
    amp_dtype=torch.bfloat16, channels_last=True, fused_adam=True, cudnn_benchmark=False
)


def band_bank(per_class: int, seed: int) -> tuple[ClipBank, np.ndarray]:
    """Class c: energy in frequency bins [10 + 40c, 30 + 40c) over noise; random lengths."""
    rng = np.random.default_rng(seed)
    parts, labels = [], []
    for c in range(N_CLASSES):
        for _ in range(per_class):
            clip = rng.normal(0, 0.3, (128, int(rng.integers(20, 90)))).astype(np.float32)
            clip[10 + 40 * c : 30 + 40 * c] += 2.0
            parts.append(clip)
            labels.append(c)
    lengths = np.array([p.shape[1] for p in parts])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    frames_major = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1).T))
    bank = ClipBank(frames_major, torch.from_numpy(offsets), torch.from_numpy(lengths), FRAMES)
    return bank, np.array(labels)


def multi_hot(labels: np.ndarray) -> np.ndarray:
    """Each clip's own class plus the next one (a two-label set)."""
    targets = np.zeros((len(labels), N_CLASSES), dtype=np.float32)
    targets[np.arange(len(labels)), labels] = 1
    targets[np.arange(len(labels)), (labels + 1) % N_CLASSES] = 1
    return targets


def settings(epochs: int = 1, mixup: float | None = 0.3) -> FitSettings:
    return FitSettings(
        epochs=epochs,
        lr=1e-3,
        constant_epochs=epochs,
        batch_size=6,
        excerpt_frames=EXCERPT,
        mixup_alpha=mixup,
        seed=5,
        eval_batch_size=4,
    )


class DtypeProbe:
    """Records the output dtype of the model's second convolution in training and eval mode,
    and whether its input arrived in channels-last layout."""

    def __init__(self, model: torch.nn.Module) -> None:
        conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1]
        self.seen: set[tuple[bool, torch.dtype, bool]] = set()
        conv.register_forward_hook(self._record)

    def _record(self, module, inputs, output) -> None:
        layout = inputs[0].is_contiguous(memory_format=torch.channels_last)
        self.seen.add((module.training, output.dtype, layout))


def train_once(tmp_path: Path, features: DeviceFeatures | None, case: dict, epochs: int = 1):
    """One fit of a width-4 net (the checkpoint at tmp_path/case/resume.pt), and its probe."""
    train_bank, labels = band_bank(4, seed=1)
    valid_bank, valid_labels = band_bank(2, seed=2)
    multi = case.get("multi_label", False)
    targets = multi_hot(labels) if multi else labels
    valid_targets = multi_hot(valid_labels) if multi else valid_labels
    weights = np.linspace(0.5, 1.0, len(labels)) if case.get("weighted") else None
    torch.manual_seed(0)
    model = build_model(4, N_CLASSES, dropout=(0.05, 0.1))
    probe = DtypeProbe(model)
    state = fit(
        model,
        train_bank,
        targets,
        valid_bank,
        valid_targets,
        settings(epochs, case.get("mixup")),
        tmp_path / "resume.pt",
        "fp",
        options=RunOptions(CheckpointPolicy(epochs=1, minutes=None), features=features),
        train_weights=weights,
        task=MULTI if multi else SINGLE,
    )
    return model, state, probe


CASES = {
    "single-label-mixup": {"mixup": 0.3},
    "single-label-weighted": {"mixup": None, "weighted": True},
    "multi-label-mixup": {"mixup": 0.3, "multi_label": True},
    "multi-label-weighted-mixup": {"mixup": 0.3, "multi_label": True, "weighted": True},
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_an_epoch_on_the_cuda_path_under_bf16_autocast(tmp_path, case):
    """A whole epoch (training + validation) with bf16 autocast, channels-last and fused Adam,
    on the CPU: finite losses, bf16 activations in both modes, the layout kept, Adam fused; the
    bf16 validation loss is the float32 one of the same weights (bf16 keeps 8 bits of
    mantissa), and the training loss near that of the float32 run of the same draws (looser:
    Adam's normalised steps and batch norm over 6 examples amplify the rounding)."""
    model, state, probe = train_once(tmp_path / "bf16", CUDA_PATH_ON_CPU, case)
    row = state.history[-1]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["valid_loss"])
    assert {(True, torch.bfloat16, True), (False, torch.bfloat16, True)} == probe.seen
    assert _is_channels_last(model)
    assert all(p.dtype == torch.float32 for p in model.parameters()), "autocast keeps fp32 weights"
    saved = torch.load(tmp_path / "bf16" / "resume.pt", map_location="cpu", weights_only=False)
    assert saved["optimizer"]["param_groups"][0]["fused"] is True
    _, reference, plain_probe = train_once(tmp_path / "fp32", None, case)
    assert {mode_dtype[:2] for mode_dtype in plain_probe.seen} == {
        (True, torch.float32),
        (False, torch.float32),
    }, "the CPU default stays full precision"
    valid_bank, valid_labels = band_bank(2, seed=2)
    valid_targets = multi_hot(valid_labels) if case.get("multi_label") else valid_labels
    task = MULTI if case.get("multi_label") else SINGLE
    full = evaluate(model, valid_bank, valid_targets, 4, True, task)
    assert row["valid_loss"] == pytest.approx(full["valid_loss"], rel=0.02)
    assert row["train_loss"] == pytest.approx(reference.history[-1]["train_loss"], rel=0.2)


def test_resume_on_the_cuda_path_continues_the_sampler_stream(tmp_path):
    """Checkpoint + resume with the CUDA features on: a run stopped after epoch 2 of 3 and
    resumed from resume.pt (the sampler generator's state, Adam's fused state, the best copy)
    ends as the uninterrupted run does, bit for bit."""
    case = {"mixup": 0.3}
    model, straight, _ = train_once(tmp_path / "straight", CUDA_PATH_ON_CPU, case, epochs=3)
    stopped = tmp_path / "stopped"

    class Stop(Exception):
        pass

    def stop_after_two(history) -> None:
        if len(history) == 2:
            raise Stop

    train_bank, labels = band_bank(4, seed=1)
    valid_bank, valid_labels = band_bank(2, seed=2)
    options = RunOptions(CheckpointPolicy(epochs=1, minutes=None), features=CUDA_PATH_ON_CPU)

    def run(on_epoch=None):
        torch.manual_seed(0)
        net = build_model(4, N_CLASSES, dropout=(0.05, 0.1))
        args = (net, train_bank, labels, valid_bank, valid_labels, settings(3), stopped / "resume.pt", "fp")
        return net, fit(*args, on_epoch=on_epoch, options=options)

    with pytest.raises(Stop):
        run(stop_after_two)
    saved = torch.load(stopped / "resume.pt", map_location="cpu", weights_only=False)
    assert saved["state"]["epoch"] == 2
    sampler_state = saved["state"]["sampler_state"]
    assert isinstance(sampler_state, torch.Tensor) and sampler_state.dtype == torch.uint8
    resumed_model, resumed = run()
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for got, want in zip(resumed.history, straight.history):
        assert {k: v for k, v in got.items() if k != "seconds"} == {
            k: v for k, v in want.items() if k != "seconds"
        }
    for key, tensor in model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], tensor), key


def test_the_sampler_stream_depends_on_its_restored_state(tmp_path):
    """The resume test above can fail: with the generator's state left at the seed, the third
    epoch draws other batches and excerpts than the uninterrupted run."""
    from workflow_lib.training import DeviceSampler

    sampler = DeviceSampler(5, torch.device("cpu"))
    first = sampler.permutation(12)
    state = sampler.get_state()
    second = sampler.permutation(12)
    fresh = DeviceSampler(5, torch.device("cpu"))
    assert torch.equal(fresh.permutation(12), first)
    fresh.set_state(state)
    assert torch.equal(fresh.permutation(12), second)
    assert not torch.equal(first, second)


def test_one_epoch_through_torch_compile(tmp_path, monkeypatch):
    """compute.compile: a whole epoch (training and the whole-clip validation) through
    torch.compile gives the eager run's figures.

    The backend is aot_eager, not the default inductor: inductor's C++ code generation took
    77 s of CPU for this width-4 net on the 2-core development machine (57 s training graph,
    20 s evaluation graph), over this suite's budget. aot_eager runs the same TorchDynamo
    capture and AOTAutograd forward/backward split that inductor gets; only inductor's kernel
    generation is left out (it runs on a GPU first, in benchmarks/gpu_check.py --compile).
    """
    graphs = []
    real_compile = torch.compile
    backend = torch._dynamo.lookup_backend("aot_eager")

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return backend(graph_module, example_inputs)

    monkeypatch.setattr(torch, "compile", lambda module: real_compile(module, backend=counting_backend))
    torch._dynamo.reset()
    case = {"mixup": 0.3}
    train_bank, labels = band_bank(4, seed=1)
    valid_bank, valid_labels = band_bank(2, seed=2)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(4, N_CLASSES, dropout=(0.05, 0.1))
        options = RunOptions(CheckpointPolicy(epochs=1, minutes=None), compile=compiled)
        out = tmp_path / f"compiled_{compiled}.pt"
        state = fit(
            model,
            train_bank,
            labels,
            valid_bank,
            valid_labels,
            settings(1, case["mixup"]),
            out,
            "fp",
            options=options,
        )
        results.append(state.history[-1])
    torch._dynamo.reset()
    assert len(graphs) >= 2, "training and evaluation graphs were compiled"
    eager, compiled_row = results
    for key in ("train_loss", "train_acc", "valid_loss", "valid_acc"):
        assert compiled_row[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-5), key


def test_features_are_derived_from_the_device_and_fused_adam_follows_them():
    """The default is unchanged: the CUDA set on CUDA (bf16 where supported), none on the CPU;
    make_optimizer's fused flag follows the features, on the CPU too."""
    assert DeviceFeatures.for_device("cpu") == DeviceFeatures()
    cuda = DeviceFeatures.for_device("cuda:1", bf16_supported=True)
    assert cuda == DeviceFeatures(torch.bfloat16, True, True, True)
    assert DeviceFeatures.for_device("cuda", bf16_supported=False).amp_dtype == torch.float16
    assert RunOptions().features_for("cpu") == DeviceFeatures()
    assert RunOptions(features=cuda).features_for("cpu") is cuda
    # compute.cudnn_benchmark false: the CUDA set less the tuning, every other feature kept
    untuned = RunOptions(features=cuda, cudnn_benchmark=False).features_for("cuda")
    assert untuned == replace(cuda, cudnn_benchmark=False)
    model = build_model(4, N_CLASSES)
    assert not make_optimizer(model, 1e-3, torch.device("cpu")).defaults.get("fused")
    fused = make_optimizer(model, 1e-3, torch.device("cpu"), replace(DeviceFeatures(), fused_adam=True))
    assert fused.defaults["fused"] is True
