"""What the workflow and the tagger share about an exported tagger, cheap to import.

The Snakefile reads these at start (rules/export.smk), so this module imports no third-party
package; the tagger itself is :mod:`workflow_lib.tagger` and :mod:`workflow_lib.export`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The files of an exported bundle (results/export/), by role.
BUNDLE_FILES = {
    "torchscript": "tagger.pt",
    "onnx": "tagger.onnx",
    "classes": "classes.csv",
    "settings": "preprocessing.json",
    "card": "model_card.md",
}


def tagger_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the resolved workflow settings a tagger needs (JSON-able)."""
    from .config import is_multi_label  # resolved settings come from there anyway

    method, pre = settings["method"], settings["preprocessing"]
    # multi-label (sigmoid) models: only then the key, so single-label settings stay as they were
    return ({"multi_label": True} if is_multi_label(settings) else {}) | {
        "sample_rate": pre["sample_rate"],
        "sox_effects": list(pre["sox_effects"]),
        "spectrograms": pre["spectrograms"],
        "frames": method["spectrogram_frames"],
        "folds": method["folds"],
        "presets": list(method["presets"]),
        "nets": {
            p: {"spectrogram": method["nets"][p]["spectrogram"], "width": method["nets"][p]["width"]}
            for p in method["presets"]
        },
        "fusion": method["fusion"]["method"],
        "batch_size": settings["compute"]["eval_batch_size"],
        "dataset": settings["dataset_root"] or "the synthetic demo dataset",
        # the exported chain (the first of run_chains) and its iteration-0 start (layout.py)
        "chain": settings["run_chains"][0],
        "start": settings["chains"][settings["run_chains"][0]]["start"],
    }
