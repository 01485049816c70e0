"""Tag new audio with a trained system: whole files, or a long recording window by window.

The preprocessing is the training pipeline's own (SoX clipping and resampling in
:func:`workflow_lib.audio.load_clipped`, the spectrogram versions and the length fix in
:mod:`workflow_lib.spectrograms`), so a clip tagged here gets the posteriors the run gave it.
The network is a *backend*: a callable from one spectrogram batch per version to fused
posteriors. Three exist: the run's fold models, built from ``results/`` (torch,
:func:`workflow_lib.export.run_tagger`), and an exported bundle's TorchScript or ONNX file.

This module imports neither torch nor the training code at module level: with an exported
bundle and the ONNX backend, tagging needs only numpy, soundfile, librosa, madmom, SoX and
onnxruntime (docs/method.md describes the preprocessing).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from .bundle import BUNDLE_FILES, tagger_settings
from .errors import UserError

log = logging.getLogger(__name__)

#: File name endings a folder is searched for (an explicitly named file is always tried).
AUDIO_SUFFIXES = frozenset(
    {
        ".wav",
        ".flac",
        ".ogg",
        ".oga",
        ".mp3",
        ".aif",
        ".aiff",
        ".aifc",
        ".au",
        ".snd",
        ".w64",
        ".caf",
        ".rf64",
    }
)
#: Row status of a tagged file; any other value names why it was not tagged.
OK = "ok"
FAILED_STATUS = {"skipped_missing": "missing", "skipped_undecodable": "undecodable", "skipped_empty": "empty"}

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
        settings_path = bundle / BUNDLE_FILES["settings"]
        classes_path = bundle / BUNDLE_FILES["classes"]
        for path in (settings_path, classes_path):
            if not path.is_file():
                raise TaggingError(
                    f"{bundle} is not a tagger bundle: {path.name} is missing "
                    "(write one with `python -m workflow_lib.cli export`)"
                )
        data = json.loads(settings_path.read_text())
        known = {f for f in cls.__dataclass_fields__ if f != "classes"}
        table = pd.read_csv(classes_path, dtype={"label": str}, keep_default_na=False)
        classes = list(table.sort_values("index")["label"])
        return cls(classes=classes, **{k: v for k, v in data.items() if k in known})


def settings_from_config(configfile: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Resolve config.yaml with ``KEY=VALUE`` overrides (as ``snakemake --config`` takes them)."""
    import yaml

    from .config import resolve_settings

    if not Path(configfile).is_file():
        raise TaggingError(
            f"{configfile} not found: run from the workflow's folder or pass "
            "--configfile (or tag with --bundle DIR)"
        )
    config = yaml.safe_load(Path(configfile).read_text())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TaggingError(f"--config {item!r}: expected KEY=VALUE")
        config[key] = yaml.safe_load(value) if value else ""
    return tagger_settings(resolve_settings(config))


# --------------------------------------------------------------------------- inputs


def discover(inputs: Sequence[Path], list_file: Path | None = None) -> list[Path]:
    """Files to tag, in the order given: files as named, folders searched recursively for
    audio files (sorted), and the lines of ``list_file`` (one path per line, '#' comments;
    relative paths are relative to the list file's folder).

    A path that does not exist is kept: its row then says so, and the others are tagged.
    """
    named = list(inputs)
    if list_file is not None:
        try:
            lines = Path(list_file).read_text().splitlines()
        except OSError as error:
            raise TaggingError(f"cannot read the list file {list_file}: {error}") from None
        named += [
            Path(list_file).parent / line.strip()
            for line in lines
            if line.strip() and not line.startswith("#")
        ]
    files: list[Path] = []
    for path in named:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not found:
                log.warning("no audio files under %s", path)
            files += found
        else:
            files.append(path)
    return files


@dataclass(frozen=True)
class Item:
    """One thing to tag: a whole file, or the window [start, end) seconds of a file."""

    path: Path
    start: float | None = None
    end: float | None = None


@dataclass
class Prepared:
    """An item after preprocessing: one length-fixed spectrogram per version, or why not."""

    item: Item
    status: str
    audio: str = ""
    detail: str = ""  # why it failed, or the preprocessing note
    inputs: list[np.ndarray] | None = None  # per version: (1, n_bins, frames) float32


