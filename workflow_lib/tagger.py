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

import logging
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import soundfile as sf
import yaml

from .audio import CLIPPED, FALLBACK_CLIPPED_ALL, FALLBACK_SILENT, load_clipped, probe
from .bundle import BUNDLE_FILES
from .config import resolve_settings
from .export_formats import EXPORT_FORMATS, bundle_backend
from .io import write_csv
from .job_settings import tagger_settings
from .spectrograms import V1_HOP, V2_HOP, compute_spectrogram, fix_length
from .tagger_spec import Backend, TaggerSpec, TaggingError, torch_backend, torch_device

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


def settings_from_config(configfile: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Resolve config.yaml with ``KEY=VALUE`` overrides (as ``snakemake --config`` takes them)."""
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
    path = item.path
    if path.exists() and not os.access(path, os.R_OK):
        return Prepared(item, "unreadable", "", "permission denied")
    try:
        with tempfile.TemporaryDirectory(prefix="sv_tag_") as folder:
            source = path if item.start is None else _write_window(item, folder)
            clip = load_clipped(source, spec.sample_rate, tuple(spec.sox_effects), workdir=Path(folder))
        if not clip.usable:
            return _failure(item, clip.status, clip.detail)
        spectrograms = [
            compute_spectrogram(v, clip.samples, spec.sample_rate, spec.spectrograms) for v in spec.versions
        ]
        inputs = [fix_length(x, spec.frames) for x in spectrograms]
    except Exception as error:  # noqa: BLE001 - one bad file must not stop the others
        return Prepared(item, "failed", "", f"{type(error).__name__}: {error}"[:300])
    notes = [clip.detail]
    if item.start is None and max(x.shape[-1] for x in spectrograms) > spec.frames:
        notes.append(
            f"only the first {spec.frames} spectrogram frames ({excerpt_seconds(spec):.1f} s of the "
            f"{len(clip.samples) / spec.sample_rate:.1f} s after silence clipping) decide, as in the "
            "run's predictions"
        )
    return Prepared(item, OK, clip.status, "; ".join(filter(None, notes)), inputs)


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
                probs[rows] = _checked_outputs(backend(inputs), len(good), spec)
            for p in batch:
                p.inputs = None  # the spectrograms are not needed any more
            prepared += batch
            progress.advance(len(batch))
    finally:
        if executor is not None:
            executor.shutdown()
    return prepared, probs


def _checked_outputs(outputs: np.ndarray, rows: int, spec: TaggerSpec) -> np.ndarray:
    """The network's posteriors, refused unless one row per item and one column per class
    (a TorchScript file does not declare its output size before it runs)."""
    if outputs.shape != (rows, len(spec.classes)):
        raise TaggingError(
            f"the network gives outputs of shape {tuple(outputs.shape)} for {rows} item(s), the "
            f"tagger lists {len(spec.classes)} classes: the bundle or run is inconsistent"
        )
    return outputs


def _spawn():
    """Worker processes start fresh: forking a process that holds torch's thread pools hangs."""
    return multiprocessing.get_context("spawn")


# --------------------------------------------------------------------------- long files

#: Whole files up to this long are tagged exactly as the run predicts a test clip (SoX on the
#: whole file; the first ``frames`` spectrogram frames decide, FSDKaggle2018 clips last at most
#: 30 s). Longer files are cut into excerpts whose posteriors are averaged (:func:`pool_excerpts`):
#: the whole recording decides, and memory stays bounded by one excerpt per item.
LONG_FILE_SECONDS = 60.0


def excerpt_seconds(spec: TaggerSpec) -> float:
    """The seconds ``spec.frames`` spectrogram frames span, for the version with the shortest
    hop (version 2: 128 samples; version 1: 192): every sample of such an excerpt decides."""
    hop = min({1: V1_HOP, 2: V2_HOP}[v] for v in spec.versions)
    return spec.frames * hop / spec.sample_rate


def long_file_excerpts(path: Path, spec: TaggerSpec, long_seconds: float = LONG_FILE_SECONDS) -> list[Item]:
    """Excerpts of :func:`excerpt_seconds` covering a file longer than ``long_seconds``; none
    for a shorter file, or one that :func:`prepare` will report (missing, undecodable)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError):
        return []
    duration = info.frames / info.samplerate
    if duration <= long_seconds:
        return []
    seconds = excerpt_seconds(spec)
    return [Item(path, start, end) for start, end in window_bounds(duration, seconds, seconds)]


def whole_file_items(
    files: Sequence[Path], spec: TaggerSpec, long_seconds: float = LONG_FILE_SECONDS
) -> tuple[list[Item], list[range]]:
    """The items of whole-file tagging and, per file, the range of them that makes its row."""
    items: list[Item] = []
    groups = []
    for path in files:
        first = len(items)
        items += long_file_excerpts(path, spec, long_seconds) or [Item(path)]
        groups.append(range(first, len(items)))
    return items, groups


def pool_excerpts(
    prepared: Sequence[Prepared], probs: np.ndarray, groups: Sequence[range]
) -> tuple[list[Prepared], np.ndarray]:
    """One row per file: a long file's posteriors are the mean over its tagged excerpts that
    hold sound (over all tagged ones when none does: a silent recording is still tagged), and
    its ``detail`` says so; a file none of whose excerpts could be tagged keeps the first
    excerpt's status."""
    rows, pooled = [], np.full((len(groups), probs.shape[1]), np.nan)
    for row, group in enumerate(groups):
        first = prepared[group.start]
        if first.item.start is None:  # a whole file in one piece
            rows.append(first)
            pooled[row] = probs[group.start]
            continue
        tagged = [i for i in group if prepared[i].status == OK]
        sounding = [i for i in tagged if prepared[i].audio not in (FALLBACK_SILENT, FALLBACK_CLIPPED_ALL)]
        used = sounding or tagged
        item = Item(first.item.path)
        if not used:
            rows.append(
                Prepared(item, first.status, first.audio, f"every excerpt failed; the first: {first.detail}")
            )
            continue
        seconds = first.item.end - first.item.start
        note = (
            f"long file ({prepared[group[-1]].item.end:.1f} s): mean posterior of {len(used)} of "
            f"{len(group)} excerpts of {seconds:.1f} s covering it"
            + (
                f" ({len(tagged) - len(sounding)} without sound left out)"
                if sounding and len(sounding) < len(tagged)
                else ""
            )
        )
        audio = CLIPPED if any(prepared[i].audio == CLIPPED for i in used) else prepared[used[0]].audio
        rows.append(Prepared(item, OK, audio, note))
        pooled[row] = probs[used].mean(axis=0)
    return rows, pooled


# --------------------------------------------------------------------------- timeline


def window_bounds(duration: float, window: float, hop: float) -> list[tuple[float, float]]:
    """Windows [start, end) of ``window`` seconds every ``hop`` seconds, never empty.

    Every window is ``window`` long (the whole file when it is shorter): where the hop grid
    leaves a rest at the end, one more window is placed to end exactly at the end of the file
    (so with ``hop > window`` the end is still tagged, and no window starts at or after it).
    """
    if not (math.isfinite(window) and math.isfinite(hop) and window > 0 and hop > 0):
        raise TaggingError(f"--window and --hop must be positive numbers of seconds, not {window}, {hop}")
    if duration <= window:
        return [(0.0, round(duration, 6))]
    count = math.floor((duration - window) / hop + 1e-9) + 1  # windows that fit on the grid
    bounds = [(round(i * hop, 6), round(i * hop + window, 6)) for i in range(count)]
    if bounds[-1][1] < duration - 1e-6:
        bounds.append((round(duration - window, 6), round(duration, 6)))
    return bounds


def timeline_items(
    files: Sequence[Path],
    window: float,
    hop: float,
) -> tuple[list[Item], list[Prepared]]:
    """Window items of every readable file, and a failed row for each file that is not."""
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
    # matplotlib: only --timeline with a plot draws
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


#: Timeline defaults, and the shortest window or hop (shorter ones would make millions of rows).
DEFAULT_WINDOW, DEFAULT_HOP, MIN_WINDOW_SECONDS = 2.0, 1.0, 0.01
#: The highest --raw-rate (libsndfile's WAV limit is far above any audio interface).
MAX_RAW_RATE = 768000


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
                f"--backend torch runs the run's checkpoints; a bundle has {' and '.join(EXPORT_FORMATS)}"
            )
    elif o.backend in EXPORT_FORMATS:
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
    for flag, seconds in (("--window", o.window), ("--hop", o.hop)):
        if seconds is not None and not (math.isfinite(seconds) and seconds >= MIN_WINDOW_SECONDS):
            raise TaggingError(
                f"{flag} must be a number of seconds of at least {MIN_WINDOW_SECONDS}, not {seconds}"
            )
    if o.raw_rate is not None and not 1 <= o.raw_rate <= MAX_RAW_RATE:
        raise TaggingError(
            f"--raw-rate must be a sample rate in Hz from 1 to {MAX_RAW_RATE}, not {o.raw_rate}"
        )
    if o.threshold is not None and not 0.0 < o.threshold <= 1.0:
        raise TaggingError("--threshold must lie in (0, 1]")


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same resolved path, a link, or a hard link."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (yet): not the same file
        return False


