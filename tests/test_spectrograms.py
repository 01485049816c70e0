"""The two spectrogram versions and the length fix against docs/method.md "Preprocessing" 2-5.

The references below call librosa and madmom directly with the parameters written in docs/method.md,
so a changed hop, window, filterbank or band count in workflow_lib.spectrograms shows up here.
Real recordings: the FSDD corpus (8 kHz speech, so loading at 32 kHz also exercises resampling).
Both implementations are checked: the reference one (librosa's and madmom's own pipelines)
against the direct calls within 1e-5, the fast one (the workflow's default) within 1e-3, on
real recordings and on hostile clips (digital silence, 0.05 s, 30 s).
"""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from workflow_lib import spectrograms
from workflow_lib.spectrograms import (
    compute_spectrogram,
    fix_length,
    spectrogram_v1,
    spectrogram_v1_reference,
    spectrogram_v2,
    spectrogram_v2_reference,
)

SR = 32000
TOLERANCE = {"reference": 1e-5, "fast": 1e-3}
FUNCTIONS = {
    ("reference", 1): spectrogram_v1_reference,
    ("reference", 2): spectrogram_v2_reference,
    ("fast", 1): spectrogram_v1,
    ("fast", 2): spectrogram_v2,
}


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """max |a - b| / max |b|: robust where single entries of the reference are near zero."""
    scale = float(np.max(np.abs(reference)))
    assert scale > 0, "reference spectrogram is all zero; the comparison would be meaningless"
    return float(np.max(np.abs(actual.astype(np.float64) - reference.astype(np.float64)))) / scale


def reference_v1(y: np.ndarray) -> np.ndarray:
    """docs/method.md "Preprocessing" 2, written out with librosa."""
    magnitude = np.abs(
        librosa.stft(y, n_fft=1024, hop_length=192, window="hann", center=True, pad_mode="reflect")
    )
    with np.errstate(divide="ignore"):
        weighted = librosa.perceptual_weighting(
            magnitude**2, librosa.fft_frequencies(sr=SR, n_fft=1024), ref=1.0, amin=1e-10, top_db=99.0
        )
    mel = librosa.feature.melspectrogram(S=weighted, sr=SR, n_mels=128, fmax=None)
    return mel[np.newaxis]


def reference_v2(y: np.ndarray) -> np.ndarray:
    """docs/method.md "Preprocessing" 3, written out with madmom's processors one after another."""
    from madmom.audio.filters import LogFilterbank
    from madmom.audio.signal import FramedSignalProcessor, Signal, SignalProcessor
    from madmom.audio.spectrogram import (
        LogarithmicFilteredSpectrogramProcessor,
        SpectrogramProcessor,
    )

    signal = SignalProcessor(num_channels=1, sample_rate=SR, norm=True)(Signal(y, sample_rate=SR))
    frames = FramedSignalProcessor(frame_size=1024, hop_size=128, origin="future")(signal)
    spec = SpectrogramProcessor(frame_size=1024)(frames)
    log_spec = LogarithmicFilteredSpectrogramProcessor(
        filterbank=LogFilterbank, num_bands=26, fmin=20, fmax=14000
    )(spec)
    log_spec = np.asarray(log_spec)
    assert log_spec.shape[1] == 128, "docs/method.md: 26 bands per octave from 20 Hz to 14 kHz = 128 bands"
    return log_spec.T[np.newaxis]


@pytest.fixture(scope="module")
def loaded(fsdd_files):
    """The recordings as docs/method.md loads them: librosa.load(path, sr=32000, mono=True)."""
    return {path.name: librosa.load(str(path), sr=SR, mono=True)[0] for path in fsdd_files}


