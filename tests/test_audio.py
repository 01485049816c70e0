"""SoX silence clipping and the per-file outcomes of workflow_lib.audio.

docs/method.md "Preprocessing" 1 (the exact SoX command; fall back to the original audio when SoX fails
or clips everything away; skip and report undecodable files) and "Implementation notes" (digital
silence must be caught before SoX, which would turn it into full-scale noise).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import yaml

from workflow_lib import audio
from workflow_lib.audio import (
    CLIPPED,
    FALLBACK_CLIPPED_ALL,
    FALLBACK_SILENT,
    FALLBACK_SOX_FAILED,
    SKIPPED_EMPTY,
    SKIPPED_MISSING,
    SKIPPED_UNDECODABLE,
    SoxNotFoundError,
    _load,
    load_clipped,
    require_sox,
)
from workflow_lib.spectrograms import spectrogram_v1, spectrogram_v2

from conftest import SPEC_SOX_COMMAND, SPEC_SOX_EFFECTS, planted, tone, write_wav

SR = 32000
IN_SR = 16000


def sox_by_hand(sox: str, source: Path, target: Path) -> None:
    """Run docs/method.md's command literally: sox IN.wav OUT.wav norm -0.1 silence ... reverse."""
    argv = SPEC_SOX_COMMAND.split()
    argv[0], argv[1], argv[2] = sox, str(source), str(target)
    subprocess.run(argv, check=True, capture_output=True)


def dominant_frequency(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate)[np.argmax(spectrum)])


def test_effects_are_the_spec_command(repo):
    """docs/method.md "Preprocessing" 1: the library's and config.yaml's effects are the documented ones."""
    assert audio.SPEC_SOX_EFFECTS == SPEC_SOX_EFFECTS
    config = yaml.safe_load((repo / "config.yaml").read_text())
    assert tuple(config["preprocessing"]["sox_effects"]) == SPEC_SOX_EFFECTS


