"""The training loop: excerpts, mixup, soft-target cross-entropy, Adam, schedule, validation.

The task (:class:`workflow_lib.task.Task`, passed as ``task=``) decides the targets, the
activation, the loss, the validation scores and which epoch is kept; what is a function here
(the losses, the two validations) is chosen by ``task.name`` from :data:`OBJECTIVES`. For
label sets (:data:`~workflow_lib.task.MULTI`, dataset layout fsdkaggle2019) the targets are
multi-hot rows, the loss is binary cross-entropy on per-class sigmoids (mixup mixes the
multi-hot targets the same way), validation adds ``valid_lwlrap`` and the kept epoch is the one
with the highest validation lwlrap (:meth:`Task.improves`).

Used for both stages of docs/method.md: initial training (all clips of the fold, mixup, 500
epochs) and fine-tuning (verified + self-verified clips, no mixup, 30 epochs).

Checkpoints follow a policy (:class:`CheckpointPolicy`, config ``compute.checkpoint_every``):
every N epochs or M minutes, whichever comes first, and always after the last epoch. A
checkpoint holds the whole state (model, optimizer, random generators, history, best
parameters), written atomically, so a killed job resumes from its last checkpoint and ends with
the same result as an uninterrupted run. Between checkpoints the best parameters stay on the
training device (no copy to the host per improved epoch).

Randomness of a training step (batch order, excerpt starts, augmentation, mixup weights)
comes from one seeded ``torch.Generator`` on the training device (:class:`DeviceSampler`): on
CUDA a step makes no host-to-device copy and no synchronisation. The generator's state is
checkpointed. Augmentation (:mod:`workflow_lib.augment`, ``FitSettings.augment``) is not the
paper's and is off unless a net preset sets it; nor is consistency training
(:mod:`workflow_lib.consistency`, ``FitSettings.consistency``, :func:`_consistency_loss`), off
unless a chain sets it for its fine-tuning jobs; nor are mixup in fine-tuning and mixup partners
drawn from other clips than the batch's (chain option ``mixup``, ``FitSettings.mixup_partners``,
:class:`MixupPartners`: the fold's unverified training clips under their given labels).
On CUDA a job also enables ``cudnn.benchmark``, the channels-last layout and fused Adam;
``compute.compile`` adds torch.compile (off by default: not measured yet).

Each of these device-dependent choices is a capability of :class:`DeviceFeatures`, derived from
the device (:meth:`DeviceFeatures.for_device`) unless ``RunOptions.features`` sets it, so the
tests switch the CUDA path's bf16 autocast, channels-last layout and fused Adam on for a CPU
run (tests/test_gpu_paths.py). What cannot run without a GPU says so beside it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentSettings, augment
from .consistency import ConsistencySettings, consistency_loss, rampup
from .data import ClipBank
from .io import UNREADABLE_ERRORS, atomic_path, read_parameter_file, set_aside
from .metrics import accuracy, lwlrap, map_at_3
from .soft_targets import SoftRelabelSettings
from .task import MULTI, SINGLE, Task

log = logging.getLogger(__name__)

#: Single-label history.csv columns (``task.history_columns`` gives each task's; with label
#: sets the losses are BCE, accuracy = top-1 label in the true set, MAP@3 = reciprocal rank of
#: the first true label in the top 3, plus ``valid_lwlrap``).
HISTORY_COLUMNS = list(SINGLE.history_columns)


CHECKPOINT_FORMAT = 2  # 1: numpy generator state (before device-side sampling)


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to write a checkpoint: after ``epochs`` epochs or ``minutes`` minutes since the last
    one, whichever comes first (None: that trigger is off); always after the last epoch.

    Not part of a run's fingerprint: it decides only what a kill costs, never the result.
    """

    epochs: int | None = 25
    minutes: float | None = 30.0

    def due(self, epochs_since: int, seconds_since: float) -> bool:
        by_epochs = self.epochs is not None and epochs_since >= self.epochs
        by_time = self.minutes is not None and seconds_since >= 60.0 * self.minutes
        return by_epochs or by_time

    @classmethod
    def from_settings(cls, value: dict | None) -> CheckpointPolicy:
        """From config ``compute.checkpoint_every`` ({epochs: N|null, minutes: M|null})."""
        return cls() if value is None else cls(value.get("epochs"), value.get("minutes"))


def checkpoint_epochs(
    total_epochs: int, policy: CheckpointPolicy, seconds_per_epoch: float, start: int = 0
) -> list[int]:
    """The epochs (1-based, completed) after which :func:`fit` writes a checkpoint, for a run
    whose epochs take ``seconds_per_epoch``: the same decision rule, without training."""
    written, last_epoch, elapsed = [], start, 0.0
    for epoch in range(start + 1, total_epochs + 1):
        elapsed += seconds_per_epoch
        if epoch == total_epochs or policy.due(epoch - last_epoch, elapsed):
            written.append(epoch)
            last_epoch, elapsed = epoch, 0.0
    return written


