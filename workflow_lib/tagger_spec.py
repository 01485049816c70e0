"""What a tagger is besides its input pipeline: its spec, its error and the torch backend that
runs its network (the run's fold models; an exported bundle's files are run by the formats of
workflow_lib/export_formats.py).

Shared by :mod:`workflow_lib.tagger` (which tags with them) and :mod:`workflow_lib.export`
(which builds the spec of a run and checks its exported files with the very backends the tagger
will use); kept apart from both so that neither imports the other. Like the tagger, it imports
no torch at module level: the ONNX backend runs without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .bundle import BUNDLE_FILES, read_bundle_classes, read_bundle_settings, verify_manifest
from .errors import UserError
from .task import SINGLE, Task, task_of_saved

Backend = Callable[[list[np.ndarray]], np.ndarray]


class TaggingError(UserError):
    """The tagger cannot start (bad options, an incomplete bundle or run)."""


@dataclass(frozen=True)
class TaggerSpec:
    """Everything besides the weights that tagging needs; a bundle's preprocessing.json.

    ``versions`` lists the spectrogram versions in the order of the network's inputs
    (``spec_v{version}``); ``presets`` describes the fused models (name, spectrogram, width,
    iteration, folds, weight) for the model card and for checks. ``task``: for the multi-label
    task the outputs are independent per-class probabilities, and a clip is tagged with every
    class whose probability reaches a threshold (``--threshold``); preprocessing.json says so
    with the key of :meth:`Task.saved_marker` (single-label bundles say nothing).
    """

    classes: list[str]
    sample_rate: int
    sox_effects: list[str]
    frames: int
    versions: list[int]
    fusion: str
    presets: list[dict] = field(default_factory=list)
    n_bins: int = 128
    spectrograms: str = "fast"  # preprocessing.spectrograms of the run (fast | reference)
    task: Task = SINGLE  # MULTI: per-class sigmoid outputs (dataset layout fsdkaggle2019)

    @property
    def input_names(self) -> list[str]:
        return [f"spec_v{v}" for v in self.versions]

    def settings_json(self) -> dict:
        """The JSON written to preprocessing.json (the classes go to classes.csv)."""
        data = asdict(self)
        data.pop("classes")
        data.pop("task")
        data.update(self.task.saved_marker())  # single-label bundles are written as before
        data["inputs"] = [
            {"name": name, "version": v, "shape": ["batch", 1, self.n_bins, "time"]}
            for name, v in zip(self.input_names, self.versions)
        ]
        data["output"] = {"name": "posteriors", "shape": ["batch", len(self.classes)]}
        return data

    @classmethod
    def from_bundle(cls, bundle: Path) -> TaggerSpec:
        """The spec of an exported bundle, an untrusted folder: its checksum manifest, then
        every field of preprocessing.json and classes.csv are checked (workflow_lib/bundle.py)."""
        settings_path = bundle / BUNDLE_FILES["settings"]
        classes_path = bundle / BUNDLE_FILES["classes"]
        for path in (settings_path, classes_path):
            if not path.is_file():
                raise TaggingError(
                    f"{bundle} is not a tagger bundle: {path.name} is missing "
                    "(write one with `python -m workflow_lib.cli export`)"
                )
        verify_manifest(bundle)
        data = read_bundle_settings(settings_path)
        classes = read_bundle_classes(classes_path, data["output"]["shape"][1])
        known = {f for f in cls.__dataclass_fields__ if f not in ("classes", "task")}
        fields = {k: v for k, v in data.items() if k in known}
        return cls(classes=classes, task=task_of_saved(data), **fields)


def torch_device(device: str):
    """The torch device ``--device`` names (auto: CUDA when torch sees one)."""
    # torch: not at module level, so the ONNX backend runs without it
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise TaggingError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


def torch_backend(module, device) -> Backend:
    """Run a torch module (eager or TorchScript) taking one tensor per version."""
    # torch: not at module level, so the ONNX backend runs without it
    import torch

    def run(inputs: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = module(*[torch.from_numpy(x).to(device) for x in inputs])
        return out.float().cpu().numpy()

    return run
