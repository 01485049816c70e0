"""Generate the synthetic demo dataset in the FSDKaggle2018 layout (or, multi-label, 2019).

Clearly different synthetic sound classes, lengths from 0.3 s to 6 s (so the 3,000-frame
length fix both tiles and cuts), leading and trailing digital silence (so SoX has work to
do), a verified part and an unverified part whose labels are wrong for a known fraction, the
true labels kept in ``train_true_labels.csv``, and a test set with Public and Private usage.
Seeded: the same settings give byte-identical files.

The multi-label demo (:func:`generate_multilabel_demo_dataset`, for ``dataset.layout:
fsdkaggle2019``; :data:`GENERATORS` picks one by task) mixes pairs of these sounds with
:mod:`workflow_lib.mixtures`: as many training and test clips as the single-label demo, each
labelled with both of its classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from .io import atomic_path, write_csv, write_json
from .mixtures import MixtureSettings, write_mixture_dataset
from .noisy_dataset import corrupt_labels
from .task import MULTI, SINGLE, Task, task_named

Generator = Callable[[np.random.Generator, np.ndarray, int], np.ndarray]


def _tone(freq_lo: float, freq_hi: float) -> Generator:
    def make(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
        return np.sin(2 * np.pi * rng.uniform(freq_lo, freq_hi) * t)

    return make


def _chirp(start: float, stop: float) -> Generator:
    def make(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
        f0, f1 = start * rng.uniform(0.8, 1.2), stop * rng.uniform(0.8, 1.2)
        duration = max(t[-1], 1e-3)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * duration))
        return np.sin(phase)

    return make


def _noise_bursts(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    gate = (np.floor(t * rng.uniform(4, 8)) % 2 == 0).astype(np.float64)
    return rng.standard_normal(t.size) * gate * 0.5


def _clicks(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    """Knocks: 40 ms decaying noise bursts, 6-12 per second (long enough for SoX to keep)."""
    period = max(int(sr / rng.uniform(6, 12)), 1)
    phase = np.arange(t.size) % period / sr
    return rng.standard_normal(t.size) * np.exp(-phase / 0.01) * (phase < 0.04)


def _harmonic(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    f0 = rng.uniform(120, 220)
    return sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 9)) / 2


def _am_tone(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(4, 8) * t))
    return envelope * np.sin(2 * np.pi * rng.uniform(900, 1100) * t)


def _brown_noise(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    walk = np.cumsum(rng.standard_normal(t.size))
    walk -= np.convolve(walk, np.ones(64) / 64, mode="same")
    return walk / (np.abs(walk).max() + 1e-9)


def _hiss(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    return np.diff(rng.standard_normal(t.size + 1)) * 0.3


def _fm_tone(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    depth, rate = rng.uniform(200, 400), rng.uniform(2, 4)
    return np.sin(2 * np.pi * 800 * t + depth / rate * np.sin(2 * np.pi * rate * t))


def _dual_tone(rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    return 0.5 * (np.sin(2 * np.pi * 697 * t) + np.sin(2 * np.pi * 1477 * t))


SOUND_CLASSES: dict[str, Generator] = {
    "low_tone": _tone(180, 320),
    "high_tone": _tone(2500, 3500),
    "chirp_up": _chirp(300, 4000),
    "chirp_down": _chirp(4000, 300),
    "noise_bursts": _noise_bursts,
    "click_train": _clicks,
    "buzz": _harmonic,
    "tremolo": _am_tone,
    "rumble": _brown_noise,
    "hiss": _hiss,
    "siren": _fm_tone,
    "dial_tone": _dual_tone,
}


def synthesize_clip(label: str, rng: np.random.Generator, settings: Mapping[str, Any]) -> np.ndarray:
    """One clip: a sound of log-uniform length with digital silence before and after."""
    sr = settings["sample_rate"]
    seconds = np.exp(rng.uniform(np.log(settings["min_seconds"]), np.log(settings["max_seconds"])))
    t = np.arange(int(seconds * sr)) / sr
    sound = SOUND_CLASSES[label](rng, t, sr)
    sound = sound / (np.abs(sound).max() + 1e-9) * rng.uniform(0.1, 0.8)
    fade = min(len(t) // 10, int(0.01 * sr))
    if fade:
        ramp = np.linspace(0, 1, fade)
        sound[:fade] *= ramp
        sound[-fade:] *= ramp[::-1]
    pad = [np.zeros(int(rng.uniform(0, settings["max_silence_seconds"]) * sr)) for _ in range(2)]
    return np.concatenate([pad[0], sound, pad[1]]).astype(np.float32)


def _stratified_flags(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mark round(fraction * n_c) clips of each class."""
    flags = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        flags[members[: int(round(fraction * len(members)))]] = True
    return flags


def _write_audio(folder: Path, names: list[str], labels: np.ndarray, rng, settings) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, label in zip(names, labels):
        with atomic_path(folder / name) as tmp:
            sf.write(
                str(tmp),
                synthesize_clip(label, rng, settings),
                settings["sample_rate"],
                subtype="PCM_16",
                format="WAV",
            )


