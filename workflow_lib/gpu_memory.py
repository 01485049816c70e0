"""How many bytes a training, self-verification or prediction job puts on its device.

``compute.jobs_per_gpu`` lets several jobs share one GPU; whether they fit depends on what each
holds. A job's device memory is

* the spectrogram bank (:class:`workflow_lib.data.ClipBank`): float32 (frames, 128) per clip,
  each clip cut at the length fix (3,000 frames), plus an int64 offset and length per clip;
* the network: parameters, and in training their gradients, Adam's two moments (plus a step
  counter per tensor) and the best epoch's copy (a state_dict clone, batch-norm statistics
  included: see training.fit);
* activations: what autograd saves for the backward pass, per training excerpt, walked layer
  by layer (:func:`saved_activation_bytes`), plus the largest layer's input and output at once
  while it is computed (:func:`largest_step_bytes`); in inference only the latter.

Every term is computed from the network's layer list and the tensor sizes; tests check each
against the tensors' own sizes on the CPU (``nbytes`` of a real bank, of a real model and
optimizer after a step, and the storages autograd saves, counted with saved-tensor hooks).
On CUDA, ``torch.cuda.max_memory_allocated`` is compared by ``benchmarks/gpu_check.py`` and by a
test that runs where a GPU is present. Not modelled, stated where it matters: the CUDA context
of every process (outside PyTorch's allocator), cuDNN's workspaces and the caching allocator's
fragmentation, covered by :data:`CONTEXT_BYTES` and :data:`ALLOCATOR_MARGIN` (assumptions, not
measurements: no GPU has run this code yet).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .model import build_model
from .preprocess import N_BINS

FLOAT32, INT64, BOOL = 4, 8, 1
#: Per-process CUDA context + cuBLAS/cuDNN handles; an assumption (typically 0.3-1 GiB).
CONTEXT_BYTES = 1 * 2**30
#: Caching-allocator and cuDNN-workspace headroom on top of the modelled peak (assumption).
ALLOCATOR_MARGIN = 1.2


def bank_bytes(n_frames: Sequence[int] | np.ndarray, frames: int) -> int:
    """Bytes of a ClipBank of clips of ``n_frames`` frames each, cut at ``frames``."""
    kept = np.minimum(np.asarray(n_frames, dtype=np.int64), frames)
    return int(kept.sum()) * N_BINS * FLOAT32 + 2 * INT64 * len(kept)


def frames_of_seconds(seconds: np.ndarray, sample_rate: int, hop: int) -> np.ndarray:
    """Spectrogram frames of clips of ``seconds`` length (one frame per hop, plus one)."""
    return np.floor(np.asarray(seconds) * sample_rate / hop).astype(np.int64) + 1


@dataclass(frozen=True)
class NetworkBytes:
    """A network's bytes on the device, by role."""

    parameters: int  # trainable tensors
    buffers: int  # batch-norm running statistics and counters
    n_parameter_tensors: int

    @property
    def weights(self) -> int:
        """What an inference job holds per network."""
        return self.parameters + self.buffers

    @property
    def training_state(self) -> int:
        """Weights + gradients + Adam (two moments, a float32 step per tensor) + the best copy."""
        adam = 2 * self.parameters + FLOAT32 * self.n_parameter_tensors
        return self.weights + self.parameters + adam + self.weights


def network_bytes(width: int, n_classes: int) -> NetworkBytes:
    """From the network built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = build_model(width, n_classes)
    params = list(model.parameters())
    return NetworkBytes(
        sum(p.numel() * p.element_size() for p in params),
        sum(b.numel() * b.element_size() for b in model.buffers()),
        len(params),
    )


def _output_shape(layer: nn.Module, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(channels, frequency, time) after a convolution or pooling layer; others keep it."""
    channels, height, width = shape
    if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
        kernel, stride, padding = (
            torch.nn.modules.utils._pair(v) for v in (layer.kernel_size, layer.stride, layer.padding)
        )
        height = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
        width = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
        channels = layer.out_channels if isinstance(layer, nn.Conv2d) else channels
    return channels, height, width