@pytest.mark.parametrize("implementation", ["reference", "fast"])
@pytest.mark.parametrize("version", [1, 2])
def test_matches_direct_library_calls_on_real_recordings(loaded, version, implementation):
    """docs/method.md "Preprocessing" 2 (v1, librosa) and 3 (v2, madmom), 4 (shape (1, 128, T), float32)."""
    function = FUNCTIONS[implementation, version]
    reference = {1: reference_v1, 2: reference_v2}[version]
    hop = {1: 192, 2: 128}[version]
    for name, y in loaded.items():
        actual = function(y, SR)
        expected = reference(y)
        assert actual.dtype == np.float32, name
        assert actual.ndim == 3 and actual.shape[:2] == (1, 128), (name, actual.shape)
        assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
        # Frame count follows the hop: about one frame per hop samples (docs/method.md 2/3).
        assert abs(actual.shape[-1] - len(y) / hop) <= 2, (name, actual.shape, len(y))
        assert np.all(np.isfinite(actual)), name
        error = relative_error(actual, expected)
        assert error < TOLERANCE[implementation], f"{name}: v{version} relative error {error:.2e}"
        # The dispatcher used by the preprocessing code gives the same array.
        np.testing.assert_array_equal(compute_spectrogram(version, y, SR, implementation), actual)
    if implementation == "fast":  # the workflow's default
        np.testing.assert_array_equal(compute_spectrogram(version, y, SR), actual)


