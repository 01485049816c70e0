"""Spectrogram augmentation of training excerpts, on the device (issue 21, item 1).

Not part of the paper's method (docs/method.md "Beyond the paper", "Augmentation"): the paper
used mixup only. A net preset switches it on with ``method.nets.<preset>.augment``; the
training step (:func:`workflow_lib.training._run_epoch`) calls :func:`augment` on each batch of
excerpts, before mixup, and so does consistency training (:mod:`workflow_lib.consistency`:
two draws of one excerpt).

Every random number is drawn from the training step's seeded generator
(:class:`workflow_lib.training.DeviceSampler`, whose state is checkpointed), so a run is
deterministic for its seed and a killed job resumes exactly. The draws happen where the data
lives: on CUDA no host copy, no synchronisation. A step that is off draws nothing, so settings
that are all zero leave the generator's stream, and so the run, as it was without them.

The four steps, in this order (each per example):

- roll: a circular shift along time by a uniform 0 ... frames - 1 (the excerpt is cut from a
  tiled clip, so a roll only moves where the seam falls);
- noise: additive Gaussian noise of standard deviation ``noise_std`` times the example's own
  standard deviation (over its bins and frames): the two spectrogram versions differ in scale
  (version 1 in dB, version 2 in log10(1 + |X|)), so one value means the same signal-to-noise
  ratio for both;
- time masks: ``time_masks`` bands of all bins, each of a width uniform in
  0 ... ``time_mask_width`` frames at a uniform start where it fits (SpecAugment);
- frequency masks: the same across all frames, ``freq_masks`` bands of up to
  ``freq_mask_width`` bins.

A masked value is the example's mean (before augmentation), not 0: the spectrograms are not
standardised (version 1's dB values are far from 0), so 0 would be an extreme value that the
network could learn to detect; SpecAugment's zero is the mean of its normalised input. Masks
come last, so a masked band is exactly that constant, without noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

#: The mapping keys of :class:`AugmentSettings` (what a job's ``fit.augment`` holds).
AUGMENT_KEYS = ("time_masks", "time_mask_width", "freq_masks", "freq_mask_width", "noise_std", "roll")


class Draws(Protocol):
    """What :func:`augment` draws from: :class:`workflow_lib.training.DeviceSampler`."""

    def integers(self, high: int, shape: tuple[int, ...]) -> torch.Tensor: ...

    def below(self, high: torch.Tensor) -> torch.Tensor: ...

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor: ...


@dataclass(frozen=True, kw_only=True)
class AugmentSettings:
    """One net preset's augmentation (config ``method.nets.<preset>.augment``, less
    ``fine_tuning``, which only decides whether a fine-tuning job gets it)."""

    time_masks: int = 0
    time_mask_width: int = 0  # frames
    freq_masks: int = 0
    freq_mask_width: int = 0  # bins
    noise_std: float = 0.0  # in units of the example's standard deviation
    roll: bool = False

    @property
    def masks(self) -> bool:
        """True when there is a mask to draw (it needs a count and a width)."""
        return self.time_masks * self.time_mask_width + self.freq_masks * self.freq_mask_width > 0

    @property
    def active(self) -> bool:
        """True when a step changes anything."""
        return self.masks or self.noise_std > 0 or self.roll

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, value: AugmentSettings | dict[str, Any] | None) -> AugmentSettings | None:
        """From a job's ``fit.augment`` (``job_settings.augment_settings``: the keys of
        :data:`AUGMENT_KEYS`; an unknown key is an error, not ignored); None when absent or
        inactive, so "off" has one representation."""
        settings = cls(**value) if isinstance(value, dict) else value
        return settings if settings is not None and settings.active else None


def augment(inputs: torch.Tensor, settings: AugmentSettings, sampler: Draws) -> torch.Tensor:
    """An augmented copy of a batch of excerpts (batch, 1, bins, frames), drawn from ``sampler``
    (roll, noise, time masks, frequency masks: see the module docstring); ``inputs`` is left
    as it is, so a caller can draw two augmentations of the same excerpts."""
    _check_fits(inputs, settings)
    std, mean = _moments(inputs, settings.noise_std > 0, settings.masks)
    out = inputs
    if settings.roll:
        out = roll_time(out, sampler.integers(inputs.shape[-1], (len(inputs),)))
    if settings.noise_std > 0:  # in place on the fresh noise: one full-size temporary
        noise = sampler.normal(tuple(inputs.shape), inputs.dtype)
        out = noise.mul_((settings.noise_std * std).view(-1, 1, 1, 1).to(inputs.dtype)).add_(out)
    masked = _masked(inputs, settings, sampler)
    if masked is None:
        return out if out is not inputs else inputs.clone()
    return torch.where(masked, mean.view(-1, 1, 1, 1).to(inputs.dtype), out)


def _moments(inputs: torch.Tensor, std: bool, mean: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(standard deviation, mean) of each example over its bins and frames, each only when
    asked (a pass over the batch costs as much as a mask)."""
    flat = inputs.float().flatten(1)
    if std and mean:
        return torch.std_mean(flat, dim=1, correction=0)
    if std:
        return flat.std(dim=1, correction=0), None
    return None, flat.mean(dim=1) if mean else None


