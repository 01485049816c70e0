"""The trained system as one network, and its export to a self-contained folder.

:class:`FusedTagger` holds the chosen iteration's fold models of every preset and fuses them
as the run did (fold average per preset, then the run's fusion (fusion.FUSIONS) of
:func:`workflow_lib.fusion.fused_posteriors`): spectrograms in, posteriors out. The `tag`
command runs it straight from ``results/``; :func:`export_bundle` writes it in every format of
workflow_lib/export_formats.py (TorchScript, ONNX) with the class list, the preprocessing
settings and a model card, so a user can tag with that folder alone (``tag --bundle``; the
ONNX file needs onnxruntime, not torch).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .bundle import BUNDLE_FILES, write_manifest
from .choice import read_choice
from .dataset import read_classes
from .errors import UserError
from .export_formats import EXPORT_FORMATS, example_inputs
from .fusion import fused_posteriors, read_parameter_table
from .io import read_csv_str, write_csv, write_json, write_text
from .layout import Layout
from .model import load_model
from .selection import chosen_iteration
from .tagger_spec import TaggerSpec, TaggingError
from .task import MULTI, SINGLE, Task, task_named, task_of_saved

log = logging.getLogger(__name__)


class FusedTagger(nn.Module):
    """Spectrograms (one (batch, 1, 128, time) tensor per version) -> fused posteriors.

    ``members[m]`` are preset m's fold models, fed input ``inputs[m]``; their outputs under
    the task's activation (softmax, or per-class sigmoids: :meth:`Task.activation`) are
    averaged (as ``predict`` does), then the presets are fused by ``fusion`` (a
    fusion.FUSIONS name) with ``weights`` (per preset, or per preset and class) and, for the
    learned fusion, ``bias``. The module keeps the task's name, a plain string, not the task:
    it is traced to TorchScript and ONNX, which record tensors and plain values only.
    """

    def __init__(
        self,
        members: Sequence[Sequence[nn.Module]],
        inputs: Sequence[int],
        weights: np.ndarray,
        bias: np.ndarray | None,
        task: Task = SINGLE,
        fusion: str | None = None,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(nn.ModuleList(folds) for folds in members)
        self.inputs = list(inputs)
        self.task_name = task.name
        # a fusion.FUSIONS name, a plain string like the task's; None: learned with a bias, else mean
        self.fusion = fusion or ("mean" if bias is None else "learned")
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))
        self.learned = bias is not None
        self.register_buffer("bias", torch.as_tensor(bias if bias is not None else [], dtype=torch.float32))

    def forward(self, *spectrograms: torch.Tensor) -> torch.Tensor:
        task = task_named(self.task_name)
        per_preset = []
        for index, folds in zip(self.inputs, self.members):
            x = spectrograms[index]
            per_preset.append(torch.stack([task.activation(m(x)) for m in folds]).mean(0))
        bias = self.bias if self.learned else None
        return fused_posteriors(torch.stack(per_preset), self.weights, bias, task, self.fusion)


# --------------------------------------------------------------------------- from a run


def _fusion_parameters(
    weights_csv: Path, presets: Sequence[str], classes: Sequence[str], method: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Weights (and, learned, biases) as fuse_job wrote them to fusion_weights.csv; the fusion
    the table holds must be the settings' ``method``."""
    try:
        found, fitted = read_parameter_table(read_csv_str(weights_csv), presets, classes)
    except ValueError as error:
        raise TaggingError(f"{weights_csv}: {error}: pass the run's --config") from error
    if found != method:
        raise TaggingError(
            f"{weights_csv} holds a {found} fusion, the settings say {method!r}: pass the run's --config"
        )
    return fitted.weights, fitted.bias


def _check_checkpoint(meta: dict, preset: str, net: Mapping, classes: Sequence[str], path: Path) -> None:
    """A checkpoint must match the settings, or the preprocessing would silently differ."""
    found = {"spectrogram": meta["spectrogram"], "width": meta["width"]}
    if found != dict(net) or list(meta["classes"]) != list(classes):
        raise TaggingError(
            f"{path} was trained with {found} and {len(meta['classes'])} classes; "
            f"the settings of {preset} say {dict(net)} and {len(classes)}: pass "
            "the run's settings (--configfile, --config run_preset=...)"
        )


def run_layout(results: Path, settings: Mapping[str, Any]) -> tuple[Layout, str]:
    """The results/ layout of a run and the chain whose models are exported: the first of
    run_chains (the method, by default), or with chain_choice: cv the chain
    results/chosen/choice.csv names (workflow_lib/choice.py)."""
    chain = settings.get("chain", "self_verification")
    layout = Layout(str(results), settings.get("starts") or {chain: settings.get("start", "all")})
    if settings.get("chain_choice") == "cv":
        chain = read_choice(Path(layout.chosen("choice.csv")))
    return layout, chain


