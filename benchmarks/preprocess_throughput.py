"""Preprocessing throughput: the project's sharded path vs a naive per-file script.

    python benchmarks/preprocess_throughput.py [N_FILES] [--fsdd DIR]

Builds a listing of N real FSDD recordings (default 200) and, in ONE process on one core:

(a) project: ``process_shard`` over the whole listing with versions 1 and 2 (SoX once per file,
    the clipped audio loaded once and transformed into both versions, madmom chain built once);
(b) naive: per file, ``subprocess`` SoX into a temporary file, then for each version separately
    ``librosa.load`` the clipped file again and compute the spectrogram (so every file is loaded
    twice and the madmom processor chain is rebuilt per call, as a per-file script would do).

Prints files/s/core for both and their ratio, the machine (nproc, CPU model) and the command.
docs/method.md "Preprocessing" 1-3 defines the work; both paths compute the same arrays.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One core, including the BLAS/FFT pools, so "per core" means what it says.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_lib.audio import SPEC_SOX_EFFECTS, require_sox  # noqa: E402
from workflow_lib.preprocess import process_shard  # noqa: E402

SR = 32000
#: Environment variable with the FSDD recordings folder: the default of --fsdd.
FSDD_ENV = "SV_FSDD_DIR"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def listing_of(folder: Path, n: int) -> pd.DataFrame:
    files = sorted(folder.glob("*.wav"))
    if len(files) < n:
        raise SystemExit(f"need {n} WAV files in {folder}, found {len(files)}")
    # Spread over speakers and digits: every len/n-th file of the sorted list.
    chosen = [files[i * len(files) // n] for i in range(n)]
    return pd.DataFrame({"fname": [p.name for p in chosen], "label": [p.name.split("_")[0] for p in chosen],
                         "verified": "1", "path": [str(p) for p in chosen]})


def naive_v1(path: str) -> np.ndarray:
    y, _ = librosa.load(path, sr=SR, mono=True)
    magnitude = np.abs(librosa.stft(y, n_fft=1024, hop_length=192, window="hann", center=True,
                                    pad_mode="reflect"))
    with np.errstate(divide="ignore"):
        weighted = librosa.perceptual_weighting(magnitude**2, librosa.fft_frequencies(sr=SR, n_fft=1024),
                                                ref=1.0, amin=1e-10, top_db=99.0)
    return librosa.feature.melspectrogram(S=weighted, sr=SR, n_mels=128, fmax=None)[np.newaxis].astype(np.float32)


def naive_v2(path: str) -> np.ndarray:
    from madmom.audio.filters import LogFilterbank
    from madmom.audio.signal import FramedSignalProcessor, Signal, SignalProcessor
    from madmom.audio.spectrogram import LogarithmicFilteredSpectrogramProcessor, SpectrogramProcessor

    y, _ = librosa.load(path, sr=SR, mono=True)
    signal = SignalProcessor(num_channels=1, sample_rate=SR, norm=True)(Signal(y, sample_rate=SR))
    frames = FramedSignalProcessor(frame_size=1024, hop_size=128, origin="future")(signal)
    spec = SpectrogramProcessor(frame_size=1024)(frames)
    log_spec = LogarithmicFilteredSpectrogramProcessor(filterbank=LogFilterbank, num_bands=26,
                                                       fmin=20, fmax=14000)(spec)
    return np.asarray(log_spec).T[np.newaxis].astype(np.float32)


def run_naive(listing: pd.DataFrame, sox: str) -> int:
    frames = 0
    for path in listing["path"]:
        with tempfile.TemporaryDirectory(prefix="naive_sox_") as tmp:
            clipped = str(Path(tmp) / "clipped.wav")
            subprocess.run([sox, path, clipped, *SPEC_SOX_EFFECTS], check=True, capture_output=True)
            frames += naive_v1(clipped).shape[-1]
            frames += naive_v2(clipped).shape[-1]
    return frames


def run_project(listing: pd.DataFrame, report: bool = False) -> int:
    arrays, manifests = process_shard(listing, 0, 1, [1, 2], SR, SPEC_SOX_EFFECTS)
    if report:
        print(f"  project statuses: {manifests[1]['status'].value_counts().to_dict()}")
    return sum(a.shape[-1] for a in arrays.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("n_files", nargs="?", type=int, default=200)
    parser.add_argument("--fsdd", type=Path, default=os.environ.get(FSDD_ENV) or None,
                        help=f"the FSDD recordings folder (default: ${FSDD_ENV})")
    args = parser.parse_args(argv)
    if args.fsdd is None:
        parser.error(f"where are the FSDD recordings? Pass --fsdd DIR or set {FSDD_ENV}")
    sox = require_sox()
    listing = listing_of(args.fsdd, args.n_files)
    seconds_audio = sum(librosa.get_duration(path=p) for p in listing["path"])

    print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}), cpu={cpu_model()}")
    print(f"python {platform.python_version()}, librosa {librosa.__version__}, "
          f"sox {subprocess.run([sox, '--version'], capture_output=True, text=True).stdout.strip()}")
    print(f"files: {len(listing)} FSDD recordings, {seconds_audio:.1f} s of audio, from {args.fsdd}")
    print("threads: 1 process, OMP/BLAS threads = "
          f"{os.environ['OMP_NUM_THREADS']}; versions 1 and 2 for every file")

    # Warm-up outside the timings: imports, the first librosa resampler, madmom filterbanks.
    warm = listing.iloc[:2]
    run_project(warm)
    run_naive(warm, sox)

    results = {}
    for name, function in (("project (process_shard)", lambda: run_project(listing, True)),
                           ("naive (per-file script)", lambda: run_naive(listing, sox))):
        before, start_wall = os.times(), time.perf_counter()
        frames = function()
        wall = time.perf_counter() - start_wall
        after = os.times()
        cpu = sum(after[i] - before[i] for i in range(4))  # self + SoX children, user + system
        results[name] = wall
        print(f"{name:25s} wall {wall:7.2f} s  cpu(incl. sox) {cpu:7.2f} s  "
              f"{len(listing) / wall:7.2f} files/s/core  ({frames} frames over both versions)")
    project, naive = results["project (process_shard)"], results["naive (per-file script)"]
    print(f"ratio: project is {naive / project:.2f}x the naive throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