@dataclass(frozen=True)
class DeviceFeatures:
    """The device-dependent ways a training or inference job runs, as capabilities.

    :meth:`for_device` gives the CUDA set on CUDA and none on the CPU (the default behaviour);
    a test (or a user) can build any combination, e.g. the CUDA set on the CPU, where PyTorch
    has bf16 autocast, the channels-last layout and fused Adam too.
    """

    amp_dtype: torch.dtype | None = None  # autocast dtype when FitSettings.amp; None: full precision
    channels_last: bool = False
    fused_adam: bool = False
    cudnn_benchmark: bool = False  # a no-op off CUDA: the CPU has no cuDNN to tune

    @classmethod
    def for_device(cls, device: str | torch.device, bf16_supported: bool | None = None) -> DeviceFeatures:
        """CUDA: bf16 autocast (float16 where bf16 is missing), channels-last, fused Adam and
        cudnn.benchmark; elsewhere none. ``bf16_supported`` None: ask torch.cuda."""
        if torch.device(device).type != "cuda":
            return cls()
        bf16 = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        return cls(torch.bfloat16 if bf16 else torch.float16, True, True, True)


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed, not what it computes (so not fingerprinted)."""

    checkpoint: CheckpointPolicy = CheckpointPolicy()
    compile: bool = False  # torch.compile the model (compute.compile)
    features: DeviceFeatures | None = None  # None: DeviceFeatures.for_device(the bank's device)
    # compute.cudnn_benchmark: tuning every new input shape pays for long jobs; a short job pays
    # the tuning (11.7 s of first step against 0.65 s for a demo net on an H200) and gains little.
    cudnn_benchmark: bool = True

    def features_for(self, device: str | torch.device) -> DeviceFeatures:
        features = self.features if self.features is not None else DeviceFeatures.for_device(device)
        return features if self.cudnn_benchmark else replace(features, cudnn_benchmark=False)


@dataclass(frozen=True)
class FitSettings:
    """Everything that decides a training run's result (its fingerprint guards resumption)."""

    epochs: int
    lr: float
    constant_epochs: int
    batch_size: int
    excerpt_frames: int
    mixup_alpha: float | None  # None: no mixup (fine-tuning)
    seed: int
    eval_batch_size: int = 32
    amp: bool = True
    augment: AugmentSettings | None = None  # None: off (the paper); workflow_lib/augment.py
    consistency: ConsistencySettings | None = None  # None: off; workflow_lib/consistency.py
    soft_relabel: SoftRelabelSettings | None = None  # None: off; workflow_lib/soft_targets.py
    mixup_partners: str | None = None  # None (or "batch"): the reversed batch; see MIXUP_PARTNERS

    def __post_init__(self) -> None:
        """A job's JSON gives ``augment`` and ``consistency`` as mappings; keep typed, hashable
        values, and None for "off" however it was written (all zero, or absent)."""
        object.__setattr__(self, "augment", AugmentSettings.from_mapping(self.augment))
        object.__setattr__(self, "consistency", ConsistencySettings.from_mapping(self.consistency))
        object.__setattr__(self, "soft_relabel", SoftRelabelSettings.from_mapping(self.soft_relabel))
        object.__setattr__(self, "mixup_partners", _checked_partners(self.mixup_partners, self.mixup_alpha))

    def record(self) -> dict:
        """The settings as JSON-able values, for the run's fingerprint; ``augment`` and
        ``consistency`` only when on, so the fingerprints of runs without them stay those
        written before they existed (their checkpoints still resume)."""
        fields = asdict(self)
        for optional in ("augment", "consistency", "soft_relabel", "mixup_partners"):
            if fields[optional] is None:
                fields.pop(optional)
        if self.soft_relabel is not None:  # its default ``towards`` left out, as before it existed
            fields["soft_relabel"] = self.soft_relabel.record()
        return fields


#: Where mixup draws each excerpt's partner (chain option ``mixup.partners``): ``batch``, the
#: batch in reverse order (the paper; ``FitSettings.mixup_partners`` None), or ``unverified``,
#: a bank of the fold's training-part unverified clips with their given labels
#: (:class:`MixupPartners`).
MIXUP_PARTNERS = ("batch", "unverified")


def _checked_partners(partners: str | None, alpha: float | None) -> str | None:
    """``FitSettings.mixup_partners`` normalised (``batch`` -> None, so a job that names the
    default keeps the fingerprint of one that does not); an unknown name, or partners without a
    mixup alpha (a setting that would change nothing), is refused rather than ignored."""
    if partners is None or partners == "batch":
        return None
    if partners not in MIXUP_PARTNERS:
        raise ValueError(f"unknown mixup partners {partners!r}: use one of {list(MIXUP_PARTNERS)}")
    if alpha is None:
        raise ValueError(f"mixup partners {partners!r} need a mixup alpha (mixup is off in this job)")
    return partners


