"""Preprocessing CPU cost per clip: the workflow's fast spectrograms vs the reference pipeline.

    python benchmarks/preprocess_throughput.py [N_CLIPS] [--seed S] [--fsdd DIR]

Builds N synthetic clips (default 40) like FSDKaggle2018's: 2-10 s, 44.1 kHz, 16-bit mono WAV,
a mixture of tones, noise bursts and chirps between up to 0.5 s of leading and trailing
silence (--fsdd DIR uses N real FSDD recordings instead). Then, in ONE process on one core,
it runs the shard job's functions (``preprocess.write_shard_files(shard_clips(...))``: every clip's
spectrograms appended to the shard's array files) over all of them, versions 1 and 2, twice:

(a) fast: ``preprocessing.spectrograms: fast`` (the workflow's default);
(b) reference: librosa's and madmom's own pipelines (``spectrograms: reference``).

Both include everything a shard job does (SoX clipping in a subprocess, decoding, resampling
to 32 kHz, both versions, writing the arrays and manifests to a temporary folder). It prints
CPU seconds per clip (this process + SoX children, user + system) for both, their ratio, the
largest relative difference between the two paths' arrays, and the machine, load and command,
so the figure can be checked.
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402

from workflow_lib.audio import SPEC_SOX_EFFECTS, require_sox  # noqa: E402
from workflow_lib.machine import cpu_model, load_average  # noqa: E402
from workflow_lib.preprocess import shard_clips, write_shard_files  # noqa: E402

SR = 32000
IN_SR = 44100
#: Environment variable with the FSDD recordings folder: the default of --fsdd.
FSDD_ENV = "SV_FSDD_DIR"


def synthetic_clip(rng: np.random.Generator) -> np.ndarray:
    """2-10 s of sound (tones, chirps, noise bursts) between 0-0.5 s of digital silence."""
    seconds = rng.uniform(2.0, 10.0)
    t = np.arange(int(seconds * IN_SR)) / IN_SR
    sound = np.zeros_like(t)
    for _ in range(int(rng.integers(2, 6))):
        f0, f1 = rng.uniform(80, 8000, size=2)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
        envelope = np.exp(-((t - rng.uniform(0, seconds)) ** 2) / (2 * rng.uniform(0.05, 1.0) ** 2))
        sound += rng.uniform(0.1, 0.5) * envelope * np.sin(phase)
    sound += rng.uniform(0.001, 0.05) * rng.standard_normal(len(t))
    sound *= 0.9 / max(np.max(np.abs(sound)), 1e-9)
    pad = [np.zeros(int(rng.uniform(0, 0.5) * IN_SR)) for _ in range(2)]
    return np.concatenate([pad[0], sound, pad[1]])


def synthetic_listing(folder: Path, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"clip{i:04d}.wav"
        sf.write(str(path), synthetic_clip(rng), IN_SR, subtype="PCM_16")
        paths.append(path)
    return pd.DataFrame(
        {"fname": [p.name for p in paths], "label": "x", "verified": "1", "path": [str(p) for p in paths]}
    )


def fsdd_listing(folder: Path, n: int) -> pd.DataFrame:
    files = sorted(folder.glob("*.wav"))
    if len(files) < n:
        raise SystemExit(f"need {n} WAV files in {folder}, found {len(files)}")
    chosen = [files[i * len(files) // n] for i in range(n)]
    return pd.DataFrame(
        {"fname": [p.name for p in chosen], "label": "x", "verified": "1", "path": [str(p) for p in chosen]}
    )


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(listing: pd.DataFrame, implementation: str) -> tuple[float, float, dict]:
    """CPU and wall seconds of one shard job over ``listing``, and the arrays it wrote."""
    with tempfile.TemporaryDirectory(prefix="preprocess_bench_out_") as out:
        arrays = {v: Path(out) / f"v{v}.npy" for v in (1, 2)}
        csvs = {v: Path(out) / f"v{v}.csv" for v in (1, 2)}
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        clips = shard_clips(listing, 0, 1, [1, 2], SR, SPEC_SOX_EFFECTS, implementation)
        write_shard_files(clips, [1, 2], arrays, csvs)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        return cpu, wall, {v: np.load(path) for v, path in arrays.items()}


def print_setup(args: argparse.Namespace, listing, sox: str) -> None:
    """The command, the machine and its load, the tools' versions and the clips, before timing."""
    seconds = sum(sf.info(p).duration for p in listing["path"])
    print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, cpu={cpu_model()}, load average {load_average()} (at start)")
    print(
        f"python {platform.python_version()}, "
        f"sox {subprocess.run([sox, '--version'], capture_output=True, text=True).stdout.strip()}"
    )
    source = (
        f"FSDD recordings from {args.fsdd}"
        if args.fsdd
        else f"synthetic clips, 2-10 s at {IN_SR} Hz, seed {args.seed}"
    )
    print(
        f"clips: {len(listing)} {source}; {seconds:.1f} s of audio ({seconds / len(listing):.2f} s per clip)"
    )
    print(
        "work per clip: SoX clipping, decode + resample to 32 kHz, versions 1 and 2, appended "
        f"to the shard's files in {tempfile.gettempdir()}; 1 process, OMP/BLAS threads = 1"
    )


def compare_implementations(listing) -> None:
    """Both preprocessing paths, interleaved and best of two each (after a warm-up outside the
    timings: imports, the first resampler, filterbanks); their CPU ratio and largest difference."""
    for implementation in ("fast", "reference"):
        run(listing.iloc[:2], implementation)
    results = {}
    for implementation in ("reference", "fast", "reference", "fast"):  # interleaved
        cpu, wall, arrays = run(listing, implementation)
        best = results.get(implementation)
        if best is None or cpu < best[0]:
            results[implementation] = (cpu, wall, arrays)
    for implementation, (cpu, wall, _) in results.items():
        print(
            f"{implementation:9s}: {1000 * cpu / len(listing):8.1f} ms CPU per clip "
            f"({1000 * wall / len(listing):8.1f} ms wall), best of 2 interleaved runs"
        )
    ratio = results["reference"][0] / results["fast"][0]
    print(f"ratio: the fast path costs {ratio:.2f}x less CPU per clip than the reference")
    for version in (1, 2):
        fast, reference = results["fast"][2][version], results["reference"][2][version]
        error = np.max(np.abs(fast.astype(np.float64) - reference)) / np.max(np.abs(reference))
        print(
            f"v{version}: max |fast - reference| / max |reference| = {error:.1e} "
            f"over {reference.shape[0]} frames"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("n_clips", nargs="?", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fsdd",
        type=Path,
        help="use N real FSDD recordings from this folder "
        f"instead of synthetic clips (e.g. --fsdd ${FSDD_ENV})",
    )
    args = parser.parse_args(argv)
    sox = require_sox()
    with tempfile.TemporaryDirectory(prefix="preprocess_bench_") as tmp:
        listing = (
            fsdd_listing(args.fsdd, args.n_clips)
            if args.fsdd
            else synthetic_listing(Path(tmp), args.n_clips, args.seed)
        )
        print_setup(args, listing, sox)
        compare_implementations(listing)
        print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
