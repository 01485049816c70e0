"""What a tagger is besides its input pipeline: its spec, its error and the backends that run
its network (the run's fold models in torch, an exported bundle's TorchScript or ONNX file).

Shared by :mod:`workflow_lib.tagger` (which tags with them) and :mod:`workflow_lib.export`
(which builds the spec of a run and checks its exported files with the very backends the tagger
will use); kept apart from both so that neither imports the other. Like the tagger, it imports
no torch at module level: the ONNX backend runs without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .bundle import BUNDLE_FILES, read_bundle_classes, read_bundle_settings, verify_manifest
from .errors import UserError

Backend = Callable[[list[np.ndarray]], np.ndarray]


class TaggingError(UserError):
    """The tagger cannot start (bad options, an incomplete bundle or run)."""


@dataclass(frozen=True)
class TaggerSpec:
    """Everything besides the weights that tagging needs; a bundle's preprocessing.json.

    ``versions`` lists the spectrogram versions in the order of the network's inputs
    (``spec_v{version}``); ``presets`` describes the fused models (name, spectrogram, width,
    iteration, folds, weight) for the model card and for checks. ``multi_label``: the outputs
    are independent per-class probabilities, and a clip is tagged with every class whose
    probability reaches a threshold (``--threshold``).
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
    multi_label: bool = False  # per-class sigmoid outputs (dataset layout fsdkaggle2019)

    @property
    def input_names(self) -> list[str]:
        return [f"spec_v{v}" for v in self.versions]

    def settings_json(self) -> dict:
        """The JSON written to preprocessing.json (the classes go to classes.csv)."""
        data = asdict(self)
        data.pop("classes")
        if not self.multi_label:  # single-label bundles are written as before
            data.pop("multi_label")
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
        known = {f for f in cls.__dataclass_fields__ if f != "classes"}
        return cls(classes=classes, **{k: v for k, v in data.items() if k in known})


def bundle_backend(bundle: Path, spec: TaggerSpec, kind: str, device: str) -> Backend:
    """The exported network: ``onnx`` (onnxruntime, no torch) or ``torchscript`` (torch)."""
    path = bundle / BUNDLE_FILES[kind]
    if not path.is_file():
        raise TaggingError(f"{path} is missing: the bundle has no {kind} file")
    if kind == "onnx":
        return _onnx_backend(path, spec, device)
    # torch: not at module level, so the ONNX backend runs without it
    import torch

    target = torch_device(device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)  # torch >= 2.10 says so
            module = torch.jit.load(str(path), map_location=target).eval()
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise TaggingError(f"{path} cannot be loaded by TorchScript: {str(error)[:300]}") from None
    return torch_backend(module, target)


def _onnx_backend(path: Path, spec: TaggerSpec, device: str) -> Backend:
    try:
        # onnxruntime: only the ONNX backend needs it; its absence gets a clear message
        import onnxruntime
    except ImportError:
        raise TaggingError(
            "the ONNX backend needs onnxruntime, a dependency of this package: "
            "pip install -e . (or pip install onnxruntime)"
        ) from None
    providers = [
        p
        for p in ("CUDAExecutionProvider",)
        if device != "cpu" and p in onnxruntime.get_available_providers()
    ] + ["CPUExecutionProvider"]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own classes
        raise TaggingError(f"{path} cannot be loaded by onnxruntime: {str(error)[:300]}") from None
    names = [i.name for i in session.get_inputs()]
    if names != spec.input_names:
        raise TaggingError(
            f"{path} takes inputs {names}, preprocessing.json says "
            f"{spec.input_names}: the bundle is inconsistent"
        )
    outputs = session.get_outputs()[0].shape
    if len(outputs) != 2 or (isinstance(outputs[1], int) and outputs[1] != len(spec.classes)):
        raise TaggingError(
            f"{path} gives outputs of shape {outputs}, classes.csv lists {len(spec.classes)} "
            "classes: the bundle is inconsistent"
        )

    def run(inputs: list[np.ndarray]) -> np.ndarray:
        return session.run(None, dict(zip(names, inputs)))[0]

    return run


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