def layer_shapes(model: nn.Module, time: int) -> list[tuple[nn.Module, tuple, tuple]]:
    """(layer, input shape, output shape) per excerpt, for a (1, 128, time) input."""
    shape, rows = (1, N_BINS, time), []
    for layer in model.features:
        out = _output_shape(layer, shape)
        rows.append((layer, shape, out))
        shape = out
    return rows


def dropout_mask_bytes(device: str | torch.device, activation_bytes: int) -> int:
    """Bytes per element of dropout's saved mask: the activation's dtype on the CPU (measured,
    tests/test_gpu_memory.py), bool on CUDA (PyTorch's CUDA kernel; not measured here)."""
    return BOOL if torch.device(device).type == "cuda" else activation_bytes


def saved_activation_bytes(model: nn.Module, time: int, activation_bytes: int, mask_bytes: int) -> int:
    """Bytes autograd keeps per excerpt of ``time`` frames for the backward pass.

    What each layer saves (PyTorch's derivatives): a convolution its input (under autocast the
    cast copy, so the float32 excerpt is saved as a bf16 copy), batch norm its input, an
    in-place ReLU its output (the batch norm's output, modified in place), max pooling its
    input and int64 indices of its output, dropout its mask (``mask_bytes`` per element:
    :func:`dropout_mask_bytes`). A tensor saved by two layers (a ReLU's output feeding pooling
    or a convolution) counts once.
    """
    total, saved = 0, False
    for layer, shape, out in layer_shapes(model, time):
        elements, out_elements = math.prod(shape), math.prod(out)
        if isinstance(layer, nn.Conv2d | nn.BatchNorm2d | nn.ReLU | nn.MaxPool2d) and not saved:
            total += elements * activation_bytes
        if isinstance(layer, nn.MaxPool2d):
            total += out_elements * INT64
        elif isinstance(layer, nn.Dropout):
            total += elements * mask_bytes
        saved = isinstance(layer, nn.ReLU)  # in place: the next layer gets the saved tensor
    return total


def largest_step_bytes(model: nn.Module, time: int, activation_bytes: int) -> int:
    """Input + output of the largest layer per example: what one layer holds while it runs."""
    return max(
        (math.prod(shape) + math.prod(out)) * activation_bytes for _, shape, out in layer_shapes(model, time)
    )


@dataclass(frozen=True)
class JobBytes:
    """A job's modelled device bytes, by part (PyTorch allocations: max_memory_allocated)."""

    job: str
    banks: int
    networks: int
    activations: int

    @property
    def allocated(self) -> int:
        return self.banks + self.networks + self.activations

    @property
    def on_card(self) -> int:
        """What the job takes of a card: allocator margin and the CUDA context added."""
        return math.ceil(self.allocated * ALLOCATOR_MARGIN) + CONTEXT_BYTES


@dataclass(frozen=True)
class NetShape:
    """What of a preset decides its memory: width, classes, batches, excerpt and clip length."""

    width: int
    n_classes: int
    batch_size: int
    excerpt_frames: int
    frames: int  # the length fix
    eval_batch_size: int = 32
    amp_bytes: int = 2  # bf16 activations under autocast; 4 in full precision
    mask_bytes: int = BOOL  # dropout_mask_bytes(device, amp_bytes)

    def model(self) -> nn.Module:
        with torch.device("meta"):
            return build_model(self.width, self.n_classes)


def _inference_bytes(net: NetShape, clips: int, time: int) -> int:
    """A no-grad forward of ``clips`` inputs of ``time`` frames: the float32 gathered input,
    its cast copy and the largest layer's input + output."""
    model = net.model()
    per_clip = N_BINS * time * (FLOAT32 + net.amp_bytes) + largest_step_bytes(model, time, net.amp_bytes)
    return clips * per_clip


def training_job_bytes(net: NetShape, train_frames: Sequence[int], valid_frames: Sequence[int]) -> JobBytes:
    """A training (initial or fine-tuning) job: both banks, the training state, and the larger
    of a training step (saved activations + the largest layer running) and a validation batch."""
    model = net.model()
    per_excerpt = (
        saved_activation_bytes(model, net.excerpt_frames, net.amp_bytes, net.mask_bytes)
        + largest_step_bytes(model, net.excerpt_frames, net.amp_bytes)
        + N_BINS * net.excerpt_frames * (2 * FLOAT32 + net.amp_bytes)  # gather, mixup, cast
    )
    step = net.batch_size * per_excerpt
    validation = _inference_bytes(net, net.eval_batch_size, net.frames)
    banks = bank_bytes(train_frames, net.frames) + bank_bytes(valid_frames, net.frames)
    targets = INT64 * len(train_frames)
    training_state = network_bytes(net.width, net.n_classes).training_state
    return JobBytes("training", banks + targets, training_state, max(step, validation))