def _failure(item: Item, audio_status: str, message: str) -> Prepared:
    return Prepared(item, FAILED_STATUS.get(audio_status, audio_status), audio_status, message)


def _write_window(item: Item, folder: str) -> Path:
    """The window as its own WAV file, so SoX and librosa see it exactly as they see a clip."""
    info = sf.info(str(item.path))
    start, stop = round(item.start * info.samplerate), round(item.end * info.samplerate)
    samples, rate = sf.read(str(item.path), start=start, stop=stop, dtype="float32", always_2d=True)
    target = Path(folder) / "window.wav"
    sf.write(str(target), samples, rate, subtype="FLOAT")
    return target


def prepare(item: Item, spec: TaggerSpec) -> Prepared:
    """The training preprocessing of one file or window; never raises for bad audio."""
    from .audio import load_clipped
    from .spectrograms import compute_spectrogram, fix_length

    path = item.path
    if path.exists() and not os.access(path, os.R_OK):
        return Prepared(item, "unreadable", "", "permission denied")
    try:
        with tempfile.TemporaryDirectory(prefix="sv_tag_") as folder:
            source = path if item.start is None else _write_window(item, folder)
            clip = load_clipped(source, spec.sample_rate, tuple(spec.sox_effects), workdir=Path(folder))
        if not clip.usable:
            return _failure(item, clip.status, clip.detail)
        inputs = [
            fix_length(compute_spectrogram(v, clip.samples, spec.sample_rate, spec.spectrograms), spec.frames)
            for v in spec.versions
        ]
    except Exception as error:  # noqa: BLE001 - one bad file must not stop the others
        return Prepared(item, "failed", "", f"{type(error).__name__}: {error}"[:300])
    return Prepared(item, OK, clip.status, clip.detail, inputs)


def _batches(
    items: Sequence[Item], spec: TaggerSpec, batch_size: int, executor: Executor | None
) -> Iterator[list[Prepared]]:
    """Prepared items in order, a batch at a time; with a pool, the next batch is prepared
    while the caller runs the network on the current one (memory: two batches at most)."""
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    if executor is None:
        for chunk in chunks:
            yield [prepare(item, spec) for item in chunk]
        return
    pending: list[Future] | None = None
    for chunk in [*chunks, None]:
        ahead = [executor.submit(prepare, item, spec) for item in chunk] if chunk else None
        if pending is not None:
            yield [future.result() for future in pending]
        pending = ahead


# --------------------------------------------------------------------------- outputs


#: Default ``--threshold`` of a multi-label tagger (a class is tagged from this probability on).
DEFAULT_THRESHOLD = 0.5


def tagged_set(probs: np.ndarray, classes: Sequence[str], threshold: float) -> tuple[str, str]:
    """(``labels``, ``scores``) cells of a multi-label row: every class whose probability is
    at least ``threshold``, highest first, comma-joined, and their probabilities (4 decimals)
    in the same order; ('', '') when none reaches it."""
    chosen = [i for i in np.argsort(-probs, kind="stable") if probs[i] >= threshold]
    return ",".join(classes[i] for i in chosen), ",".join(f"{probs[i]:.4f}" for i in chosen)


def result_frame(
    prepared: Sequence[Prepared],
    probs: np.ndarray,
    classes: Sequence[str],
    top_k: int,
    all_classes: bool,
    timeline: bool,
    threshold: float | None = None,
) -> pd.DataFrame:
    """One row per item: fname[, start, end][, labels, scores], label_1, p_1 ... label_k, p_k,
    status, audio, detail[, one posterior column per class]. Items that failed have empty
    labels and NaN. ``labels``/``scores`` (multi-label taggers, ``threshold`` given): see
    :func:`tagged_set`."""
    k = min(top_k, len(classes))
    rows = []
    for row_index, p in enumerate(prepared):
        row: dict = {"fname": str(p.item.path)}
        if timeline:
            row["start"], row["end"] = p.item.start, p.item.end
        if threshold is not None:
            row["labels"], row["scores"] = (
                tagged_set(probs[row_index], classes, threshold) if p.status == OK else ("", "")
            )
        ranked = np.argsort(-probs[row_index], kind="stable")[:k] if p.status == OK else []
        for rank in range(k):
            row[f"label_{rank + 1}"] = classes[ranked[rank]] if len(ranked) else ""
            row[f"p_{rank + 1}"] = float(probs[row_index, ranked[rank]]) if len(ranked) else math.nan
        row.update(status=p.status, audio=p.audio, detail=p.detail)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if all_classes:
        clash = set(classes) & set(frame.columns)
        if clash:
            raise TaggingError(
                f"class names {sorted(clash)} clash with the output columns; leave out --all-classes"
            )
        frame = pd.concat([frame, pd.DataFrame(probs, columns=list(classes))], axis=1)
    return frame


