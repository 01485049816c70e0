"""What the workflow and the tagger share about an exported tagger, cheap to import.

The Snakefile reads these at start (rules/export.smk), so this module imports no third-party
package at module level; the tagger itself is :mod:`workflow_lib.tagger` and
:mod:`workflow_lib.export`.

A bundle is meant to be copied and shared, so reading one treats it as untrusted input: the
checksum manifest written at export must match every file (corruption, a partial copy or an
edit after export), ``preprocessing.json`` must pass ``schemas/bundle_preprocessing.schema.yaml``
and the SoX allowlist, and ``classes.csv`` must hold one non-empty, distinct label per output.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UserError

#: The files of an exported bundle (results/export/), by role.
BUNDLE_FILES = {
    "torchscript": "tagger.pt",
    "onnx": "tagger.onnx",
    "classes": "classes.csv",
    "settings": "preprocessing.json",
    "card": "model_card.md",
    "manifest": "checksums.sha256",  # sha256sum format: `sha256sum -c checksums.sha256` checks it
}
SETTINGS_SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "bundle_preprocessing.schema.yaml"
_MANIFEST_LINE = re.compile(r"([0-9a-f]{64})  (\S+)")


class BundleError(UserError):
    """An exported bundle is incomplete, changed since export, or inconsistent."""


# --------------------------------------------------------------------------- the manifest


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in blocks (a TorchScript file can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """The checksum of every other bundle file, written last by the export."""
    # numpy and pandas (io): only the export writes a manifest
    from .io import write_text

    names = [name for role, name in BUNDLE_FILES.items() if role != "manifest"]
    lines = [f"{file_sha256(folder / name)}  {name}\n" for name in names]
    write_text("".join(lines), folder / BUNDLE_FILES["manifest"])


def verify_manifest(folder: Path) -> None:
    """Refuse a bundle whose files are missing or differ from the checksums of the export.

    Detects corruption, partial copies and any edit after export (two class labels swapped,
    a changed sample rate); it does not stop someone who rewrites the manifest as well.
    """
    manifest = folder / BUNDLE_FILES["manifest"]
    if not manifest.is_file():
        raise BundleError(
            f"{manifest} is missing: the bundle cannot be checked (a partial copy, or exported "
            "before checksums existed: export it again with `python -m workflow_lib.cli export`)"
        )
    expected: dict[str, str] = {}
    known = {name for role, name in BUNDLE_FILES.items() if role != "manifest"}
    for number, line in enumerate(manifest.read_text(errors="replace").splitlines(), 1):
        match = _MANIFEST_LINE.fullmatch(line.strip())
        if not match or match.group(2) not in known:
            raise BundleError(f"{manifest} line {number}: expected '<sha256>  <bundle file name>'")
        expected[match.group(2)] = match.group(1)
    for name in sorted(known):
        path = folder / name
        if name not in expected:
            raise BundleError(f"{manifest} does not list {name}: the manifest is incomplete")
        if not path.is_file():
            raise BundleError(f"{path} is missing (a partial copy of the bundle?)")
        if file_sha256(path) != expected[name]:
            raise BundleError(
                f"{path} differs from the file the export wrote (sha256 mismatch): corrupt, "
                "truncated or edited; copy the bundle again"
            )


# --------------------------------------------------------------------------- reading


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def read_bundle_settings(path: Path) -> dict[str, Any]:
    """preprocessing.json, checked field by field (schema, SoX allowlist, inputs vs versions)."""
    # jsonschema, yaml, soundfile: only reading a bundle needs them, not the Snakefile's start
    import jsonschema
    import yaml

    from .audio import sox_effects_problems

    try:
        data = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleError(f"{path} is not valid JSON: {error}") from None
    schema = yaml.safe_load(SETTINGS_SCHEMA_PATH.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=str)
    problems = [f"field {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
    if not problems:
        problems = [f"field sox_effects: {p}" for p in sox_effects_problems(data["sox_effects"])]
        problems += _consistency_problems(data)
    if problems:
        raise BundleError(f"{path} is refused:\n  - " + "\n  - ".join(problems))
    # JSON's 3.0 passes the schema's "integer": the tagger counts and indexes with these
    return (
        data
        | {key: int(data[key]) for key in ("sample_rate", "frames", "n_bins")}
        | {"versions": [int(v) for v in data["versions"]]}
    )


def _consistency_problems(data: Mapping[str, Any]) -> list[str]:
    """Relations between fields: the inputs are the versions in order, presets use them."""
    versions = list(data["versions"])
    problems = []
    if versions != sorted(versions):
        problems.append(f"field versions: {versions} must be in ascending order")
    wanted = [
        {"name": f"spec_v{v}", "version": v, "shape": ["batch", 1, data["n_bins"], "time"]} for v in versions
    ]
    if list(data["inputs"]) != wanted:
        problems.append(f"field inputs: expected {wanted} (one per version)")
    unused = sorted({p["spectrogram"] for p in data["presets"]} - set(versions))
    if unused:
        problems.append(f"field presets: spectrogram versions {unused} are not in versions")
    return problems


def read_bundle_classes(path: Path, outputs: int) -> list[str]:
    """classes.csv (index,label), in index order: one distinct, non-empty label per output."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BundleError(f"{path} cannot be read: {error}") from None
    if not rows or set(rows[0]) != {"index", "label"}:
        raise BundleError(f"{path}: expected the columns index,label and one row per class")
    labels = {}
    for number, row in enumerate(rows, 2):
        label, index = (row.get("label") or "").strip(), (row.get("index") or "").strip()
        if not label or not index.isdigit():
            raise BundleError(f"{path} line {number}: an empty label or an index that is not 0, 1, ...")
        if label in labels.values() or int(index) in labels:
            raise BundleError(f"{path} line {number}: duplicate label {label!r} or index {index}")
        labels[int(index)] = label
    if sorted(labels) != list(range(outputs)):
        raise BundleError(
            f"{path} lists {len(labels)} classes (indices {min(labels)}..{max(labels)}); the network "
            f"has {outputs} outputs (preprocessing.json field output.shape): one row per output, "
            "indices 0 ... outputs - 1"
        )
    return [labels[i] for i in range(outputs)]
