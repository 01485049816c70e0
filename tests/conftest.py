"""Shared fixtures: repository paths, the FSDD recordings, the SoX binary, small WAV writers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]

#: The Free Spoken Digit Dataset's recordings folder comes from this environment variable
#: (.ci/run sets it); unset or missing, every test that needs the recordings skips and says so.
FSDD_ENV = "SV_FSDD_DIR"
FSDD_DIR = Path(os.environ.get(FSDD_ENV, "")).expanduser() if os.environ.get(FSDD_ENV) else None


def fsdd_dir_or_skip(why: str) -> Path:
    """The FSDD recordings folder, or skip the calling test with the reason and the setting."""
    if FSDD_DIR is None:
        pytest.skip(f"{FSDD_ENV} is not set: point it at the FSDD recordings folder ({why})")
    if not FSDD_DIR.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD_DIR} ({FSDD_ENV}; {why})")
    return FSDD_DIR

# docs/method.md "Preprocessing" 1, written out by hand (not imported from the library under test).
SPEC_SOX_COMMAND = ("sox IN.wav OUT.wav norm -0.1 silence 1 0.025 0.15% norm -0.1 reverse "
                    "silence 1 0.025 0.15% reverse")
SPEC_SOX_EFFECTS = tuple(SPEC_SOX_COMMAND.split()[3:])


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fsdd_files() -> list[Path]:
    """A fixed, varied selection of real FSDD recordings (8 kHz speech); skip when absent."""
    fsdd = fsdd_dir_or_skip("needed for real-recording checks")
    wanted = ["0_george_0.wav", "3_jackson_5.wav", "7_lucas_12.wav", "9_nicolas_30.wav",
              "5_theo_44.wav", "2_yweweler_17.wav"]
    found = [fsdd / name for name in wanted if (fsdd / name).is_file()]
    if len(found) < 5:  # another FSDD release: fall back to the first files by name
        found = sorted(fsdd.glob("*.wav"))[:: 97][:6]
    if len(found) < 5:
        pytest.skip(f"fewer than 5 recordings in {fsdd}")
    return found


@pytest.fixture(scope="session")
def sox_binary() -> str:
    found = shutil.which("sox")
    if found is None:
        pytest.skip("the sox binary is not on PATH (apt-get install -y sox)")
    return found


def write_wav(path: Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write a WAV file (mono 1-D or (n, channels)) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sample_rate, subtype=subtype, format="WAV")
    return path


def tone(seconds: float, sample_rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def planted(sample_rate: int = 16000, before: float = 0.7, sound: float = 1.2,
            after: float = 0.5, freq: float = 440.0) -> np.ndarray:
    """Digital silence, a tone, digital silence: SoX must cut exactly the tone out."""
    return np.concatenate([np.zeros(int(round(before * sample_rate))),
                           tone(sound, sample_rate, freq),
                           np.zeros(int(round(after * sample_rate)))])


@pytest.fixture
def repeatable_sox(tmp_path_factory, sox_binary, monkeypatch) -> Path:
    """Put a ``sox`` wrapper first on PATH that adds SoX's ``-R`` (repeatable) option.

    SoX dithers its 16-bit output with a time-seeded generator, so two runs of the SPEC command
    differ in the last bit. Tests of the storage path use this wrapper to compare arrays
    exactly; tests/test_audio.py checks the library's own repeatability separately.
    """
    folder = tmp_path_factory.mktemp("repeatable_sox_bin")
    wrapper = folder / "sox"
    wrapper.write_text(f'#!/bin/sh\nexec "{sox_binary}" -R "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return wrapper