class Progress:
    """A progress line on stderr every few seconds (only worth it for many items)."""

    def __init__(self, total: int, what: str, every_s: float = 5.0) -> None:
        self.total, self.what, self.every_s = total, what, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info("%s %d/%d (%.1f/s)", self.what, self.done, self.total, rate)


def tag_items(
    items: Sequence[Item], spec: TaggerSpec, backend: Backend, batch_size: int = 32, jobs: int = 1
) -> tuple[list[Prepared], np.ndarray]:
    """Preprocess and run every item in batches; posteriors are NaN where an item failed."""
    probs = np.full((len(items), len(spec.classes)), np.nan, dtype=np.float64)
    prepared: list[Prepared] = []
    progress = Progress(len(items), "tagged")
    executor = ProcessPoolExecutor(jobs, mp_context=_spawn()) if jobs > 1 else None
    try:
        for batch in _batches(items, spec, batch_size, executor):
            good = [i for i, p in enumerate(batch) if p.status == OK]
            if good:
                inputs = [
                    np.stack([batch[i].inputs[v] for i in good]).astype(np.float32)
                    for v in range(len(spec.versions))
                ]
                rows = np.asarray(good) + len(prepared)
                probs[rows] = backend(inputs)
            for p in batch:
                p.inputs = None  # the spectrograms are not needed any more
            prepared += batch
            progress.advance(len(batch))
    finally:
        if executor is not None:
            executor.shutdown()
    return prepared, probs