def output_paths(o: TagOptions, files: Sequence[Path]) -> tuple[Path, Path | None]:
    """(CSV, timeline PNG or None), refused when one would replace an input (an audio file,
    the --list file, a bundle file) or the other output; both are written atomically."""
    plot = (o.plot or o.out.with_suffix(".png")) if o.timeline else None
    inputs = list(files) + ([o.list_file] if o.list_file else [])
    if o.bundle is not None:
        inputs += [o.bundle / name for name in BUNDLE_FILES.values()]
    if plot is not None and _same_file(o.out, plot):
        raise TaggingError(f"--out and --plot both name {o.out}: the plot would replace the CSV; give --plot")
    for flag, path in (("--out", o.out), ("--plot", plot)):
        if path is None:
            continue
        if path.is_dir():
            raise TaggingError(f"{flag} {path} is a folder: name a file")
        clash = next((source for source in inputs if _same_file(path, source)), None)
        if clash is not None:
            raise TaggingError(
                f"{flag} {path} is an input ({clash}): it would be overwritten; name another file"
            )
    return o.out, plot


def label_threshold(o: TagOptions, spec: TaggerSpec) -> float | None:
    """The multi-label tagging threshold (None: a single-label tagger, which ranks only);
    --threshold given for a single-label tagger is refused, not ignored."""
    if spec.task.label_sets:
        return DEFAULT_THRESHOLD if o.threshold is None else o.threshold
    if o.threshold is not None:
        raise TaggingError(
            "--threshold applies to multi-label taggers; this one is single-label (one class per "
            "clip): read label_1 ... label_k"
        )
    return None


