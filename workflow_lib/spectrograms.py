"""The two spectrogram versions of docs/method.md "Preprocessing" 2-5, and the length fix.

Both return float32 arrays of shape (1, 128, T): frequency first, time last, no normalisation.

Two implementations of each version:

* ``reference``: librosa's and madmom's own pipelines, called as the original system does
  (kept as the definition that tests compare against);
* ``fast`` (the workflow's default): the same arithmetic with one vectorised STFT (numpy
  framing + ``scipy.fft.rfft`` over all frames at once), and the window, the A-weighting curve,
  the mel matrix and madmom's log filterbank built once per process *by librosa and madmom
  themselves* (the two band matrices stored sparse: 1-2 % of their entries are non-zero).
  The libraries rebuild those per call and madmom transforms frame by frame in a Python
  loop; on 2-10 s clips that is most of the preprocessing CPU time
  (benchmarks/preprocess_throughput.py). tests/test_spectrograms.py holds the fast path within
  1e-3 of the reference (max abs difference / max abs reference value).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache

import librosa
import numpy as np
import scipy.fft
import scipy.sparse

SAMPLE_RATE = 32000
N_BINS = 128
IMPLEMENTATIONS = ("fast", "reference")

# Version 1 (librosa): STFT parameters of the original system, and its dB conversion
# (perceptual_weighting's amin and top_db).
V1_N_FFT, V1_HOP = 1024, 192
AMIN, TOP_DB = 1e-10, 99.0
# Version 2 (madmom): frame size and hop of the original system.
V2_FRAME, V2_HOP = 1024, 128


def spectrogram_v1_reference(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """librosa version: STFT -> perceptually weighted power in dB -> mel filterbank.

    The mel filterbank is applied to the weighted dB values, as the original system does.
    """
    magnitude = np.abs(
        librosa.stft(samples, n_fft=1024, hop_length=192, window="hann", center=True, pad_mode="reflect")
    )
    frequencies = librosa.fft_frequencies(sr=sample_rate, n_fft=1024)
    with np.errstate(divide="ignore"):  # A-weighting evaluates log10(0) at 0 Hz, by design
        weighted = librosa.perceptual_weighting(magnitude**2, frequencies, ref=1.0, amin=1e-10, top_db=99.0)
    mel = librosa.feature.melspectrogram(S=weighted, sr=sample_rate, n_mels=N_BINS, fmax=None)
    return mel[np.newaxis].astype(np.float32)


@lru_cache(maxsize=4)
def _madmom_chain(sample_rate: int, norm: bool = True):
    """Build the madmom processor chain once per process (filterbank construction is slow)."""
    # madmom (slow to import): only the reference implementation uses it
    from madmom.audio.filters import LogFilterbank
    from madmom.audio.signal import FramedSignalProcessor, SignalProcessor
    from madmom.audio.spectrogram import (
        LogarithmicFilteredSpectrogramProcessor,
        SpectrogramProcessor,
    )
    from madmom.processors import SequentialProcessor

    return SequentialProcessor(
        [
            SignalProcessor(num_channels=1, sample_rate=sample_rate, norm=norm),
            FramedSignalProcessor(frame_size=1024, hop_size=128, origin="future"),
            SpectrogramProcessor(frame_size=1024),
            LogarithmicFilteredSpectrogramProcessor(
                filterbank=LogFilterbank, num_bands=26, fmin=20, fmax=14000
            ),
        ]
    )


def spectrogram_v2_reference(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """madmom version: 128 log-spaced bands of log10(1 + |STFT|).

    The signal is handed over already resampled (``Signal(y, sample_rate)``), which avoids
    madmom's ffmpeg dependency for files at other sample rates (docs/method.md "Implementation notes").
    """
    # madmom (slow to import): only the reference implementation uses it
    from madmom.audio.signal import Signal

    # norm=True divides by the peak: 0/0 on digital silence, so silence is left unnormalised.
    chain = _madmom_chain(sample_rate, norm=bool(np.any(samples)))
    spec = np.asarray(chain(Signal(samples, sample_rate=sample_rate)))
    if spec.shape[1] != N_BINS:
        raise RuntimeError(f"madmom chain produced {spec.shape[1]} bands, expected {N_BINS}")
    return spec.T[np.newaxis].astype(np.float32)


@lru_cache(maxsize=4)
def _v1_constants(sample_rate: int) -> tuple[np.ndarray, np.ndarray, scipy.sparse.csr_matrix]:
    """Window, A-weighting (dB per FFT bin) and mel matrix, from librosa, once per process."""
    window = librosa.filters.get_window("hann", V1_N_FFT, fftbins=True).astype(np.float32)
    frequencies = librosa.fft_frequencies(sr=sample_rate, n_fft=V1_N_FFT)
    with np.errstate(divide="ignore"):  # log10(0) at 0 Hz, clipped to min_db by librosa
        weighting = librosa.frequency_weighting(frequencies, kind="A")
    mel = librosa.filters.mel(sr=sample_rate, n_fft=V1_N_FFT, n_mels=N_BINS, fmax=None)
    return window, weighting.astype(np.float32), scipy.sparse.csr_matrix(mel.astype(np.float32))


def _frames(padded: np.ndarray, frame: int, hop: int, count: int) -> np.ndarray:
    """``count`` frames of ``frame`` samples every ``hop`` samples: a strided view, no copy."""
    return np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop][:count]


#: Frames transformed at once: the windowed block and its spectrum stay in the CPU cache.
BLOCK_FRAMES = 128


def _spectrum_blocks(
    frames: np.ndarray, window: np.ndarray, n_bins: int, value: Callable[[np.ndarray], np.ndarray]
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, value(rfft(frame * window))[:n_bins])`` per block of :data:`BLOCK_FRAMES`
    frames, bins-major: a float32 (n_bins, frames in the block) array.

    Each block is windowed straight into a samples-major buffer and transformed along axis 0,
    so the spectrum comes out bins-major (the layout the sparse filterbank products read)
    without a transposing copy, and no full-size complex temporary is ever made. The buffer
    is reused: a consumer must copy what it keeps before the next block.
    """
    buffer = np.empty((frames.shape[1], BLOCK_FRAMES), dtype=np.float32)
    for start in range(0, len(frames), BLOCK_FRAMES):
        part = buffer[:, : min(BLOCK_FRAMES, len(frames) - start)]
        np.multiply(frames[start : start + part.shape[1]].T, window[:, np.newaxis], out=part)
        spectrum = scipy.fft.rfft(part, axis=0, overwrite_x=True)
        yield start, value(spectrum[:n_bins])