@dataclass(frozen=True)
class MixupPartners:
    """The clips mixup draws its partners from (``FitSettings.mixup_partners`` ``unverified``):
    their bank and their targets in the task's form (``task.targets``: class indices or
    multi-hot rows), one per clip of the bank."""

    bank: ClipBank
    targets: np.ndarray

    def __post_init__(self) -> None:
        """An empty bank has no partner to draw, and targets that do not match the bank would
        pair clips with other clips' labels: both are refused here."""
        if len(self.bank) == 0:
            raise ValueError("the mixup partners' bank is empty")
        if len(self.targets) != len(self.bank):
            raise ValueError(f"{len(self.targets)} partner targets for {len(self.bank)} partner clips")


@dataclass(frozen=True)
class _Partners:
    """:class:`MixupPartners` on the training device: the bank and its float target rows
    (``task.soft_targets``), made once per job instead of once per batch."""

    bank: ClipBank
    rows: torch.Tensor

    @classmethod
    def of(cls, partners: MixupPartners | None, task: Task, n_classes: int) -> _Partners | None:
        if partners is None:
            return None
        targets = task.target_tensor(partners.targets, partners.bank.device)
        return cls(partners.bank, task.soft_targets(targets, n_classes))

    def draw(
        self, count: int, settings: FitSettings, sampler: DeviceSampler
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` partners drawn uniformly with replacement, each a random excerpt
        (augmented as the batch is, before mixup), and their target rows."""
        picked = sampler.integers(len(self.bank), (count,))
        frames = settings.excerpt_frames
        inputs = self.bank.excerpts(picked, sampler.starts(count, self.bank.frames - frames + 1), frames)
        if settings.augment is not None:
            inputs = augment(inputs, settings.augment, sampler)
        return inputs, self.rows[picked.to(self.rows.device)]


def learning_rate(epoch: int, base_lr: float, constant_epochs: int, total_epochs: int) -> float:
    """Constant for ``constant_epochs`` epochs, then linear decay reaching 0 at ``total_epochs``.

    ``epoch`` counts from 0; paper: 1e-3 for epochs 0-100, 5e-4 at 300, 2.5e-6 at 499.
    """
    if epoch < constant_epochs:
        return base_lr
    return base_lr * (total_epochs - epoch) / (total_epochs - constant_epochs)


class DeviceSampler:
    """The training step's random draws, from one seeded torch.Generator on the device.

    Drawing batch order, excerpt starts, mixup weights and the augmentation's draws
    (:mod:`workflow_lib.augment`) where the data lives removes the per-step host-to-device
    copies (and their synchronisation) on CUDA. The stream depends
    only on the seed and the device type, and its state is saved in checkpoints. The code is
    the same on every device: on the CPU the generator is a CPU ``torch.Generator``, so the
    tests run the CUDA path's draws, get_state and set_state there.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def permutation(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator, device=self.device)

    def starts(self, count: int, high: int) -> torch.Tensor:
        """Uniform integers 0 ... high - 1 (excerpt starts)."""
        return torch.randint(0, high, (count,), generator=self.generator, device=self.device)

    def beta(self, alpha: float, count: int) -> torch.Tensor:
        """``count`` draws of Beta(alpha, alpha), float32 on the device.

        Beta(a, a) is the first coordinate of Dirichlet(a, a); torch's Dirichlet sampler is
        the only Beta/Gamma sampler that takes a generator. float64: with alpha 0.2 both gamma
        draws underflow in float32 often enough to give 0/0.
        """
        concentration = torch.full((count, 2), float(alpha), dtype=torch.float64, device=self.device)
        return torch._sample_dirichlet(concentration, generator=self.generator)[:, 0].float()

    def integers(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniform integers 0 ... high - 1 of ``shape`` (augmentation: roll shifts, mask widths)."""
        return torch.randint(0, int(high), shape, generator=self.generator, device=self.device)

    def below(self, high: torch.Tensor) -> torch.Tensor:
        """Per element, a uniform integer 0 ... high - 1 (``high`` >= 1, a tensor on the device):
        a mask's start where its own width fits. floor(u * high) of a float64 uniform, clamped
        (float rounding could reach ``high`` itself)."""
        u = torch.rand(high.shape, generator=self.generator, device=self.device, dtype=torch.float64)
        return torch.minimum((u * high).floor().long(), high - 1)

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws of ``shape`` (augmentation: additive noise)."""
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=dtype)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def mixup(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    sampler: DeviceSampler,
    partners: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example with its partner; lambda ~ Beta(alpha, alpha) per sample, inputs and
    targets with the same weight. The partners are the batch in reverse order (the paper), or
    ``partners``: (inputs, target rows) of the same length, e.g. unverified clips
    (:class:`MixupPartners`)."""
    lam = sampler.beta(alpha, len(inputs)).to(inputs.device)
    other, other_targets = (inputs.flip(0), targets.flip(0)) if partners is None else partners
    mixed = lam.view(-1, 1, 1, 1) * inputs + (1 - lam).view(-1, 1, 1, 1) * other
    mixed_targets = lam[:, None] * targets + (1 - lam[:, None]) * other_targets
    return mixed, mixed_targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Categorical cross-entropy against (possibly mixed) probability targets."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Soft-target cross-entropy with per-example weights (mean over examples, so a batch of
    weight-1 examples gives the plain loss); mixed examples carry their first clip's weight."""
    per_example = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return (per_example * weights).sum() / len(weights)


def binary_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-label loss: BCE of per-class sigmoids against (possibly mixed) multi-hot targets,
    averaged over classes per example, then over examples; with ``weights`` the per-example
    losses are weighted as in :func:`weighted_cross_entropy` (all 1: the plain loss)."""
    per_example = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").mean(dim=1)
    if weights is None:
        return per_example.mean()
    return (per_example * weights).sum() / len(weights)


def top1_in_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per example: the top-scored class carries the largest target weight (single-label: it is
    the target's argmax; multi-hot: it is in the set; mixed: in the dominant clip's set)."""
    picked = targets.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)
    return (picked > 0) & (picked >= targets.max(dim=1).values - 1e-6)


def autocast_for(device: torch.device, amp: bool, features: DeviceFeatures | None = None):
    """Autocast to ``features.amp_dtype`` when asked (bf16 needs no loss scaling); by default
    (``features`` None: :meth:`DeviceFeatures.for_device`) bf16 on CUDA, full precision on CPU."""
    dtype = (features if features is not None else DeviceFeatures.for_device(device)).amp_dtype
    if amp and dtype is not None:
        return torch.autocast(torch.device(device).type, dtype=dtype)
    return nullcontext()


def _is_channels_last(model: nn.Module) -> bool:
    """True when the model's convolutions are in channels-last layout (CUDA jobs).

    A kernel with one input channel is contiguous in both layouts, so look at one with more.
    """
    first = next((p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1), None)
    return (
        first is not None
        and first.is_contiguous(memory_format=torch.channels_last)
        and not first.is_contiguous()
    )


def tta_offsets(frames: int, shifts: int) -> list[int]:
    """Circular time shifts of test-time augmentation: the unshifted spectrogram and ``shifts``
    copies rolled by k * frames / (shifts + 1), k = 1 ... shifts (evenly spread over the clip,
    so no two copies coincide while shifts < frames)."""
    return [round(k * frames / (shifts + 1)) for k in range(shifts + 1)]


@torch.no_grad()
def _whole_outputs(
    model: nn.Module,
    bank: ClipBank,
    batch_size: int,
    amp: bool,
    transform,
    features: DeviceFeatures | None,
    shifts: int = 0,
) -> torch.Tensor:
    """``transform(float32 logits)`` of every clip of ``bank`` on its whole length-fixed
    spectrogram, batched, applied on the device batch by batch (returned on the host). With
    ``shifts`` > 0 (test-time augmentation): the average of the outputs of the spectrogram and
    its ``shifts`` circularly time-shifted copies (:func:`tta_offsets`); 0 runs the code of
    before, so the posteriors stay bit for bit the same."""
    model.eval()
    outputs = []
    for start in range(0, len(bank), batch_size):
        clips = torch.arange(start, min(start + batch_size, len(bank)))
        whole = bank.whole(clips)
        copies = (
            [whole] if shifts == 0 else [whole.roll(k, dims=-1) for k in tta_offsets(whole.shape[-1], shifts)]
        )
        per_copy = []
        for inputs in copies:
            if _is_channels_last(model):
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with autocast_for(bank.device, amp, features):
                logits = model(inputs)
            per_copy.append(transform(logits.float()).cpu())
        outputs.append(per_copy[0] if shifts == 0 else torch.stack(per_copy).mean(0))
    n_classes = getattr(model, "n_classes", 0)
    return torch.cat(outputs) if outputs else torch.zeros((0, n_classes))


def whole_logits(
    model: nn.Module,
    bank: ClipBank,
    batch_size: int,
    amp: bool = True,
    features: DeviceFeatures | None = None,
) -> torch.Tensor:
    """Float32 logits of every clip of ``bank`` on its whole spectrogram (on the host)."""
    return _whole_outputs(model, bank, batch_size, amp, lambda logits: logits, features)


def predict_whole(
    model: nn.Module,
    bank: ClipBank,
    batch_size: int,
    amp: bool = True,
    task: Task = SINGLE,
    features: DeviceFeatures | None = None,
    shifts: int = 0,
) -> np.ndarray:
    """Posteriors (``task.activation``: a softmax, or a sigmoid per class for label sets) of
    every clip of ``bank`` on its whole length-fixed spectrogram; ``shifts`` > 0: averaged
    with that many circularly time-shifted copies (test-time augmentation, the predict job's
    ``tta_shifts``)."""
    return _whole_outputs(model, bank, batch_size, amp, task.activation, features, shifts).numpy()


def evaluate(
    model: nn.Module,
    bank: ClipBank,
    targets: np.ndarray,
    batch_size: int,
    amp: bool,
    task: Task = SINGLE,
    features: DeviceFeatures | None = None,
) -> dict[str, float]:
    """The task's validation scores on whole clips (the verified validation clips):
    :func:`evaluate_single_label` or, ``targets`` multi-hot, :func:`evaluate_label_sets`."""
    return OBJECTIVES[task.name].evaluate(model, bank, targets, batch_size, amp, features)


def evaluate_single_label(
    model: nn.Module,
    bank: ClipBank,
    targets: np.ndarray,
    batch_size: int,
    amp: bool,
    features: DeviceFeatures | None = None,
) -> dict[str, float]:
    """Loss, accuracy and MAP@3 of class-index ``targets`` on whole clips."""
    if len(bank) == 0:
        return {"valid_loss": math.nan, "valid_acc": math.nan, "valid_map3": math.nan}
    probs = predict_whole(model, bank, batch_size, amp, features=features)
    picked = probs[np.arange(len(targets)), targets]
    return {
        "valid_loss": float(-np.log(np.clip(picked, 1e-12, None)).mean()),
        "valid_acc": accuracy(probs, targets),
        "valid_map3": map_at_3(probs, targets),
    }


def first_true_rank_score(scores: np.ndarray, truth: np.ndarray, k: int = 3) -> float:
    """MAP@3 of a label set: mean over clips of 1/rank of the first true label among the top
    ``k`` (0 if none); with one true label per clip it equals :func:`map_at_3`."""
    if len(truth) == 0:
        return math.nan
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(np.asarray(truth) > 0.5, order, axis=1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    return float((1.0 / first).mean())


def evaluate_label_sets(
    model: nn.Module,
    bank: ClipBank,
    targets: np.ndarray,
    batch_size: int,
    amp: bool,
    features: DeviceFeatures | None = None,
) -> dict[str, float]:
    """BCE, top-1-in-set accuracy, MAP@3 of the first true label and lwlrap of multi-hot
    ``targets`` on whole clips."""
    names = ["valid_loss", "valid_acc", "valid_map3", "valid_lwlrap"]
    if len(bank) == 0:
        return dict.fromkeys(names, math.nan)
    logits = whole_logits(model, bank, batch_size, amp, features)
    truth = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
    scores = MULTI.activation(logits).numpy()
    return {
        "valid_loss": float(binary_cross_entropy(logits, truth)),
        "valid_acc": float(top1_in_target(logits, truth).numpy().mean()),  # float64, as single-label
        "valid_map3": first_true_rank_score(scores, truth.numpy()),
        "valid_lwlrap": lwlrap(truth.numpy(), scores),
    }


def cross_entropy_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The single-label training loss: :func:`soft_cross_entropy`, or with per-clip ``weights``
    :func:`weighted_cross_entropy` (None keeps the plain mean, bit for bit)."""
    if weights is None:
        return soft_cross_entropy(logits, targets)
    return weighted_cross_entropy(logits, targets, weights)


def argmax_hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Single-label training accuracy count: the top-scored class is the (dominant) target."""
    return (logits.argmax(1) == targets.argmax(1)).sum()


def top1_in_set_hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Label-set training accuracy count: :func:`top1_in_target`, in float32 logits."""
    return top1_in_target(logits.float(), targets).sum()


@dataclass(frozen=True)
class Objective:
    """What training optimises and reports for one task: functions, not values, so they live
    here and not on :class:`~workflow_lib.task.Task` (which imports no torch at its top).

    loss: (logits, soft targets, per-clip weights or None) -> the batch's loss.
    hits: (detached logits, soft targets) -> the batch's count of correct top-1 classes.
    evaluate: :func:`evaluate`'s validation on whole clips.
    """

    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    hits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[..., dict[str, float]]


#: Each task's objective, by ``task.name``.
OBJECTIVES: dict[str, Objective] = {
    SINGLE.name: Objective(cross_entropy_loss, argmax_hits, evaluate_single_label),
    MULTI.name: Objective(binary_cross_entropy, top1_in_set_hits, evaluate_label_sets),
}


@dataclass
class TrainState:
    """What a checkpoint holds; enough to continue exactly where a killed job stopped."""

    epoch: int  # epochs completed
    history: list[dict]
    best_loss: float
    best_state: dict | None  # on the training device between checkpoints
    sampler_state: torch.Tensor | None  # DeviceSampler's generator
    torch_rng: torch.Tensor  # global CPU generator (dropout on CPU)
    cuda_rng: torch.Tensor | None
    fingerprint: str


def device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The device's global generator state (dropout draws on CUDA), or None on the CPU, whose
    global generator is ``TrainState.torch_rng``. The CUDA branch cannot run without a GPU:
    torch.cuda.get_rng_state initialises CUDA. The sampler's own generator is device-generic
    (:class:`DeviceSampler`) and is checkpointed on every device."""
    device = torch.device(device)
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def restore_device_rng_state(device: torch.device, state: torch.Tensor | None) -> None:
    """Inverse of :func:`device_rng_state` (a state saved on CUDA is ignored on the CPU)."""
    device = torch.device(device)
    if state is not None and device.type == "cuda":  # CUDA only, as device_rng_state
        torch.cuda.set_rng_state(state, device)


def _to_cpu(tensors: dict | None) -> dict | None:
    return None if tensors is None else {k: v.detach().cpu() for k, v in tensors.items()}


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState
) -> None:
    """Write the whole state atomically (best parameters copied to the host here, once)."""
    fields = asdict(state) | {"best_state": _to_cpu(state.best_state)}
    with atomic_path(path) as tmp:
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": fields,
            },
            tmp,
        )


def load_checkpoint(
    path: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer
) -> TrainState | None:
    """Restore a checkpoint written by the same run; ignore one from other settings or data;
    set a damaged one aside (renamed, logged) so that the job starts afresh instead of failing
    on every rerun."""
    if not path.is_file():
        return None
    try:
        saved = read_parameter_file(path)
    except UNREADABLE_ERRORS as error:  # truncated (a killed write, a full disk) or refused code
        set_aside(path, f"{type(error).__name__}: {error}")
        return None
    if saved.get("format") != CHECKPOINT_FORMAT:
        log.warning("ignoring checkpoint %s: written by an older version of this code", path)
        return None
    if saved["state"]["fingerprint"] != fingerprint:
        log.warning("ignoring checkpoint %s: written with other settings or data", path)
        return None
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return TrainState(**saved["state"])


def make_optimizer(
    model: nn.Module, lr: float, device: torch.device, features: DeviceFeatures | None = None
) -> torch.optim.Optimizer:
    """Adam; fused when ``features.fused_adam`` (default: on CUDA, one kernel launch per step
    instead of one per tensor; PyTorch >= 2.4 has the fused kernel on the CPU too)."""
    fused = (features if features is not None else DeviceFeatures.for_device(device)).fused_adam
    if fused:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    return torch.optim.Adam(model.parameters(), lr=lr)


def prepare_model(model: nn.Module, device: torch.device, options: RunOptions) -> nn.Module:
    """Move to the device in its fast layout; returns the module to call (compiled or not).

    Parameters stay those of ``model``: its state_dict is what checkpoints and best.pt hold.
    """
    device = torch.device(device)
    features = options.features_for(device)
    model.to(device)
    if features.channels_last:
        model.to(memory_format=torch.channels_last)
    if features.cudnn_benchmark and device.type == "cuda":
        # Cannot run on CPU (no cuDNN there): fixed input shapes, pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    return torch.compile(model) if options.compile else model


@dataclass(frozen=True)
class _Unlabelled:
    """What an epoch's consistency term needs besides the batch: the epoch (from 0, its
    ramp-up) and the bank of unlabelled clips (None or empty: labelled excerpts only)."""

    epoch: int
    bank: ClipBank | None = None


@dataclass(frozen=True)
class _Step:
    """What one training step of :func:`_run_epoch` shares with :func:`_consistency_loss`."""

    model: nn.Module
    sampler: DeviceSampler
    device: torch.device
    features: DeviceFeatures
    settings: FitSettings
    task: Task


def _consistency_loss(step: _Step, labelled: torch.Tensor, unlabelled: _Unlabelled) -> torch.Tensor:
    """The consistency term of a step (``settings.consistency``, workflow_lib/consistency.py):
    weight * rampup(epoch) * the mean squared difference between the task's activations
    (softmax or sigmoids) on two independent augmentations of the batch's excerpts, as cut
    before the supervised augmentation, plus, with ``unlabelled``, as many excerpts of
    unlabelled clips drawn uniformly with replacement (one per labelled excerpt: the balance
    stays fixed however many clips the policy left untrusted). Both views go through the
    network in one forward pass, so batch norm normalises them alike."""
    settings = step.settings.consistency
    frames = step.settings.excerpt_frames
    inputs, bank = labelled, unlabelled.bank
    if settings.unlabelled and bank is not None and len(bank) > 0:
        count = len(labelled)
        picked = step.sampler.integers(len(bank), (count,))
        extra = bank.excerpts(picked, step.sampler.starts(count, bank.frames - frames + 1), frames)
        inputs = torch.cat([labelled, extra])
    views = torch.cat([augment(inputs, settings.augment, step.sampler) for _ in range(2)])
    if step.features.channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    with autocast_for(step.device, step.settings.amp, step.features):
        logits = step.model(views)
    first, second = step.task.activation(logits.float()).chunk(2)
    return consistency_loss(first, second, settings.weight * rampup(unlabelled.epoch, settings.rampup_epochs))


def _batches(sampler: DeviceSampler, n_clips: int, batch_size: int) -> list[torch.Tensor]:
    """The epoch's clips in random order, cut into batches; a last batch of one clip is left
    out (batch norm and mixup need two examples)."""
    order = sampler.permutation(n_clips)
    batches = [order[i : i + batch_size] for i in range(0, n_clips, batch_size)]
    return [b for b in batches if len(b) >= 2]


def _run_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    bank: ClipBank,
    targets: torch.Tensor,
    settings: FitSettings,
    sampler: DeviceSampler,
    device: torch.device,
    n_classes: int,
    features: DeviceFeatures = DeviceFeatures(),
    weights: torch.Tensor | None = None,
    task: Task = SINGLE,
    unlabelled: _Unlabelled | None = None,
    partners: _Partners | None = None,
) -> tuple[float, float]:
    """One pass over the training clips in random order; returns (mean loss, accuracy).

    features: the layout and autocast of the step (:class:`DeviceFeatures`).
    weights: per-clip loss weights on the device (a trust policy's), or None: the plain mean.
    targets: ``task.target_tensor`` rows; the loss and the accuracy are the task's
    (:data:`OBJECTIVES`).
    unlabelled: with ``settings.consistency``, the epoch and the unlabelled clips of the
    consistency term (:func:`_consistency_loss`; the returned loss is the supervised one).
    partners: with ``settings.mixup_partners``, the clips mixup draws partners from.

    Every tensor of a step is made on the device: no host copy, no synchronisation until the
    epoch's totals are read at the end.
    """
    model.train()
    objective = OBJECTIVES[task.name]
    total_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    seen = 0
    high = bank.frames - settings.excerpt_frames + 1
    for clips in _batches(sampler, len(bank), settings.batch_size):
        inputs = raw = bank.excerpts(clips, sampler.starts(len(clips), high), settings.excerpt_frames)
        if settings.augment is not None:  # before mixup: each clip augmented on its own
            inputs = augment(inputs, settings.augment, sampler)
        soft = task.soft_targets(targets[clips], n_classes)
        if settings.mixup_alpha is not None:
            other = None if partners is None else partners.draw(len(clips), settings, sampler)
            inputs, soft = mixup(inputs, soft, settings.mixup_alpha, sampler, other)
        if features.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, settings.amp, features):
            logits = model(inputs)
        loss = objective.loss(logits, soft, None if weights is None else weights[clips])
        total = loss
        if settings.consistency is not None:
            step = _Step(model, sampler, device, features, settings, task)
            total = loss + _consistency_loss(step, raw, unlabelled or _Unlabelled(0))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        total_loss += loss.detach() * len(clips)
        correct += objective.hits(logits.detach(), soft)
        seen += len(clips)
    seen = max(seen, 1)
    return float(total_loss) / seen, float(correct) / seen


def fit(
    model: nn.Module,
    train_bank: ClipBank,
    train_targets: np.ndarray,
    valid_bank: ClipBank,
    valid_targets: np.ndarray,
    settings: FitSettings,
    checkpoint: Path,
    fingerprint: str,
    on_epoch: Callable[[pd.DataFrame], None] | None = None,
    options: RunOptions = RunOptions(),
    train_weights: np.ndarray | None = None,
    task: Task = SINGLE,
    unlabelled_bank: ClipBank | None = None,
    mixup_partners: MixupPartners | None = None,
) -> TrainState:
    """Train, validating after every epoch; keep the parameters of the best epoch
    (``task.improves``: the lowest validation loss, or for label sets the highest lwlrap).

    train_weights: per-clip loss weights (the ``weighted`` trust policy), None: unweighted.
    task: what the targets are (``task.targets``: class indices or multi-hot rows) and so the
    loss, the validation scores and the history's columns.
    unlabelled_bank: with ``settings.consistency``, the clips of its unlabelled excerpts
    (``stages.unlabelled_clips``); None: labelled excerpts only.
    mixup_partners: with ``settings.mixup_partners``, the clips mixup draws each excerpt's
    partner from (``stages.mixup_partner_clips``); required then, refused otherwise.

    Checkpoints follow ``options.checkpoint``; the last epoch always writes one, so the state
    returned is also on disk. ``state.best_state`` is returned on the host.
    """
    if (settings.mixup_partners is None) != (mixup_partners is None):
        given = "no" if mixup_partners is None else "a"
        raise ValueError(f"mixup partners {settings.mixup_partners!r} with {given} partner bank")
    device = train_bank.device
    features = options.features_for(device)
    forward = prepare_model(model, device, options)
    optimizer = make_optimizer(model, settings.lr, device, features)
    sampler = DeviceSampler(settings.seed, device)
    state = _start_or_resume(checkpoint, fingerprint, model, optimizer, sampler, device)
    targets, weights = _training_tensors(train_targets, train_weights, device, task)
    saver = _Checkpoints(checkpoint, model, optimizer, sampler, device, options.checkpoint, settings.epochs)
    saver.last_epoch = state.epoch  # a resumed run counts from its checkpoint
    classes = int(model.n_classes)
    partners = _Partners.of(mixup_partners, task, classes)
    run = _Run(
        forward, optimizer, sampler, device, classes, features, settings, task, unlabelled_bank, partners
    )
    for epoch in range(state.epoch, settings.epochs):
        row = run.epoch(epoch, train_bank, targets, weights, valid_bank, valid_targets)
        _record_epoch(state, row, model, task)
        saver.after_epoch(state)
        _log_epoch(row, settings.epochs)
        if on_epoch is not None:
            on_epoch(pd.DataFrame(state.history, columns=list(task.history_columns)))
    state.best_state = _to_cpu(state.best_state)
    return state


@dataclass(frozen=True)
class _Run:
    """What every epoch of one :func:`fit` call shares, so an epoch is one short call."""

    forward: nn.Module  # the module to call (compiled or not)
    optimizer: torch.optim.Optimizer
    sampler: DeviceSampler
    device: torch.device
    n_classes: int
    features: DeviceFeatures
    settings: FitSettings
    task: Task
    unlabelled: ClipBank | None = None  # the consistency term's unlabelled clips
    partners: _Partners | None = None  # mixup's partners (FitSettings.mixup_partners)

    def epoch(
        self,
        epoch: int,
        train_bank: ClipBank,
        targets: torch.Tensor,
        weights: torch.Tensor | None,
        valid_bank: ClipBank,
        valid_targets: np.ndarray,
    ) -> dict:
        """Train epoch ``epoch`` (from 0), then validate: its history row."""
        started = time.perf_counter()
        settings = self.settings
        lr = _set_learning_rate(self.optimizer, epoch, settings)
        train_loss, train_acc = _run_epoch(
            self.forward,
            self.optimizer,
            train_bank,
            targets,
            settings,
            self.sampler,
            self.device,
            self.n_classes,
            self.features,
            weights,
            self.task,
            _Unlabelled(epoch, self.unlabelled),
            self.partners,
        )
        scores = evaluate(
            self.forward,
            valid_bank,
            valid_targets,
            settings.eval_batch_size,
            settings.amp,
            self.task,
            self.features,
        )
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc, **scores}
        row["seconds"] = round(time.perf_counter() - started, 3)
        return row


def _start_or_resume(
    checkpoint: Path,
    fingerprint: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: DeviceSampler,
    device: torch.device,
) -> TrainState:
    """A fresh state, or the checkpoint's (same fingerprint) with its random streams restored,
    so that a resumed run continues exactly as the uninterrupted one would have."""
    state = load_checkpoint(checkpoint, fingerprint, model, optimizer)
    if state is None:
        return TrainState(0, [], math.inf, None, None, torch.get_rng_state(), None, fingerprint)
    sampler.set_state(state.sampler_state)
    torch.set_rng_state(state.torch_rng)
    restore_device_rng_state(device, state.cuda_rng)
    if state.best_state is not None:
        state.best_state = {k: v.to(device) for k, v in state.best_state.items()}
    log.info("resuming from epoch %d (checkpoint %s)", state.epoch + 1, checkpoint)
    return state


def _set_learning_rate(optimizer: torch.optim.Optimizer, epoch: int, settings: FitSettings) -> float:
    """The schedule's rate of ``epoch`` (:func:`learning_rate`), set on every parameter group."""
    lr = learning_rate(epoch, settings.lr, settings.constant_epochs, settings.epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _training_tensors(
    train_targets: np.ndarray, train_weights: np.ndarray | None, device: torch.device, task: Task
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training targets (``task.target_tensor``: class indices or multi-hot floats) and the
    per-clip loss weights on the device, once, instead of per batch."""
    targets = task.target_tensor(train_targets, device)
    weights = (
        None
        if train_weights is None
        else torch.as_tensor(np.asarray(train_weights), dtype=torch.float32, device=device)
    )
    return targets, weights


def _record_epoch(state: TrainState, row: dict, model: nn.Module, task: Task) -> None:
    """Add the epoch's history row and keep the parameters when they are the best so far
    (``task.improves``), or when there is no validation set, the last."""
    no_validation = math.isnan(row["valid_loss"])  # then the last epoch is kept
    better = task.improves(state.history, row, state.best_loss)
    state.history.append(row)
    if state.best_state is None or no_validation or better:
        state.best_loss = row["valid_loss"]
        state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.epoch = row["epoch"]


@dataclass
class _Checkpoints:
    """Writes the checkpoint after an epoch when ``policy`` says it is due, and always after the
    last epoch, with the random streams as they are then: a run resumed from it draws the same
    batches as the uninterrupted one."""

    path: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: DeviceSampler
    device: torch.device
    policy: CheckpointPolicy
    epochs: int
    last_epoch: int = 0  # the epoch and the time of the last checkpoint (or of the start)
    last_time: float = field(default_factory=time.monotonic)

    def after_epoch(self, state: TrainState) -> None:
        if state.epoch == self.epochs or self.policy.due(
            state.epoch - self.last_epoch, time.monotonic() - self.last_time
        ):
            state.sampler_state = self.sampler.get_state()
            state.torch_rng = torch.get_rng_state()
            state.cuda_rng = device_rng_state(self.device)
            save_checkpoint(self.path, self.model, self.optimizer, state)
            self.last_epoch, self.last_time = state.epoch, time.monotonic()


def _log_epoch(row: dict, epochs: int) -> None:
    """One line per epoch in the job's log: what a user watches while a long run trains."""
    log.info(
        "epoch %d/%d lr %.2e train loss %.4f acc %.3f | valid loss %.4f acc %.3f map@3 %.3f | %.1f s",
        row["epoch"],
        epochs,
        row["lr"],
        row["train_loss"],
        row["train_acc"],
        row["valid_loss"],
        row["valid_acc"],
        row["valid_map3"],
        row["seconds"],
    )