def _masked(inputs: torch.Tensor, settings: AugmentSettings, sampler: Draws) -> torch.Tensor | None:
    """The union of the time and frequency masks, broadcastable to ``inputs`` (time first, so
    the stream of draws is fixed by the settings); None when there are no masks."""
    count, bins, frames = len(inputs), inputs.shape[-2], inputs.shape[-1]
    masked = None
    if settings.time_masks > 0 and settings.time_mask_width > 0:
        bands = band_mask(sampler, count, settings.time_masks, settings.time_mask_width, frames)
        masked = bands[:, None, None, :]
    if settings.freq_masks > 0 and settings.freq_mask_width > 0:
        bands = band_mask(sampler, count, settings.freq_masks, settings.freq_mask_width, bins)
        masked = bands[:, None, :, None] if masked is None else masked | bands[:, None, :, None]
    return masked


def _check_fits(inputs: torch.Tensor, settings: AugmentSettings) -> None:
    """A mask wider than the excerpt is a configuration error (the config check refuses it
    first; this guards a direct call)."""
    if inputs.dim() != 4:
        shape = tuple(inputs.shape)
        raise ValueError(f"augment expects (batch, 1, bins, frames) excerpts, got shape {shape}")
    bins, frames = inputs.shape[-2:]
    if settings.time_mask_width > frames or settings.freq_mask_width > bins:
        raise ValueError(
            f"augment: mask widths ({settings.time_mask_width} frames, {settings.freq_mask_width} bins) "
            f"exceed the excerpt ({frames} frames, {bins} bins)"
        )


def roll_time(inputs: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Each example rolled along time by its own shift, as ``torch.roll`` (frame t moves to
    t + shift, modulo the length), in one gather."""
    frames = inputs.shape[-1]
    steps = torch.arange(frames, device=inputs.device)
    source = (steps[None, :] - shifts[:, None]) % frames
    return inputs.gather(-1, source[:, None, None, :].expand(inputs.shape))


def band_mask(sampler: Draws, count: int, masks: int, max_width: int, size: int) -> torch.Tensor:
    """(count, size) booleans: per row, the union of ``masks`` bands, each of a width uniform
    in 0 ... ``max_width`` at a start uniform among those where it fits (0 ... size - width)."""
    widths = sampler.integers(max_width + 1, (count, masks))
    starts = sampler.below(size - widths + 1)
    positions = torch.arange(size, device=widths.device).view(1, 1, -1)
    inside = (positions >= starts[..., None]) & (positions < (starts + widths)[..., None])
    return inside.any(dim=1)
