"""The file formats a tagger bundle holds its network in: one registry entry per format.

:data:`EXPORT_FORMATS` maps a format's name (its ``BUNDLE_FILES`` role, the tagger's
``--backend`` value) to how it is written (:attr:`ExportFormat.save`, by the export job) and
how it is run (:attr:`ExportFormat.load`, by the tagger and by the export's own check, so
what is checked is what a user runs). The export writes every registered format and checks
each against the eager network (workflow_lib/export.py); the tagger offers each as a backend.

Adding a format: a ``BUNDLE_FILES`` entry (workflow_lib/bundle.py: the file name, covered by
the checksum manifest), a save and a load function and an entry here, a test, a line in the
docs. Like the tagger, this module imports no torch at module level (an ONNX bundle tags
without it): the functions that need torch import it inside.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import BUNDLE_FILES
from .tagger_spec import Backend, TaggerSpec, TaggingError, torch_backend, torch_device

#: The ONNX opset of exported files (17: onnxruntime >= 1.11 runs it).
ONNX_OPSET = 17


@dataclass(frozen=True)
class ExportFormat:
    """One bundle file format: ``save(tagger, spec, path)`` writes the network (an eager
    torch module, export.FusedTagger) to ``path``; ``load(path, spec, device)`` returns a
    :data:`Backend` running the file, or raises :class:`TaggingError` with why it cannot."""

    name: str
    save: Callable[[Any, TaggerSpec, Path], None]
    load: Callable[[Path, TaggerSpec, str], Backend]

    def check(self, bundle: Path, spec: TaggerSpec, inputs: list[np.ndarray], expected: np.ndarray) -> float:
        """Largest posterior difference of this format's file in ``bundle`` from ``expected``
        (the eager network's outputs on ``inputs``)."""
        got = bundle_backend(bundle, spec, self.name, "cpu")(inputs)
        return float(np.abs(got - expected).max())


def example_inputs(spec: TaggerSpec, batch: int = 2, frames: int | None = None, seed: int = 0) -> tuple:
    """Random spectrogram batches, one per input (for tracing and the export check)."""
    # torch: not at module level, so the ONNX backend runs without it
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 1, spec.n_bins, frames or spec.frames)
    return tuple(torch.rand(shape, generator=generator) * 4 for _ in spec.versions)


def save_torchscript(tagger: Any, spec: TaggerSpec, path: Path) -> None:
    """Traced TorchScript: the network is fully convolutional, so any time length works."""
    # torch: not at module level, so the ONNX backend runs without it
    import torch

    from .io import atomic_path

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # torch >= 2.10 says so
        traced = torch.jit.trace(tagger.eval(), example_inputs(spec), check_trace=False)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))


def save_onnx(tagger: Any, spec: TaggerSpec, path: Path) -> None:
    """ONNX with dynamic batch and time axes (the TorchScript-based exporter: no onnxscript)."""
    # torch: not at module level, so the ONNX backend runs without it
    import torch

    from .io import atomic_path

    axes = {name: {0: "batch", 3: f"time_{name}"} for name in spec.input_names}
    axes["posteriors"] = {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            tagger.eval(),
            example_inputs(spec),
            buffer,
            dynamo=False,
            input_names=spec.input_names,
            output_names=["posteriors"],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
        )
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_torchscript(path: Path, spec: TaggerSpec, device: str) -> Backend:
    """The TorchScript file on ``device`` (torch)."""
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


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor an ONNX graph or function holds: initialisers (sparse ones too) and node
    attributes, through subgraphs (If, Loop, Scan bodies)."""
    yield from getattr(graph, "initializer", ())
    for sparse in getattr(graph, "sparse_initializer", ()):
        yield from (sparse.values, sparse.indices)
    for attribute in (a for node in graph.node for a in node.attribute):
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        sparse_tensors = [*attribute.sparse_tensors]
        sparse_tensors += [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        for sparse in sparse_tensors:
            yield from (sparse.values, sparse.indices)
        for subgraph in [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]:
            yield from _tensors(subgraph)


def refuse_external_data(path: Path) -> bytes:
    """The bytes of an ONNX file, refused if its tensors live in other files ("external data").

    The export writes every weight into ``tagger.onnx`` itself, so the checksum manifest covers
    the whole network. A file that names external data did not come from this workflow's
    export, and its weights would come from files the manifest does not cover (onnxruntime
    itself refuses paths outside the file's folder). Parsed with ``onnx`` without reading any
    external file; the caller gives onnxruntime these very bytes, so what runs is what was
    checked (the file is read once, and cannot change between the check and the load).
    """
    try:
        import onnx  # a base dependency; the tagger imports it only for an ONNX backend
    except ImportError:
        raise TaggingError(
            "the ONNX backend needs onnx, a dependency of this package: pip install -e ."
        ) from None
    try:
        data = path.read_bytes()
        model = onnx.load_model_from_string(data)
    except Exception as error:  # noqa: BLE001 - OSError, or protobuf's own classes for damage
        raise TaggingError(f"{path} cannot be loaded as an ONNX model: {str(error)[:300]}") from None
    graphs = [model.graph, *model.functions]
    named = sorted(
        {tensor.name or "(unnamed)" for graph in graphs for tensor in _tensors(graph)
         if tensor.data_location == onnx.TensorProto.EXTERNAL}
    )  # fmt: skip
    if named:
        raise TaggingError(
            f"{path} keeps tensors {named[:5]} in external data files: this workflow's export "
            "never does, and the bundle's checksums would not cover them; refused"
        )
    return data


def load_onnx(path: Path, spec: TaggerSpec, device: str) -> Backend:
    """The ONNX file in onnxruntime (no torch), checked against the spec's inputs and classes
    (and refused if it keeps weights outside itself: :func:`refuse_external_data`)."""
    model = refuse_external_data(path)
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
        session = onnxruntime.InferenceSession(model, providers=providers)
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


#: Every format a bundle holds, in the order the export writes them (name: ``BUNDLE_FILES``
#: role and ``--backend`` value).
EXPORT_FORMATS: dict[str, ExportFormat] = {
    "torchscript": ExportFormat("torchscript", save_torchscript, load_torchscript),
    "onnx": ExportFormat("onnx", save_onnx, load_onnx),
}


def bundle_backend(bundle: Path, spec: TaggerSpec, kind: str, device: str) -> Backend:
    """The exported network in format ``kind`` (:data:`EXPORT_FORMATS`)."""
    path = bundle / BUNDLE_FILES[kind]
    if not path.is_file():
        raise TaggingError(f"{path} is missing: the bundle has no {kind} file")
    return EXPORT_FORMATS[kind].load(path, spec, device)