def _spawn():
    """Worker processes start fresh: forking a process that holds torch's thread pools hangs."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


# --------------------------------------------------------------------------- timeline


def window_bounds(duration: float, window: float, hop: float) -> list[tuple[float, float]]:
    """Windows [start, end) every ``hop`` seconds; the last one ends at the end of the file."""
    if window <= 0 or hop <= 0:
        raise TaggingError("--window and --hop must be positive")
    count = max(1, math.ceil(max(duration - window, 0.0) / hop - 1e-9) + 1)
    return [(round(i * hop, 6), round(min(i * hop + window, duration), 6)) for i in range(count)]


def timeline_items(
    files: Sequence[Path],
    window: float,
    hop: float,
) -> tuple[list[Item], list[Prepared]]:
    """Window items of every readable file, and a failed row for each file that is not."""
    from .audio import probe

    items, failed = [], []
    for path in files:
        if path.exists() and not os.access(path, os.R_OK):
            failed.append(Prepared(Item(path), "unreadable", "", "permission denied"))
            continue
        status, info, detail = probe(path)
        if status != OK:
            failed.append(_failure(Item(path), status, detail))
            continue
        duration = info.frames / info.samplerate
        items += [Item(path, start, end) for start, end in window_bounds(duration, window, hop)]
    return items, failed


def timeline_plot(frame: pd.DataFrame, classes: Sequence[str], probs: np.ndarray, out: Path) -> None:
    """Class posteriors over time (one panel per file); windows that failed are left blank."""
    from .plots import plt, save_figure

    files = list(dict.fromkeys(frame["fname"]))
    figure, axes = plt.subplots(
        len(files), 1, squeeze=False, figsize=(10, 1.2 + 0.25 * len(classes) * len(files))
    )
    for ax, name in zip(axes[:, 0], files):
        rows = np.flatnonzero((frame["fname"] == name).to_numpy())
        starts, ends = frame["start"].to_numpy()[rows], frame["end"].to_numpy()[rows]
        hop = np.diff(starts).min() if len(rows) > 1 else max(ends[0] - starts[0], 1e-3)
        centres = (starts + ends) / 2
        image = ax.imshow(
            probs[rows].T,
            aspect="auto",
            origin="lower",
            vmin=0,
            vmax=1,
            cmap="magma",
            interpolation="nearest",
            extent=(centres[0] - hop / 2, centres[-1] + hop / 2, -0.5, len(classes) - 0.5),
        )
        ax.set_yticks(range(len(classes)), list(classes), fontsize=7)
        ax.set_title(Path(name).name, fontsize=9)
        ax.set_xlabel("time (s), window centres")
    figure.colorbar(image, ax=axes[:, 0].tolist(), label="posterior")
    save_figure(figure, out)


# --------------------------------------------------------------------------- backends


def bundle_backend(bundle: Path, spec: TaggerSpec, kind: str, device: str) -> Backend:
    """The exported network: ``onnx`` (onnxruntime, no torch) or ``torchscript`` (torch)."""
    path = bundle / BUNDLE_FILES[kind]
    if not path.is_file():
        raise TaggingError(f"{path} is missing: the bundle has no {kind} file")
    if kind == "onnx":
        return _onnx_backend(path, spec, device)
    import torch

    target = _torch_device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # torch >= 2.10 says so
        module = torch.jit.load(str(path), map_location=target).eval()
    return torch_backend(module, target)


def _onnx_backend(path: Path, spec: TaggerSpec, device: str) -> Backend:
    try:
        import onnxruntime
    except ImportError:
        raise TaggingError(
            "the ONNX backend needs onnxruntime: pip install 'self-verification-audio-tagging[export]'"
        ) from None
    providers = [
        p
        for p in ("CUDAExecutionProvider",)
        if device != "cpu" and p in onnxruntime.get_available_providers()
    ] + ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(str(path), providers=providers)
    names = [i.name for i in session.get_inputs()]
    if names != spec.input_names:
        raise TaggingError(
            f"{path} takes inputs {names}, preprocessing.json says "
            f"{spec.input_names}: the bundle is inconsistent"
        )

    def run(inputs: list[np.ndarray]) -> np.ndarray:
        return session.run(None, dict(zip(names, inputs)))[0]

    return run


def _torch_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise TaggingError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


def torch_backend(module, device) -> Backend:
    """Run a torch module (eager or TorchScript) taking one tensor per version."""
    import torch

    def run(inputs: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = module(*[torch.from_numpy(x).to(device) for x in inputs])
        return out.float().cpu().numpy()

    return run


# --------------------------------------------------------------------------- the command


@dataclass
class TagOptions:
    """The `tag` command's options (see ``python -m workflow_lib.cli tag --help``)."""

    inputs: list[Path]
    out: Path
    list_file: Path | None = None
    bundle: Path | None = None
    backend: str = "auto"  # auto | torch (run) | torchscript | onnx (bundle)
    results: Path | None = None
    configfile: Path | None = None
    config: list[str] = field(default_factory=list)
    top_k: int = 3
    threshold: float | None = None  # multi-label taggers only (default DEFAULT_THRESHOLD)
    all_classes: bool = False
    batch_size: int | None = None
    device: str = "auto"
    jobs: int = 1
    timeline: bool = False
    window: float | None = None
    hop: float | None = None
    plot: Path | None = None
    raw_rate: int | None = None


def check_options(o: TagOptions) -> None:
    """Refuse option combinations that would silently ignore something the user gave."""
    if o.bundle is not None:
        given = [
            flag
            for flag, value in (
                ("--results", o.results),
                ("--configfile", o.configfile),
                ("--config", o.config),
            )
            if value
        ]
        if given:
            raise TaggingError(
                f"{', '.join(given)} describe a run; with --bundle the bundle's "
                "own settings are used: leave them out"
            )
        if o.backend == "torch":
            raise TaggingError(
                "--backend torch runs the run's checkpoints; a bundle has torchscript and onnx"
            )
    elif o.backend in ("torchscript", "onnx"):
        raise TaggingError(f"--backend {o.backend} needs --bundle DIR (an exported tagger)")
    if not o.timeline and (o.window is not None or o.hop is not None or o.plot is not None):
        raise TaggingError("--window, --hop and --plot belong to --timeline")
    if o.raw_rate is not None and Path("-") not in o.inputs:
        raise TaggingError("--raw-rate describes standard input: name '-' as an input")
    if Path("-") in o.inputs and o.raw_rate is None:
        raise TaggingError(
            "reading standard input ('-') needs --raw-rate HZ (raw 16-bit little-endian mono PCM)"
        )
    if o.top_k < 1 or o.jobs < 1 or (o.batch_size is not None and o.batch_size < 1):
        raise TaggingError("--top-k, --jobs and --batch-size must be at least 1")
    if o.threshold is not None and not 0.0 < o.threshold <= 1.0:
        raise TaggingError("--threshold must lie in (0, 1]")