def self_verify_job_bytes(
    net: NetShape, clip_frames: Sequence[int], n_models: int, excerpts_per_call: int = 256
) -> JobBytes:
    """A self-verification job: every fold's judged and verified clips (the whole training
    set), the fold models, and batches of ``excerpts_per_call`` excerpts."""
    weights = n_models * network_bytes(net.width, net.n_classes).weights
    activations = _inference_bytes(net, excerpts_per_call, net.excerpt_frames)
    return JobBytes("self-verification", bank_bytes(clip_frames, net.frames), weights, activations)


def predict_job_bytes(
    net: NetShape, test_frames: Sequence[int], valid_frames: Sequence[int], n_models: int
) -> JobBytes:
    """A prediction job: the test bank, two validation banks at once (the next fold's is built
    before the last one is dropped), the fold models and a batch of whole clips."""
    weights = n_models * network_bytes(net.width, net.n_classes).weights
    banks = bank_bytes(test_frames, net.frames) + 2 * bank_bytes(valid_frames, net.frames)
    return JobBytes("prediction", banks, weights, _inference_bytes(net, net.eval_batch_size, net.frames))


def jobs_that_fit(job: JobBytes, card_bytes: int) -> int:
    """How many such jobs one card holds at once (compute.jobs_per_gpu), 0: not even one."""
    return card_bytes // job.on_card


#: FSDKaggle2018 as docs/method.md describes it: 9,473 training clips of 0.3-30 s (3,710
#: verified), 1,600 scored test clips, 4 folds, 32 kHz; spectrogram hops per version.
FSDKAGGLE2018 = {"train": 9473, "verified": 3710, "test": 1600, "folds": 4, "min_s": 0.3, "max_s": 30.0}
SAMPLE_RATE = 32000
HOP_OF_VERSION = {1: 192, 2: 128}
#: How the clip lengths spread over 0.3-30 s (the spec gives the range, not the distribution):
#: evenly, or every clip at least as long as the length fix (the bank's upper bound).
LENGTH_ASSUMPTIONS = ("uniform 0.3-30 s", "all >= length fix")


def fsdkaggle2018_seconds(n_clips: int, assumption: str) -> np.ndarray:
    """Clip lengths under one of :data:`LENGTH_ASSUMPTIONS` (deterministic: evenly spaced)."""
    if assumption == LENGTH_ASSUMPTIONS[0]:
        return np.linspace(FSDKAGGLE2018["min_s"], FSDKAGGLE2018["max_s"], n_clips)
    if assumption == LENGTH_ASSUMPTIONS[1]:
        return np.full(n_clips, FSDKAGGLE2018["max_s"])
    raise ValueError(f"unknown length assumption {assumption!r}; one of {LENGTH_ASSUMPTIONS}")


def fsdkaggle2018_jobs(net: NetShape, version: int, assumption: str) -> list[JobBytes]:
    """The three job kinds of one preset on an FSDKaggle2018-sized dataset (one fold held out:
    3/4 of the clips train, the held-out fold's verified clips validate)."""
    d = FSDKAGGLE2018
    frames = frames_of_seconds(
        fsdkaggle2018_seconds(d["train"], assumption), SAMPLE_RATE, HOP_OF_VERSION[version]
    )
    held_out = np.arange(d["train"]) % d["folds"] == 0
    valid = frames[held_out][: d["verified"] // d["folds"]]
    test = frames_of_seconds(
        fsdkaggle2018_seconds(d["test"], assumption), SAMPLE_RATE, HOP_OF_VERSION[version]
    )
    return [
        training_job_bytes(net, frames[~held_out], valid),
        self_verify_job_bytes(net, frames, d["folds"]),
        predict_job_bytes(net, test, valid, d["folds"]),
    ]