def _unique_names(rng: np.random.Generator, count: int) -> list[str]:
    codes = rng.choice(16**8, size=count * 2, replace=False)[:count]
    return [f"{code:08x}.wav" for code in codes]


def generate_demo_dataset(out_dir: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Write the demo dataset to ``out_dir``; return a summary (also written as JSON)."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(settings["seed"])
    classes = list(SOUND_CLASSES)[: settings["n_classes"]]
    n_train, n_test = settings["train_clips_per_class"], settings["test_clips_per_class"]
    names = _unique_names(rng, len(classes) * (n_train + n_test))
    train_true = np.repeat(classes, n_train)
    test_labels = np.repeat(classes, n_test)
    train_names, test_names = names[: len(train_true)], names[len(train_true) :]

    verified = _stratified_flags(train_true, settings["verified_fraction"], rng)
    given = train_true.copy()
    unverified = np.flatnonzero(~verified)
    given[unverified] = corrupt_labels(list(train_true[unverified]), settings["noise_rate"], classes, rng)
    public = _stratified_flags(test_labels, settings["public_fraction"], rng)

    _write_audio(out_dir / "audio_train", train_names, train_true, rng, settings)
    _write_audio(out_dir / "audio_test", test_names, test_labels, rng, settings)
    write_csv(
        pd.DataFrame({"fname": train_names, "label": given, "manually_verified": verified.astype(int)}),
        out_dir / "train.csv",
    )
    write_csv(
        pd.DataFrame({"fname": train_names, "true_label": train_true}), out_dir / "train_true_labels.csv"
    )
    write_csv(
        pd.DataFrame(
            {"fname": test_names, "label": test_labels, "usage": np.where(public, "Public", "Private")}
        ),
        out_dir / "test_post_competition.csv",
    )
    summary = {
        "classes": classes,
        "n_train": len(train_names),
        "n_verified": int(verified.sum()),
        "n_unverified": int(len(unverified)),
        "n_wrong_labels": int((given != train_true).sum()),
        "n_test": len(test_names),
        "n_public": int(public.sum()),
        "settings": dict(settings),
    }
    write_json(summary, out_dir / "demo_info.json")
    return summary


def generate_multilabel_demo_dataset(out_dir: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Write the multi-label demo (FSDKaggle2019 layout) to ``out_dir``; return its summary.

    Two synthetic sources per mixture, so ``train_clips_per_class`` x ``n_classes`` training
    mixtures (curated: ``verified_fraction``; one label wrong in ``noise_rate`` of the noisy
    ones) and likewise for the test. Each source is synthesised when mixed, from its own seed.
    """
    classes = list(SOUND_CLASSES)[: settings["n_classes"]]
    n_train, n_test = 2 * settings["train_clips_per_class"], 2 * settings["test_clips_per_class"]
    labels = np.repeat(classes, n_train + n_test)
    sources = pd.DataFrame({"fname": [f"source_{i:05d}" for i in range(len(labels))], "label": labels})
    sources["group"] = ""

    def load(fname: str) -> tuple[np.ndarray, int]:
        index = int(fname.rsplit("_", 1)[1])
        rng = np.random.default_rng([settings["seed"], index])
        return synthesize_clip(labels[index], rng, settings), settings["sample_rate"]

    mixing = MixtureSettings(
        test_fraction=n_test / (n_train + n_test),
        public_fraction=settings["public_fraction"],
        curated_fraction=settings["verified_fraction"],
        noise_rate=settings["noise_rate"],
        seed=settings["seed"],
    )
    extra = {"demo_settings": dict(settings)}
    return write_mixture_dataset(
        out_dir, sources, load, mixing, overwrite=True, info_name="demo_info.json", info_extra=extra
    )


#: The demo of each task: its generator writes the layout of that task's dataset
#: (``dataset_layouts.LAYOUTS``, ``demo_listings``).
GENERATORS: dict[str, Callable[[Path, Mapping[str, Any]], dict[str, Any]]] = {
    SINGLE.name: generate_demo_dataset,
    MULTI.name: generate_multilabel_demo_dataset,
}


@dataclass(frozen=True)
class DemoDataJob:
    """The demo-data job (rule demo_dataset): where to write, the ``demo_data`` settings of
    the synthesis, and the task whose demo to write (job settings key ``task``, absent for
    single-label: ``job_settings.demo_data_settings``)."""

    out_dir: Path
    synthesis: Mapping[str, Any] = field(default_factory=dict)
    task: Task = SINGLE

    @classmethod
    def from_settings(cls, out_dir: Path, settings: Mapping[str, Any]) -> DemoDataJob:
        """The job of the rule's settings; ``task`` is no synthesis setting, so it is left out
        of the summary (demo_info.json stays as it was before tasks existed)."""
        synthesis = dict(settings)
        task = task_named(synthesis.pop("task", SINGLE.name))
        return cls(out_dir=Path(out_dir), synthesis=synthesis, task=task)


def demo_data_job(job: DemoDataJob) -> dict[str, Any]:
    """Write the demo dataset of the job's task; return its summary."""
    return GENERATORS[job.task.name](job.out_dir, job.synthesis)