def _hostile_clips(loaded) -> dict[str, np.ndarray]:
    """Digital silence, a 0.05 s clip and a 30 s clip (real recordings one after another)."""
    recordings = list(loaded.values())
    joined = np.concatenate(recordings * (30 * SR // sum(map(len, recordings)) + 1))[: 30 * SR]
    return {"silence": np.zeros(SR, dtype=np.float32), "0.05 s": recordings[0][: SR // 20], "30 s": joined}


@pytest.mark.parametrize("version", [1, 2])
def test_fast_path_matches_the_reference_on_hostile_clips(loaded, version):
    """The fast path equals librosa's/madmom's pipelines (within 1e-3) where edges dominate.

    Silence: v1 is the 99 dB floor, v2 exactly 0 (madmom's peak normalisation is skipped).
    0.05 s: a handful of frames, all touching the padded edges. 30 s: the longest FSDKaggle clip.
    """
    for name, y in _hostile_clips(loaded).items():
        expected = FUNCTIONS["reference", version](y, SR)
        actual = compute_spectrogram(version, y, SR)
        assert actual.shape == expected.shape and actual.dtype == np.float32, name
        assert np.all(np.isfinite(actual)), name
        if name == "silence" and version == 2:
            np.testing.assert_array_equal(actual, expected)
            continue
        error = relative_error(actual, expected)
        assert error < TOLERANCE["fast"], f"{name}: v{version} relative error {error:.2e}"


def test_fast_path_is_not_the_reference_code():
    """The comparison above must compare two computations, not one function with itself."""
    assert spectrogram_v1 is not spectrogram_v1_reference
    assert spectrogram_v2 is not spectrogram_v2_reference
    assert compute_spectrogram.__defaults__[-1] == "fast"


def test_versions_differ_and_v1_is_not_normalised(loaded):
    """docs/method.md "Preprocessing" 4: no normalisation; v1 applies the mel bank to dB values."""
    y = next(iter(loaded.values()))
    v1, v2 = spectrogram_v1(y, SR), spectrogram_v2(y, SR)
    assert v1.shape[-1] != v2.shape[-1]  # hop 192 vs hop 128
    assert v1.min() < 0 < v1.max()  # weighted dB through the mel bank: signed values
    assert v2.min() >= 0  # log10(1 + x) >= 0
    assert abs(float(v1.mean())) > 1e-3 or abs(float(v1.std()) - 1) > 1e-3  # not standardised


def test_v2_is_invariant_to_signal_scale(loaded):
    """docs/method.md "Implementation notes": with norm=True the version-2 chain ignores the scale."""
    y = next(iter(loaded.values()))
    a = spectrogram_v2(y, SR)
    b = spectrogram_v2(y * 0.05, SR)
    assert relative_error(b, a) < 1e-4


@pytest.mark.parametrize("implementation", ["reference", "fast"])
@pytest.mark.parametrize("version", [1, 2])
def test_digital_silence_gives_finite_spectrograms(version, implementation):
    """docs/method.md "Implementation notes": silent clips are kept (original audio), so their
    spectrograms must be usable numbers. madmom's norm=True divides by the peak, which is 0
    for digital silence; the result must not be NaN (v2 of silence is log10(1 + 0) = 0)."""
    silence = np.zeros(SR, dtype=np.float32)
    spec = compute_spectrogram(version, silence, SR, implementation)
    assert spec.shape[:2] == (1, 128) and spec.shape[-1] > 0
    assert np.all(np.isfinite(spec)), f"v{version} of digital silence contains NaN/inf"
    if version == 2:
        np.testing.assert_array_equal(spec, 0)
        assert spec.shape == FUNCTIONS[implementation, 2](np.full(SR, 1e-3, np.float32), SR).shape


def test_fix_length_tiles_a_short_spectrogram():
    """docs/method.md "Preprocessing" 5: tile along time until >= 3,000 frames, then cut at 3,000."""
    spec = np.random.default_rng(0).standard_normal((1, 128, 7)).astype(np.float32)
    fixed = fix_length(spec, 3000)
    assert fixed.shape == (1, 128, 3000)
    assert fixed.dtype == np.float32
    expected = np.tile(spec, (1, 1, int(np.ceil(3000 / 7))))[:, :, :3000]
    np.testing.assert_array_equal(fixed, expected)
    # Exact values at the seams: frame t is frame t mod 7.
    for t in (0, 6, 7, 13, 14, 2999):
        np.testing.assert_array_equal(fixed[:, :, t], spec[:, :, t % 7])


def test_fix_length_cuts_a_long_spectrogram():
    """docs/method.md "Preprocessing" 5: a spectrogram longer than 3,000 frames keeps its first 3,000."""
    spec = np.random.default_rng(1).standard_normal((1, 128, 4321)).astype(np.float32)
    fixed = fix_length(spec, 3000)
    assert fixed.shape == (1, 128, 3000)
    np.testing.assert_array_equal(fixed, spec[:, :, :3000])


def test_fix_length_exact_length_and_one_frame():
    """docs/method.md "Preprocessing" 5: exactly 3,000 frames is unchanged; one frame is repeated."""
    spec = np.random.default_rng(2).standard_normal((1, 128, 3000)).astype(np.float32)
    np.testing.assert_array_equal(fix_length(spec, 3000), spec)
    one = np.arange(128, dtype=np.float32).reshape(1, 128, 1)
    np.testing.assert_array_equal(fix_length(one, 3000), np.repeat(one, 3000, axis=-1))
    with pytest.raises(ValueError):
        fix_length(np.zeros((1, 128, 0), dtype=np.float32), 3000)


def test_fix_length_on_a_real_spectrogram(loaded):
    """docs/method.md "Preprocessing" 5 on a real clip: a 0.3-0.5 s recording must be tiled, not padded."""
    y = next(iter(loaded.values()))
    spec = spectrogram_v1(y, SR)
    length = spec.shape[-1]
    assert length < 3000
    fixed = fix_length(spec, 3000)
    np.testing.assert_array_equal(fixed[:, :, :length], spec)
    np.testing.assert_array_equal(fixed[:, :, length : 2 * length], spec)
    assert spectrograms.N_BINS == 128


@pytest.mark.parametrize("version", [1, 2])
def test_fast_path_returns_a_view_of_time_major_storage(loaded, version):
    """Shards are stored (frames, 128): the fast functions compute in that layout, so the
    shard job's transpose of their (1, 128, T) result is a view, not a copy."""
    spec = compute_spectrogram(version, next(iter(loaded.values())), SR)
    assert spec.shape[:2] == (1, 128)
    assert spec[0].T.flags.c_contiguous
