"""Files per second of the `tag` command on CPU: the demo bundle, and paper-width networks.

    python benchmarks/tagger_throughput.py [--run DIR] [--files N] [--paper-files M]

DIR is a finished demo run (default: this folder, after `make demo`): its results/export/ is
the demo bundle and its results/demo_data/audio_test/ the audio (80 clips, 0.3-6 s of sound
plus up to 1 s of silence each side, 16 kHz). The paper-width bundles are built here with
RANDOM weights (the cost of a network does not depend on its weights): "paper_net" is one
width-64 network on version-1 spectrograms; "paper_system" is the paper's whole fused tagger,
3 presets (widths 48, 64, 64; versions 1, 1, 2) x 4 folds, 3,000 frames, 41 classes.

Every measurement runs the same command a user runs, in a fresh process, so the figure
includes start-up (imports, loading the bundle): files / wall seconds. Prints the machine
(nproc, CPU model, load average) and each command.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workflow_lib.audio import SPEC_SOX_EFFECTS  # noqa: E402
from workflow_lib.export import FusedTagger, write_bundle  # noqa: E402
from workflow_lib.machine import cpu_model  # noqa: E402
from workflow_lib.model import build_model  # noqa: E402
from workflow_lib.tagger import TaggerSpec  # noqa: E402

PAPER_PRESETS = [("vgg_gap_spec1_1", 1, 48), ("vgg_gap_spec1_2", 1, 64), ("vgg_gap_spec2", 2, 64)]


def random_bundle(folder: Path, presets: list[tuple[str, int, int]], folds: int) -> Path:
    """A bundle of randomly initialised paper-width networks (mean fusion, 41 classes)."""
    torch.manual_seed(0)
    versions = sorted({v for _, v, _ in presets})
    classes = [f"class_{i:02d}" for i in range(41)]
    members = [[build_model(width, len(classes)) for _ in range(folds)] for _, _, width in presets]
    weights = np.full(len(presets), 1.0 / len(presets))
    tagger = FusedTagger(members, [versions.index(v) for _, v, _ in presets], weights, None)
    spec = TaggerSpec(
        classes=classes,
        sample_rate=32000,
        sox_effects=list(SPEC_SOX_EFFECTS),
        frames=3000,
        versions=versions,
        fusion="mean",
        presets=[
            {
                "name": n,
                "spectrogram": v,
                "width": w,
                "iteration": 0,
                "folds": folds,
                "weight": 1.0 / len(presets),
            }
            for n, v, w in presets
        ],
    )
    write_bundle(tagger.eval(), spec, folder, "# random-weight benchmark bundle\n")
    return folder


def measure(name: str, bundle: Path, files: list[Path], backend: str, workdir: Path) -> None:
    """Run `tag` on the files (listed in a file) and print files per wall second."""
    listing = workdir / f"{name}_{backend}.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    command = [
        sys.executable,
        "-m",
        "workflow_lib.cli",
        "tag",
        "--list",
        str(listing),
        "--bundle",
        str(bundle),
        "--backend",
        backend,
        "--device",
        "cpu",
        "--out",
        str(workdir / f"{name}_{backend}.csv"),
    ]
    load = os.getloadavg()[0]
    start = time.monotonic()
    done = subprocess.run(
        command, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    print(
        f"{name:13s} {backend:11s} {len(files):4d} files  {seconds:7.1f} s  "
        f"{len(files) / seconds:7.2f} files/s  (load before {load:.1f}, after "
        f"{os.getloadavg()[0]:.1f})"
    )
    print(f"    {shlex.join(command)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=REPO, help="a finished demo run's folder")
    parser.add_argument("--files", type=int, default=80, help="clips for the demo bundle")
    parser.add_argument("--paper-files", type=int, default=8, help="clips for the paper bundles")
    parser.add_argument("--backends", nargs="+", default=["onnx", "torchscript"])
    args = parser.parse_args()
    bundle = args.run / "results" / "export"
    audio = sorted((args.run / "results" / "demo_data" / "audio_test").glob("*.wav"))
    if not (bundle / "tagger.onnx").is_file() or not audio:
        raise SystemExit(f"{args.run} holds no finished demo run (results/export, test audio)")
    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory(prefix="tagger_bench_") as tmp:
        work = Path(tmp)
        paper_net = random_bundle(work / "paper_net", [("width64", 1, 64)], folds=1)
        paper_system = random_bundle(work / "paper_system", PAPER_PRESETS, folds=4)
        for backend in args.backends:
            measure("demo_bundle", bundle, audio[: args.files], backend, work)
            measure("paper_net", paper_net, audio[: args.paper_files], backend, work)
            measure("paper_system", paper_system, audio[: args.paper_files], backend, work)


if __name__ == "__main__":
    main()