def _power(spectrum: np.ndarray) -> np.ndarray:
    """|X|^2 as float32, without a complex temporary."""
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    return power


def _time_major(n_frames: int) -> np.ndarray:
    """The (frames, 128) output the shards store; the functions return its (1, 128, T) view."""
    return np.empty((n_frames, N_BINS), dtype=np.float32)


def spectrogram_v1(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Version 1 as :func:`spectrogram_v1_reference` computes it, vectorised.

    librosa.stft(center=True, pad_mode="reflect") frames the reflect-padded signal; librosa
    takes the power to dB, ``10 log10(max(p, 1e-10))``, floors it 99 dB below the clip's
    maximum, adds the A-weighting per bin and applies the mel matrix to those dB values. The
    same numbers with fewer passes over the (513, frames) power: both floors are applied to
    the power (one threshold, since log10 is monotonic), and as the mel product is linear,
    ``mel @ (10 L + w) = 10 (mel @ L) + mel @ w`` with ``mel @ w`` a constant per band. The
    floor needs the whole clip's maximum, so the power is collected first and the rest runs
    per block while it is in cache. float32 throughout: an absolute error near 1e-5 on values
    of at most a few hundred. Returns a (1, 128, T) view of time-major storage.
    """
    window, weighting, mel = _v1_constants(sample_rate)
    y = np.asarray(samples, dtype=np.float32)
    padded = np.pad(y, V1_N_FFT // 2, mode="reflect")
    count = 1 + (len(padded) - V1_N_FFT) // V1_HOP
    power = np.empty((V1_N_FFT // 2 + 1, count), dtype=np.float32)
    peak = AMIN
    for start, block in _spectrum_blocks(
        _frames(padded, V1_N_FFT, V1_HOP, count), window, len(power), _power
    ):
        power[:, start : start + block.shape[1]] = block
        peak = max(peak, float(block.max()))
    floor = np.float32(max(AMIN, peak * 10.0 ** (-TOP_DB / 10.0)))
    mel_of_weighting = (mel @ weighting)[:, np.newaxis]
    out = _time_major(count)
    for start in range(0, count, BLOCK_FRAMES):
        log_power = np.maximum(power[:, start : start + BLOCK_FRAMES], floor)
        np.log10(log_power, out=log_power)
        banded = mel @ log_power
        banded *= np.float32(10.0)
        banded += mel_of_weighting
        out[start : start + BLOCK_FRAMES] = banded.T
    return out.T[np.newaxis]


@lru_cache(maxsize=4)
def _v2_constants(sample_rate: int) -> tuple[np.ndarray, scipy.sparse.csr_matrix]:
    """madmom's window and its 128-band log filterbank (as its processor builds them), once."""
    probe = np.random.default_rng(0).uniform(-1, 1, 4 * V2_FRAME).astype(np.float32)
    # madmom (slow to import): only the reference implementation uses it
    from madmom.audio.signal import Signal

    spec = _madmom_chain(sample_rate, norm=True)(Signal(probe, sample_rate=sample_rate))
    filterbank = np.asarray(spec.filterbank, dtype=np.float32)
    if filterbank.shape[1] != N_BINS:
        raise RuntimeError(f"madmom filterbank has {filterbank.shape[1]} bands, expected {N_BINS}")
    return np.hanning(V2_FRAME).astype(np.float32), scipy.sparse.csr_matrix(filterbank.T)


def spectrogram_v2(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Version 2 as :func:`spectrogram_v2_reference` computes it, vectorised.

    madmom's chain: peak normalisation (skipped on digital silence), frames of 1024 samples
    starting every 128 samples (origin "future": the first frame starts at sample 0, the last
    ones are zero-padded, ceil(N / 128) frames), Hann window, |rfft| without the Nyquist bin,
    the log filterbank (per block, while the block's magnitudes are in cache), then
    log10(1 + x). Returns a (1, 128, T) view of time-major storage.
    """
    window, filterbank = _v2_constants(sample_rate)
    y = np.asarray(samples, dtype=np.float32)
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    if peak > 0:
        y = (y / peak).astype(np.float32)
    count = -(-len(y) // V2_HOP)
    padded = np.zeros(max((count - 1) * V2_HOP + V2_FRAME, 0), dtype=np.float32)
    padded[: len(y)] = y
    out = _time_major(count)
    for start, magnitude in _spectrum_blocks(
        _frames(padded, V2_FRAME, V2_HOP, count), window, V2_FRAME // 2, np.abs
    ):
        out[start : start + magnitude.shape[1]] = (filterbank @ magnitude).T
    out += np.float32(1.0)
    np.log10(out, out=out)
    return out.T[np.newaxis]


SPECTROGRAM_FUNCTIONS = {
    "fast": {1: spectrogram_v1, 2: spectrogram_v2},
    "reference": {1: spectrogram_v1_reference, 2: spectrogram_v2_reference},
}


def compute_spectrogram(
    version: int, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, implementation: str = "fast"
) -> np.ndarray:
    """Dispatch on the spectrogram version (1 = librosa, 2 = madmom) and the implementation."""
    return SPECTROGRAM_FUNCTIONS[implementation][version](samples, sample_rate)


def fix_length(spectrogram: np.ndarray, frames: int) -> np.ndarray:
    """Tile along time until at least ``frames`` frames exist, then cut at ``frames``.

    Equivalent to reading frame ``t % T`` for ``t < frames``, which is how the training data
    path cuts excerpts without materialising the tiled array.
    """
    length = spectrogram.shape[-1]
    if length == 0:
        raise ValueError("cannot length-fix an empty spectrogram")
    return np.take(spectrogram, np.arange(frames) % length, axis=-1)
