"""Decode a clip, clip its silence with the SoX binary, and load it at the model's sample rate.

docs/method.md "Preprocessing" 1: SoX removes leading and trailing silence; when SoX fails or clips
everything away the spectrogram is computed on the original audio. A file that cannot be
decoded at all (or holds no samples) is reported and skipped. All-zero input is caught before
SoX, because SoX's first ``norm -0.1`` would turn digital silence into full-scale noise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import UserError

#: The effects chain of docs/method.md, as SoX arguments after ``sox IN OUT``.
SPEC_SOX_EFFECTS: tuple[str, ...] = (
    "norm",
    "-0.1",
    "silence",
    "1",
    "0.025",
    "0.15%",
    "norm",
    "-0.1",
    "reverse",
    "silence",
    "1",
    "0.025",
    "0.15%",
    "reverse",
)

# Outcomes recorded per file in the manifests (documented in the README).
CLIPPED = "clipped"  # SoX output used
FALLBACK_SILENT = "fallback_silent"  # all-zero input: original audio used, SoX not run
FALLBACK_SOX_FAILED = "fallback_sox_failed"
FALLBACK_CLIPPED_ALL = "fallback_clipped_all"  # SoX returned no sound: original audio used
SKIPPED_MISSING = "skipped_missing"
SKIPPED_UNDECODABLE = "skipped_undecodable"
SKIPPED_EMPTY = "skipped_empty"
SKIPPED_NONFINITE = "skipped_nonfinite"  # float audio holding NaN or infinite samples
SKIPPED_BY_VALIDATION = "skipped_by_validation"  # test row kept without a file: problems.csv
USABLE_STATUSES = (CLIPPED, FALLBACK_SILENT, FALLBACK_SOX_FAILED, FALLBACK_CLIPPED_ALL)


class SoxNotFoundError(UserError, RuntimeError):
    """The ``sox`` binary is not on PATH."""


class SoxEffectsError(UserError, RuntimeError):
    """SoX rejects the configured effects chain (``preprocessing.sox_effects``)."""


#: SoX effects a chain may use: effects that only transform the audio stream and can neither
#: read nor write a file (``noiseprof``/``noisered`` take a file name, ``newfile`` and friends
#: open outputs). docs/method.md's chain needs ``norm``, ``silence`` and ``reverse``; the others
#: are plain level, filter and cut effects (README "Use the trained tagger"). Each entry names
#: the option tokens the effect accepts besides numbers.
ALLOWED_SOX_EFFECTS: dict[str, frozenset[str]] = {
    "norm": frozenset({"-b", "-i"}),
    "silence": frozenset({"-l"}),
    "reverse": frozenset(),
    "gain": frozenset({"-e", "-B", "-b", "-r", "-n", "-l", "-h"}),
    "vol": frozenset({"amplitude", "power", "dB"}),
    "trim": frozenset(),
    "highpass": frozenset(),
    "lowpass": frozenset(),
}
#: An effect argument: a number, optionally signed or '='-anchored (trim), with colons of a
#: time (1:30) and one unit suffix SoX knows (%, d, dB, s, t, k, q, o, h); never a path.
_SOX_NUMBER = re.compile(r"[=+-]?(\d+(\.\d*)?|\.\d+)(:\d+(\.\d*)?)*(%|d|dB|s|t|k|q|o|h)?")


def sox_effects_problems(effects: Sequence[str]) -> list[str]:
    """Why an effects chain is refused (empty when it is allowed).

    Every token is either an allowed effect name (:data:`ALLOWED_SOX_EFFECTS`), an option token
    of the effect before it, or a plain number: a chain from an exported bundle or a config can
    therefore never name a program, a file or an effect that writes one.
    """
    problems: list[str] = []
    current: str | None = None
    for position, token in enumerate(effects):
        if not isinstance(token, str):
            problems.append(f"item {position} ({token!r}) is not a string")
        elif current is not None and (_SOX_NUMBER.fullmatch(token) or token in ALLOWED_SOX_EFFECTS[current]):
            continue
        elif token in ALLOWED_SOX_EFFECTS:
            current = token
        elif current is None:
            problems.append(f"item {position} ({token!r}) is not an allowed SoX effect")
        else:
            problems.append(
                f"item {position} ({token!r}) is neither an allowed SoX effect nor a number or "
                f"option of {current!r}"
            )
    if problems:
        problems.append(f"allowed effects: {', '.join(ALLOWED_SOX_EFFECTS)}")
    return problems


def require_allowed_sox_effects(effects: Sequence[str], source: str) -> None:
    """Raise :class:`SoxEffectsError` naming ``source`` when the chain is not allowed."""
    problems = sox_effects_problems(effects)
    if problems:
        raise SoxEffectsError(f"{source}: SoX effects refused: " + "; ".join(problems))


@dataclass(frozen=True)
class LoadedClip:
    """A clip ready for the spectrogram functions, or the reason it was skipped."""

    status: str
    samples: np.ndarray | None  # mono float32 at the requested sample rate
    seconds_before_clipping: float
    seconds_after_clipping: float
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.status in USABLE_STATUSES


def require_sox(binary: str = "sox") -> str:
    """Return the path of the SoX binary or explain how to install it."""
    found = shutil.which(binary)
    if found is None:
        raise SoxNotFoundError(
            f"'{binary}' not found on PATH. Install SoX: 'apt-get install -y sox' (Debian/Ubuntu), "
            "'brew install sox' (macOS) or 'conda install -c conda-forge sox'."
        )
    return found


def probe(path: Path) -> tuple[str, sf._SoundFileInfo | None, str]:
    """Classify a file before any work: missing, undecodable, empty, or decodable."""
    if not path.is_file():
        return SKIPPED_MISSING, None, "file does not exist"
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        return SKIPPED_UNDECODABLE, None, f"cannot decode: {error}"
    if info.frames == 0:
        return SKIPPED_EMPTY, info, "no samples"
    bad = count_nonfinite(path) if info.subtype in ("FLOAT", "DOUBLE") else 0
    if bad:
        # SoX would turn NaN into -1.0 spikes and an all-NaN file into a constant clip that
        # trains as a normal example: refuse the file instead.
        return SKIPPED_NONFINITE, info, f"{bad} of {info.frames * info.channels} samples are NaN or infinite"
    return "ok", info, ""


def count_nonfinite(path: Path, block_frames: int = 1 << 16) -> int:
    """Number of NaN or infinite samples (only float files can hold them)."""
    return int(
        sum(
            np.count_nonzero(~np.isfinite(block))
            for block in sf.blocks(str(path), blocksize=block_frames, dtype="float64", always_2d=True)
        )
    )


def is_digital_silence(path: Path, block_frames: int = 1 << 16) -> bool:
    """True when every sample is exactly zero (read in blocks: clips can be long)."""
    for block in sf.blocks(str(path), blocksize=block_frames, dtype="float32", always_2d=True):
        if np.any(block):
            return False
    return True


def run_sox(source: Path, target: Path, effects: tuple[str, ...], sox: str = "sox") -> str:
    """Run SoX with an argument list (never a shell string); return stderr on failure, else ''.

    Paths are made absolute so a file name beginning with '-' is never read as an option.
    ``-R`` (repeatable mode) seeds SoX's dither generator: without it the 16-bit output differs
    in the last bit from run to run. The effects chain itself is exactly docs/method.md's.
    A chain outside :data:`ALLOWED_SOX_EFFECTS` is never run: it is returned as the failure
    (config validation, the bundle loader and :func:`check_sox_effects` refuse it earlier,
    naming the setting; this is the last line).
    """
    problems = sox_effects_problems(effects)
    if problems:
        return "SoX effects refused: " + "; ".join(problems)
    command = [sox, "-R", str(source.resolve()), str(target.resolve()), *effects]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if result.returncode != 0:
        return result.stderr.strip() or f"sox exited with {result.returncode}"
    return ""


def check_sox_effects(effects: tuple[str, ...], sox: str = "sox") -> None:
    """Run the effects chain on a generated half-second tone; raise with SoX's own message.

    Without this probe a typo in ``preprocessing.sox_effects`` makes every clip fall back to
    the unclipped audio (an INFO line per file) and the run goes on as if clipping worked.
    An effect outside the allowlist is refused before SoX runs at all.
    """
    require_allowed_sox_effects(effects, "config key preprocessing.sox_effects")
    with tempfile.TemporaryDirectory(prefix="sox_probe_") as tmp:
        source = Path(tmp) / "probe.wav"
        t = np.arange(8000) / 16000
        sf.write(str(source), 0.5 * np.sin(2 * np.pi * 440 * t), 16000, subtype="PCM_16")
        error = run_sox(source, Path(tmp) / "out.wav", effects, sox)
    if error:
        raise SoxEffectsError(
            f"SoX rejects the effects chain of config key "
            f"preprocessing.sox_effects {list(effects)} on a test tone: {error}"
        )


def to_model_rate(samples: np.ndarray, native_rate: int, sample_rate: int) -> np.ndarray:
    """What ``librosa.load(sr=sample_rate, mono=True)`` makes of decoded float32 samples
    ((frames,) or (frames, channels)), as docs/method.md prescribes, without librosa's
    per-call overhead: the channel mean, then soxr's "HQ" resampler (librosa's default
    ``res_type``) and librosa's length fix to ceil(frames * ratio). Bit-identical to librosa
    (tests/test_audio.py), so the spectrograms are unchanged.
    """
    import soxr  # librosa's own resampling backend

    y = np.asarray(samples, dtype=np.float32)
    if y.ndim > 1:
        y = np.mean(y.T, axis=0)
    if native_rate == sample_rate:
        return y
    n_samples = int(np.ceil(len(y) * float(sample_rate) / native_rate))
    resampled = soxr.resample(y, native_rate, sample_rate, quality="soxr_hq")
    fixed = np.zeros(n_samples, dtype=np.float32)
    fixed[: min(n_samples, len(resampled))] = resampled[:n_samples]
    return fixed


def _load(path: Path, sample_rate: int) -> np.ndarray:
    """Decode a whole file and bring it to the model's rate (:func:`to_model_rate`)."""
    samples, native_rate = sf.read(str(path), dtype="float32")
    return to_model_rate(samples, native_rate, sample_rate)