def stdin_to_wav(rate: int, folder: Path, stream: BinaryIO | None = None, block: int = 1 << 20) -> Path:
    """Raw 16-bit little-endian mono PCM from standard input, as a WAV file to tag.

    Copied a block at a time (a long recording never sits in memory whole). An odd byte
    count means the stream ended inside a sample: that last byte is dropped, with a warning.
    """
    stream = stream if stream is not None else sys.stdin.buffer
    target = folder / "stdin.wav"
    rest = b""
    try:
        with sf.SoundFile(str(target), "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
            while chunk := stream.read(block):
                data = rest + chunk
                whole = len(data) - len(data) % 2
                out.write(np.frombuffer(data[:whole], dtype="<i2"))
                rest = data[whole:]
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise TaggingError(f"cannot store standard input at --raw-rate {rate}: {error}") from None
    if rest:
        log.warning("standard input ended inside a 16-bit sample: its last byte is dropped")
    return target


def open_tagger(o: TagOptions) -> tuple[TaggerSpec, Backend, int]:
    """(spec, backend, default batch size) from a bundle or from the run's results tree."""
    if o.bundle is not None:
        spec = TaggerSpec.from_bundle(o.bundle)
        kind = o.backend if o.backend != "auto" else _default_bundle_backend()
        log.info("bundle %s, %s backend", o.bundle, kind)
        return spec, bundle_backend(o.bundle, spec, kind, o.device), 32
    # export imports torch: tagging with a bundle (ONNX) must not pay for it
    from .export import run_tagger

    settings = settings_from_config(o.configfile or Path("config.yaml"), o.config)
    spec, module = run_tagger(o.results or Path("results"), settings)
    device = torch_device(o.device)
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
        import torch  # noqa: F401 - whether torch imports is the question asked here
    except ImportError:
        return "onnx"
    return "torchscript"


def _input_files(o: TagOptions, folder: Path) -> tuple[list[Path], dict[str, str]]:
    """The files to tag (standard input stored in ``folder``) and {stored path: shown name}."""
    shown, inputs = {}, []
    for path in o.inputs:
        if path == Path("-"):
            path = stdin_to_wav(o.raw_rate, folder)
            shown[str(path)] = "-"
        inputs.append(path)
    files = discover(inputs, o.list_file)
    if not files:
        raise TaggingError("nothing to tag: name files, folders or --list FILE")
    return files, shown


def run_tag(o: TagOptions) -> int:
    """The `tag` command: write the CSV (and timeline PNG); 1 when any item failed."""
    check_options(o)
    spec, backend, default_batch = open_tagger(o)
    threshold = label_threshold(o, spec)
    with tempfile.TemporaryDirectory(prefix="sv_tag_stdin_") as folder:
        files, shown = _input_files(o, Path(folder))
        out, plot = output_paths(o, files)
        failed: list[Prepared] = []
        if o.timeline:
            window = DEFAULT_WINDOW if o.window is None else o.window
            items, failed = timeline_items(files, window, DEFAULT_HOP if o.hop is None else o.hop)
        else:
            items, groups = whole_file_items(files, spec)
        prepared, probs = tag_items(items, spec, backend, o.batch_size or default_batch, o.jobs)
    if not o.timeline:
        prepared, probs = pool_excerpts(prepared, probs, groups)
    probs = np.concatenate([probs, np.full((len(failed), len(spec.classes)), np.nan)])
    frame = result_frame(
        prepared + failed, probs, spec.classes, o.top_k, o.all_classes, o.timeline, threshold
    )
    if plot is not None and prepared:
        n = len(prepared)
        timeline_plot(frame.iloc[:n], spec.classes, probs[:n], plot)
    order: dict[str, int] = {}  # rows in the files' order, as given
    for i, path in enumerate(files):
        order.setdefault(str(path), i)
    frame = frame.iloc[np.argsort(frame["fname"].map(order).to_numpy(), kind="stable")]
    frame["fname"] = frame["fname"].replace(shown)
    write_csv(frame, out)
    n_failed = int((frame["status"] != OK).sum())
    log.info("%s: %d row(s) tagged, %d failed", out, len(frame) - n_failed, n_failed)
    for _, row in frame[frame["status"] != OK].head(20).iterrows():
        log.warning("%s: %s (%s)", row["fname"], row["status"], row["detail"])
    return 1 if n_failed else 0
