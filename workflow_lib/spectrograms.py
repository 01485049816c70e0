"""The two spectrogram versions of docs/method.md "Preprocessing" 2-5, and the length fix.

Both return float32 arrays of shape (1, 128, T): frequency first, time last, no normalisation.
"""

from __future__ import annotations

from functools import lru_cache

import librosa
import numpy as np

SAMPLE_RATE = 32000
N_BINS = 128


def spectrogram_v1(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """librosa version: STFT -> perceptually weighted power in dB -> mel filterbank.

    The mel filterbank is applied to the weighted dB values, as the original system does.
    """
    magnitude = np.abs(librosa.stft(samples, n_fft=1024, hop_length=192, window="hann",
                                    center=True, pad_mode="reflect"))
    frequencies = librosa.fft_frequencies(sr=sample_rate, n_fft=1024)
    with np.errstate(divide="ignore"):  # A-weighting evaluates log10(0) at 0 Hz, by design
        weighted = librosa.perceptual_weighting(magnitude**2, frequencies, ref=1.0, amin=1e-10,
                                                top_db=99.0)
    mel = librosa.feature.melspectrogram(S=weighted, sr=sample_rate, n_mels=N_BINS, fmax=None)
    return mel[np.newaxis].astype(np.float32)


@lru_cache(maxsize=4)
def _madmom_chain(sample_rate: int, norm: bool = True):
    """Build the madmom processor chain once per process (filterbank construction is slow)."""
    from madmom.audio.filters import LogFilterbank
    from madmom.audio.signal import FramedSignalProcessor, SignalProcessor
    from madmom.audio.spectrogram import (
        LogarithmicFilteredSpectrogramProcessor,
        SpectrogramProcessor,
    )
    from madmom.processors import SequentialProcessor

    return SequentialProcessor([
        SignalProcessor(num_channels=1, sample_rate=sample_rate, norm=norm),
        FramedSignalProcessor(frame_size=1024, hop_size=128, origin="future"),
        SpectrogramProcessor(frame_size=1024),
        LogarithmicFilteredSpectrogramProcessor(filterbank=LogFilterbank, num_bands=26,
                                                fmin=20, fmax=14000),
    ])


def spectrogram_v2(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """madmom version: 128 log-spaced bands of log10(1 + |STFT|).

    The signal is handed over already resampled (``Signal(y, sample_rate)``), which avoids
    madmom's ffmpeg dependency for files at other sample rates (docs/method.md "Implementation notes").
    """
    from madmom.audio.signal import Signal

    # norm=True divides by the peak: 0/0 on digital silence, so silence is left unnormalised.
    chain = _madmom_chain(sample_rate, norm=bool(np.any(samples)))
    spec = np.asarray(chain(Signal(samples, sample_rate=sample_rate)))
    if spec.shape[1] != N_BINS:
        raise RuntimeError(f"madmom chain produced {spec.shape[1]} bands, expected {N_BINS}")
    return spec.T[np.newaxis].astype(np.float32)


SPECTROGRAM_FUNCTIONS = {1: spectrogram_v1, 2: spectrogram_v2}


def compute_spectrogram(version: int, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Dispatch on the spectrogram version (1 = librosa, 2 = madmom)."""
    return SPECTROGRAM_FUNCTIONS[version](samples, sample_rate)


def fix_length(spectrogram: np.ndarray, frames: int) -> np.ndarray:
    """Tile along time until at least ``frames`` frames exist, then cut at ``frames``.

    Equivalent to reading frame ``t % T`` for ``t < frames``, which is how the training data
    path cuts excerpts without materialising the tiled array.
    """
    length = spectrogram.shape[-1]
    if length == 0:
        raise ValueError("cannot length-fix an empty spectrogram")
    return np.take(spectrogram, np.arange(frames) % length, axis=-1)