def load_clipped(
    path: Path,
    sample_rate: int,
    effects: tuple[str, ...] = SPEC_SOX_EFFECTS,
    sox: str = "sox",
    workdir: Path | None = None,
) -> LoadedClip:
    """Decode, SoX-clip and load one file, falling back to the original audio per docs/method.md.

    ``workdir``: a private folder for SoX's output, reused from clip to clip by a caller that
    loads many (a shard job); by default a temporary folder per call.
    """
    path = Path(path)
    status, info, detail = probe(path)
    if status != "ok":
        seconds = info.frames / info.samplerate if info else 0.0
        return LoadedClip(status, None, seconds, 0.0, detail)
    seconds_before = info.frames / info.samplerate
    if is_digital_silence(path):
        return LoadedClip(
            FALLBACK_SILENT,
            _load(path, sample_rate),
            seconds_before,
            seconds_before,
            "all samples are zero; SoX not run",
        )
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="sox_clip_") as tmp:
            return _clip_with_sox(path, sample_rate, effects, sox, Path(tmp) / "clipped.wav", seconds_before)
    return _clip_with_sox(path, sample_rate, effects, sox, Path(workdir) / "clipped.wav", seconds_before)


def _clip_with_sox(
    path: Path, sample_rate: int, effects: tuple[str, ...], sox: str, clipped: Path, seconds_before: float
) -> LoadedClip:
    """SoX writes ``clipped``; its sound, or the original audio where SoX fails."""
    clipped.unlink(missing_ok=True)  # never read an earlier clip's output as this one's
    error = run_sox(path, clipped, effects, sox)
    if not error:
        try:  # decoded once: the silence check and the resampling use the same samples
            samples, clipped_rate = sf.read(str(clipped), dtype="float32")
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as read_error:
            error = f"SoX exited 0 but its output is unreadable: {read_error}"
    if error:
        return LoadedClip(
            FALLBACK_SOX_FAILED, _load(path, sample_rate), seconds_before, seconds_before, error[:300]
        )
    if len(samples) == 0 or not np.any(samples):
        return LoadedClip(
            FALLBACK_CLIPPED_ALL,
            _load(path, sample_rate),
            seconds_before,
            seconds_before,
            "SoX clipped everything away",
        )
    seconds_after = len(samples) / clipped_rate
    return LoadedClip(
        CLIPPED, to_model_rate(samples, clipped_rate, sample_rate), seconds_before, seconds_after
    )