def run_tagger(results: Path, settings: Mapping[str, Any]) -> tuple[TaggerSpec, FusedTagger]:
    """The run's fused tagger: chosen iteration of every preset, its fold models, the fusion."""
    results = Path(results)
    layout, chain = run_layout(results, settings)
    needed = [
        Path(layout.data("classes.csv")),
        Path(layout.fused(chain, "fusion_weights.csv")),
        *(Path(layout.selection(chain, p)) for p in settings["presets"]),
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise TaggingError(
            f"{results} is not a finished run ({', '.join(missing[:3])} missing): "
            "run the workflow first, or tag with --bundle DIR"
        )
    classes = read_classes(needed[0])
    weights, bias = _fusion_parameters(needed[1], settings["presets"], classes, settings["fusion"])
    members, described, tasks = [], [], set()
    versions = sorted({settings["nets"][p]["spectrogram"] for p in settings["presets"]})
    for preset, weight in zip(settings["presets"], weights):
        iteration = chosen_iteration(layout.selection(chain, preset))
        paths = {k: Path(layout.model_file(chain, preset, k, iteration)) for k in range(settings["folds"])}
        folds = []
        for path in paths.values():
            if not path.is_file():
                raise TaggingError(f"{path} is missing")
            model, meta = load_model(path)
            _check_checkpoint(meta, preset, settings["nets"][preset], classes, path)
            tasks.add(task_of_saved(meta).name)
            folds.append(model)
        members.append(folds)
        described.append(
            {
                "name": preset,
                **settings["nets"][preset],
                "iteration": iteration,
                "folds": len(folds),
                "weight": float(np.mean(weight)),  # per-class weights: their mean over the classes
            }
        )
    task = _checked_task(tasks, settings, results)
    spec = TaggerSpec(
        classes=classes,
        task=task,
        sample_rate=settings["sample_rate"],
        sox_effects=settings["sox_effects"],
        spectrograms=settings.get("spectrograms", "fast"),
        frames=settings["frames"],
        versions=versions,
        fusion=settings["fusion"],
        presets=described,
    )
    inputs = [versions.index(settings["nets"][p]["spectrogram"]) for p in settings["presets"]]
    return spec, FusedTagger(members, inputs, weights, bias, task, settings["fusion"]).eval()


def _checked_task(tasks: set[str], settings: Mapping[str, Any], results: Path) -> Task:
    """The task every exported checkpoint (``tasks``: their task names) and the settings
    (their ``task``, absent: single-label) agree on."""
    wanted = task_named(settings.get("task", SINGLE.name))
    if tasks != {wanted.name}:
        found = "a mix of single- and multi-label" if len(tasks) > 1 else next(iter(tasks), "none")
        raise TaggingError(
            f"the models of {results} are {found}, the settings say "
            f"{wanted.name}: pass the run's settings (--configfile, --config)"
        )
    return wanted


# --------------------------------------------------------------------------- the bundle


def check_exported(tagger: FusedTagger, spec: TaggerSpec, bundle: Path, tolerance: float = 1e-4) -> float:
    """Largest posterior difference of every exported format (:data:`EXPORT_FORMATS`) from the
    eager tagger, on random inputs of another length than the export's; raises when it
    exceeds ``tolerance``."""
    inputs = example_inputs(spec, batch=3, frames=spec.frames + 37, seed=1)
    with torch.no_grad():
        expected = tagger(*inputs).numpy()
    arrays = [x.numpy() for x in inputs]
    worst = 0.0
    for form in EXPORT_FORMATS.values():
        worst = max(worst, form.check(bundle, spec, arrays, expected))
    if worst > tolerance:
        raise UserError(f"the exported tagger differs from the trained one by {worst:.2e}")
    return worst


def model_card(
    spec: TaggerSpec, results: Path, dataset: str, summary: Path | None = None, chain: str = ""
) -> str:
    """A short markdown description: data, the exported chain and how it was chosen, classes,
    models, figures of the run."""
    lines = [
        "# Audio tagger (iterative self-verification, Dorfer & Widmer, DCASE 2018 Task 2)",
        "",
        (
            "Exported by `python -m workflow_lib.cli export` from a finished run of this "
            "workflow (docs/method.md). Tag with `sv-tag --bundle <this folder> FILES...`."
        ),
        "",
        *_card_data(results, dataset, chain),
        *_card_models(spec),
        *_card_figures(summary or results / "summary.csv"),
    ]
    return "\n".join(lines)


def _card_data(results: Path, dataset: str, chain: str) -> list[str]:
    """The card's data section: what the tagger was trained on (the count when the run's
    training listing is still there)."""
    lines = ["## Data", "", f"- trained on: {dataset}", *([f"- chain: {chain}"] if chain else [])]
    listing = results / "data" / "train.csv"
    if listing.is_file():
        train = read_csv_str(listing)
        lines.append(
            f"- training clips: {len(train)} ({int((train['verified'] == '1').sum())} manually verified)"
        )
    return lines


#: What the network returns, in the model card's words, per task.
CARD_OUTPUT = {
    SINGLE.name: "posteriors.",
    MULTI.name: (
        "independent per-class probabilities (sigmoid; multi-label: a clip may carry any set of classes)."
    ),
}


def _card_models(spec: TaggerSpec) -> list[str]:
    """The card's classes and models sections, and what goes in and comes out of the network:
    what a user of the bundle needs to feed it."""
    lines = [
        "",
        f"## Classes ({len(spec.classes)}, in output order)",
        "",
        ", ".join(f"`{c}`" for c in spec.classes),
        "",
        "## Models",
        "",
        "| preset | spectrogram | width | chosen iteration | folds | weight |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {p['name']} | v{p['spectrogram']} | {p['width']} | {p['iteration']} | "
        f"{p['folds']} | {p['weight']:.4g} |"
        for p in spec.presets
    ]
    output = CARD_OUTPUT[spec.task.name]
    lines += [
        "",
        (
            f"Fusion: {spec.fusion}. Input: per spectrogram version a (batch, 1, "
            f"{spec.n_bins}, time) float32 array, time length-fixed to {spec.frames} "
            "frames (tiled, then cut) as in training; output: (batch, classes) " + output
        ),
        "Preprocessing settings: `preprocessing.json`.",
        "",
    ]
    return lines


def _card_figures(summary: Path) -> list[str]:
    """The card's figures section: the exported chain's summary table, when the run wrote one."""
    if not summary.is_file():
        return []
    table = pd.read_csv(summary, dtype={"preset": str})
    return [
        f"## Figures of the run ({summary.name} of the exported chain)",
        "",
        "CV = verified validation clips of the 4 folds; test = the labelled test set.",
        "",
        _markdown_table(table),
        "",
    ]


def _markdown_table(table: pd.DataFrame) -> str:
    """Counts as integers, fractions to 4 decimals, missing values empty."""

    def column(values: pd.Series) -> list[str]:
        if not pd.api.types.is_float_dtype(values):  # text: a note column is blank in some rows
            return values.fillna("").astype(str).tolist()
        known = values.dropna()
        whole = bool(len(known)) and bool((known == known.round()).all()) and known.abs().max() > 1
        return ["" if pd.isna(v) else (f"{v:.0f}" if whole else f"{v:.4f}") for v in values]

    cells = [column(table[c]) for c in table.columns]
    rows = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    rows += ["| " + " | ".join(row) + " |" for row in zip(*cells)]
    return "\n".join(rows)


def write_bundle(tagger: FusedTagger, spec: TaggerSpec, out_dir: Path, card: str) -> float:
    """Write a bundle folder, its checksum manifest last; returns the largest difference of
    the exported files from the eager tagger (checked against ``check_exported``'s tolerance)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(
        pd.DataFrame({"index": range(len(spec.classes)), "label": spec.classes}),
        out_dir / BUNDLE_FILES["classes"],
    )
    write_json(spec.settings_json(), out_dir / BUNDLE_FILES["settings"])
    for form in EXPORT_FORMATS.values():
        form.save(tagger, spec, out_dir / BUNDLE_FILES[form.name])
    worst = check_exported(tagger, spec, out_dir)
    write_text(card, out_dir / BUNDLE_FILES["card"])
    write_manifest(out_dir)  # last: its checksums cover the files as the export left them
    return worst


def export_bundle(results: Path, settings: Mapping[str, Any], out_dir: Path) -> float:
    """results/export/ of a finished run: TorchScript, ONNX, classes, settings, model card."""
    spec, tagger = run_tagger(results, settings)
    layout, chain = run_layout(Path(results), settings)
    how = (
        "picked by cross-validation (chain_choice: cv, results/chosen/choice.csv)"
        if settings.get("chain_choice") == "cv"
        else "the first of run_chains"
    )
    card = model_card(
        spec, Path(results), settings["dataset"], Path(layout.summary(chain)), f"`{chain}`, {how}"
    )
    return write_bundle(tagger, spec, out_dir, card)