def label_threshold(o: TagOptions, spec: TaggerSpec) -> float | None:
    """The multi-label tagging threshold (None: a single-label tagger, which ranks only);
    --threshold given for a single-label tagger is refused, not ignored."""
    if spec.multi_label:
        return DEFAULT_THRESHOLD if o.threshold is None else o.threshold
    if o.threshold is not None:
        raise TaggingError(
            "--threshold applies to multi-label taggers; this one is single-label (one class per "
            "clip): read label_1 ... label_k"
        )
    return None


def stdin_to_wav(rate: int, folder: Path) -> Path:
    """Raw 16-bit little-endian mono PCM from standard input, as a WAV file to tag."""
    data = np.frombuffer(sys.stdin.buffer.read(), dtype="<i2")
    target = folder / "stdin.wav"
    sf.write(str(target), data, rate, subtype="PCM_16")
    return target


def open_tagger(o: TagOptions) -> tuple[TaggerSpec, Backend, int]:
    """(spec, backend, default batch size) from a bundle or from the run's results tree."""
    if o.bundle is not None:
        spec = TaggerSpec.from_bundle(o.bundle)
        kind = o.backend if o.backend != "auto" else _default_bundle_backend()
        log.info("bundle %s, %s backend", o.bundle, kind)
        return spec, bundle_backend(o.bundle, spec, kind, o.device), 32
    from .export import run_tagger

    settings = settings_from_config(o.configfile or Path("config.yaml"), o.config)
    spec, module = run_tagger(o.results or Path("results"), settings)
    device = _torch_device(o.device)
    log.info(
        "run %s, presets %s, on %s",
        o.results or "results",
        [(p["name"], p["iteration"]) for p in spec.presets],
        device,
    )
    return spec, torch_backend(module.to(device), device), settings["batch_size"]


def _default_bundle_backend() -> str:
    """TorchScript when torch is installed (GPU-capable), else ONNX."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "onnx"
    return "torchscript"


def run_tag(o: TagOptions) -> int:
    """The `tag` command: write the CSV (and timeline PNG); 1 when any item failed."""
    from .io import write_csv

    check_options(o)
    spec, backend, default_batch = open_tagger(o)
    threshold = label_threshold(o, spec)
    with tempfile.TemporaryDirectory(prefix="sv_tag_stdin_") as folder:
        shown = {}
        inputs = []
        for path in o.inputs:
            if path == Path("-"):
                path = stdin_to_wav(o.raw_rate, Path(folder))
                shown[str(path)] = "-"
            inputs.append(path)
        files = discover(inputs, o.list_file)
        if not files:
            raise TaggingError("nothing to tag: name files, folders or --list FILE")
        failed: list[Prepared] = []
        if o.timeline:
            items, failed = timeline_items(files, o.window or 2.0, o.hop or 1.0)
        else:
            items = [Item(path) for path in files]
        prepared, probs = tag_items(items, spec, backend, o.batch_size or default_batch, o.jobs)
    probs = np.concatenate([probs, np.full((len(failed), len(spec.classes)), np.nan)])
    frame = result_frame(
        prepared + failed, probs, spec.classes, o.top_k, o.all_classes, o.timeline, threshold
    )
    if o.timeline and items:
        timeline_plot(
            frame.iloc[: len(items)], spec.classes, probs[: len(items)], o.plot or o.out.with_suffix(".png")
        )
    order: dict[str, int] = {}  # rows in the files' order, as given
    for i, path in enumerate(files):
        order.setdefault(str(path), i)
    frame = frame.iloc[np.argsort(frame["fname"].map(order).to_numpy(), kind="stable")]
    frame["fname"] = frame["fname"].replace(shown)
    write_csv(frame, o.out)
    n_failed = int((frame["status"] != OK).sum())
    log.info("%s: %d row(s) tagged, %d failed", o.out, len(frame) - n_failed, n_failed)
    for _, row in frame[frame["status"] != OK].head(20).iterrows():
        log.warning("%s: %s (%s)", row["fname"], row["status"], row["detail"])
    return 1 if n_failed else 0