def test_clipping_matches_sox_run_by_hand(tmp_path, sox_binary):
    """docs/method.md "Preprocessing" 1: planted 0.7 s silence + 1.2 s tone + 0.5 s silence."""
    source = write_wav(tmp_path / "planted.wav", planted(IN_SR), IN_SR)
    by_hand = tmp_path / "by_hand.wav"
    sox_by_hand(sox_binary, source, by_hand)
    hand_info = sf.info(str(by_hand))
    hand_seconds = hand_info.frames / hand_info.samplerate

    clip = load_clipped(source, SR)
    assert clip.status == CLIPPED
    assert clip.usable
    assert clip.seconds_before_clipping == pytest.approx(2.4, abs=1e-4)
    assert clip.seconds_after_clipping == pytest.approx(hand_seconds, abs=1e-9)
    assert 1.1 < clip.seconds_after_clipping < 1.3, "the silence must be gone, the tone kept"

    expected = librosa.load(str(by_hand), sr=SR, mono=True)[0]
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert len(clip.samples) == len(expected)
    correlation = np.corrcoef(clip.samples, expected)[0, 1]
    assert correlation > 0.9999
    # The tone is still there, normalised by SoX to about -0.1 dBFS.
    assert dominant_frequency(clip.samples, SR) == pytest.approx(440, abs=5)
    assert 0.9 < np.abs(clip.samples).max() <= 1.0
    # No leading/trailing digital silence is left.
    assert np.abs(clip.samples[: SR // 100]).max() > 0.01
    assert np.abs(clip.samples[-SR // 100 :]).max() > 0.01


def test_clipping_is_repeatable(tmp_path, sox_binary):
    """docs/method.md "Preprocessing" 1: the same file must give the same clipped samples every run.

    SoX dithers 16-bit output with a time-seeded generator unless run with -R (or -D), so
    without it two preprocessing runs of one corpus differ and nothing downstream is
    reproducible bit for bit.
    """
    path = write_wav(tmp_path / "planted.wav", planted(IN_SR), IN_SR)
    first = load_clipped(path, SR)
    second = load_clipped(path, SR)
    assert first.status == second.status == CLIPPED
    np.testing.assert_array_equal(first.samples, second.samples)


def test_hostile_file_name(tmp_path, sox_binary):
    """docs/method.md "Preprocessing" 1 on a name with spaces, quotes, ';' and a leading '-'."""
    for name in ['it\'s a; "test" $(rm -rf x) file.wav', "-n.wav"]:
        path = write_wav(tmp_path / name, planted(IN_SR), IN_SR)
        clip = load_clipped(path, SR)
        assert clip.status == CLIPPED, (name, clip.detail)
        assert 1.1 < clip.seconds_after_clipping < 1.3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ['it\'s a; "test" $(rm -rf x) file.wav', "-n.wav"]
    )


def test_zero_length_wav_is_skipped_empty(tmp_path):
    """docs/method.md "Preprocessing" 1: a WAV with a header and no samples is skipped, not a crash."""
    path = write_wav(tmp_path / "empty.wav", np.zeros(0), IN_SR)
    assert path.stat().st_size > 0  # the header is there
    clip = load_clipped(path, SR)
    assert clip.status == SKIPPED_EMPTY
    assert not clip.usable and clip.samples is None
    assert clip.seconds_after_clipping == 0.0


def test_digital_silence_is_not_turned_into_noise(tmp_path):
    """docs/method.md "Implementation notes": all-zero input is caught before SoX (fallback_silent)."""
    path = write_wav(tmp_path / "silent.wav", np.zeros(2 * IN_SR), IN_SR)
    clip = load_clipped(path, SR)
    assert clip.status == FALLBACK_SILENT
    assert clip.usable
    assert clip.samples is not None and len(clip.samples) == 2 * SR
    assert not np.any(clip.samples), "digital silence must stay silence, never full-scale noise"
    assert clip.seconds_before_clipping == clip.seconds_after_clipping == pytest.approx(2.0)


def test_spike_only_falls_back_to_original(tmp_path, sox_binary):
    """docs/method.md "Preprocessing" 1: when SoX clips everything away, use the original audio."""
    samples = np.zeros(IN_SR)
    samples[IN_SR // 2] = 0.5  # one click: shorter than SoX's 25 ms, so nothing survives
    path = write_wav(tmp_path / "spike.wav", samples, IN_SR)
    clip = load_clipped(path, SR)
    assert clip.status == FALLBACK_CLIPPED_ALL
    assert clip.usable and len(clip.samples) == SR
    np.testing.assert_array_equal(clip.samples, librosa.load(str(path), sr=SR, mono=True)[0])


def test_sox_failure_falls_back_to_original(tmp_path, sox_binary):
    """docs/method.md "Preprocessing" 1: if SoX fails, the spectrogram uses the original audio."""
    path = write_wav(tmp_path / "planted.wav", planted(IN_SR), IN_SR)
    clip = load_clipped(path, SR, effects=("no_such_effect_xyz",))
    assert clip.status == FALLBACK_SOX_FAILED
    assert clip.detail  # SoX's complaint is kept for the manifest
    np.testing.assert_array_equal(clip.samples, librosa.load(str(path), sr=SR, mono=True)[0])
    broken = load_clipped(path, SR, sox=str(tmp_path / "not-a-sox-binary"))
    assert broken.status == FALLBACK_SOX_FAILED


def test_a_reused_workdir_never_hands_on_an_earlier_clips_output(tmp_path, sox_binary):
    """A shard job reuses one folder for SoX's output. A clip whose SoX exits 0 without
    writing must fall back to its own audio, not be read as the previous clip's output."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    first = write_wav(tmp_path / "first.wav", planted(IN_SR), IN_SR)
    second = write_wav(tmp_path / "second.wav", tone(1.0, IN_SR, 880.0), IN_SR)
    kept = load_clipped(first, SR, workdir=workdir)
    assert kept.status == CLIPPED
    np.testing.assert_array_equal(kept.samples, load_clipped(first, SR).samples)  # same as alone
    silent_sox = tmp_path / "sox-that-writes-nothing"
    silent_sox.write_text("#!/bin/sh\nexit 0\n")
    silent_sox.chmod(0o755)
    clip = load_clipped(second, SR, sox=str(silent_sox), workdir=workdir)
    assert clip.status == FALLBACK_SOX_FAILED and "unreadable" in clip.detail
    np.testing.assert_array_equal(clip.samples, librosa.load(str(second), sr=SR, mono=True)[0])


def test_text_file_renamed_wav_is_undecodable(tmp_path):
    """docs/method.md "Preprocessing" 1: a file that cannot be decoded is skipped and reported."""
    path = tmp_path / "text.wav"
    path.write_text("fname,label\nthis is not audio\n")
    clip = load_clipped(path, SR)
    assert clip.status == SKIPPED_UNDECODABLE
    assert not clip.usable and clip.samples is None and clip.detail


def test_stereo_44k_is_clipped_to_mono_32k(tmp_path, sox_binary):
    """docs/method.md "Preprocessing" 2: load at 32,000 Hz mono, whatever the file's format."""
    sr = 44100
    left, right = tone(1.0, sr, 300, 0.3), tone(1.0, sr, 300, 0.2)
    pad = np.zeros((sr // 2, 2))
    stereo = np.concatenate([pad, np.stack([left, right], axis=1), pad])
    path = write_wav(tmp_path / "stereo.wav", stereo, sr)
    clip = load_clipped(path, SR)
    assert clip.status == CLIPPED
    assert clip.samples.ndim == 1
    assert clip.seconds_before_clipping == pytest.approx(2.0, abs=1e-4)
    assert clip.seconds_after_clipping == pytest.approx(1.0, abs=0.01)
    assert len(clip.samples) == pytest.approx(clip.seconds_after_clipping * SR, abs=2)
    assert dominant_frequency(clip.samples, SR) == pytest.approx(300, abs=5)


def test_very_short_file_gives_spectrograms(tmp_path, sox_binary):
    """docs/method.md "Preprocessing" 1-4 on a 0.1 s clip: kept, and both versions have frames."""
    path = write_wav(tmp_path / "short.wav", tone(0.1, IN_SR), IN_SR)
    clip = load_clipped(path, SR)
    assert clip.status == CLIPPED
    assert clip.seconds_after_clipping == pytest.approx(0.1, abs=0.005)
    for function in (spectrogram_v1, spectrogram_v2):
        spec = function(clip.samples, SR)
        assert spec.shape[:2] == (1, 128) and spec.shape[-1] > 0


def test_missing_file_is_skipped(tmp_path):
    """docs/method.md "Preprocessing" 1: a listed file that is not there is skipped, not a crash."""
    clip = load_clipped(tmp_path / "nope.wav", SR)
    assert clip.status == SKIPPED_MISSING
    assert clip.samples is None and not clip.usable


def test_directory_named_wav_is_skipped(tmp_path):
    """docs/method.md "Preprocessing" 1: a directory called x.wav is not a decodable file."""
    (tmp_path / "folder.wav").mkdir()
    clip = load_clipped(tmp_path / "folder.wav", SR)
    assert not clip.usable and clip.samples is None


def test_sox_missing_gives_install_advice(monkeypatch, tmp_path):
    """docs/method.md "Preprocessing" 1 needs the SoX binary: say so, with how to install it."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    assert shutil.which("sox") is None
    with pytest.raises(SoxNotFoundError) as raised:
        require_sox()
    message = str(raised.value)
    assert "sox" in message.lower() and "apt-get install" in message and "conda" in message


def test_temporary_sox_files_are_removed(monkeypatch, tmp_path, sox_binary):
    """docs/method.md "Preprocessing" 1: every path through SoX (ok, fail, clipped away) cleans up."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert tempfile.gettempdir() == str(scratch)
    data = tmp_path / "data"
    spike = np.zeros(IN_SR)
    spike[100] = 0.5
    files = [
        write_wav(data / "a.wav", planted(IN_SR), IN_SR),
        write_wav(data / "b.wav", spike, IN_SR),
        write_wav(data / "c.wav", np.zeros(IN_SR), IN_SR),
    ]
    statuses = [load_clipped(p, SR).status for p in files]
    statuses.append(load_clipped(files[0], SR, effects=("no_such_effect_xyz",)).status)
    assert statuses == [CLIPPED, FALLBACK_CLIPPED_ALL, FALLBACK_SILENT, FALLBACK_SOX_FAILED]
    assert os.listdir(scratch) == []


@pytest.mark.parametrize(
    ("rate", "channels", "frames"),
    [(44100, 1, 44100 * 3 + 17), (44100, 2, 30001), (16000, 1, 8000), (32000, 2, 9999), (48000, 1, 7)],
)
def test_to_model_rate_is_librosa_load(tmp_path, rate, channels, frames):
    """The decode + resample path equals librosa.load(sr=32000, mono=True) bit for bit (any
    rate, mono or stereo, odd lengths), so replacing librosa.load changes no spectrogram."""
    rng = np.random.default_rng(rate + channels)
    path = tmp_path / "x.wav"
    sf.write(str(path), 0.5 * rng.standard_normal((frames, channels)), rate, subtype="PCM_16")
    expected = librosa.load(str(path), sr=SR, mono=True)[0]
    got = _load(path, SR)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
