"""Shared fixtures: repository paths, the FSDD recordings, the SoX binary, small WAV writers,
and the one trained demo run of the session (``demo``), shared by every test that needs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

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
SPEC_SOX_COMMAND = (
    "sox IN.wav OUT.wav norm -0.1 silence 1 0.025 0.15% norm -0.1 reverse silence 1 0.025 0.15% reverse"
)
SPEC_SOX_EFFECTS = tuple(SPEC_SOX_COMMAND.split()[3:])


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): the machine's cores are shared, and two
    contended threads crawl. torch is imported here, only by the modules that ask."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: A tiny fine-tuning schedule for the hand-made jobs of :func:`fold_one_job`.
TINY_FIT = {"epochs": 1, "lr": 1e-3, "constant_epochs": 1, "batch_size": 4, "excerpt_frames": 8, "seed": 1}


def fold_one_job(tmp_path: Path, folds: pd.DataFrame, listing: pd.DataFrame | None, fit):
    """The training job of fold 1 over a hand-made ``folds.csv`` (columns fname, label,
    verified, fold) and training list (fname, label, manually_verified; None: none), both
    written to ``tmp_path``; no spectrograms, for the tests of which clips and targets a job
    trains on. ``fit``: its ``training.FitSettings``."""
    from workflow_lib.stages import TrainingJob

    folds.to_csv(tmp_path / "folds.csv", index=False)
    if listing is not None:
        listing.to_csv(tmp_path / "train.csv", index=False)
    return TrainingJob(
        manifest_csv=None,
        folds_csv=tmp_path / "folds.csv",
        classes_csv=None,
        fold=1,
        out_dir=tmp_path,
        preset="vgg_gap_spec1_1",
        net={},
        fit=fit,
        frames=16,
        train_list_csv=None if listing is None else tmp_path / "train.csv",
    )


@pytest.fixture(scope="session")
def fsdd_files() -> list[Path]:
    """A fixed, varied selection of real FSDD recordings (8 kHz speech); skip when absent."""
    fsdd = fsdd_dir_or_skip("needed for real-recording checks")
    wanted = [
        "0_george_0.wav",
        "3_jackson_5.wav",
        "7_lucas_12.wav",
        "9_nicolas_30.wav",
        "5_theo_44.wav",
        "2_yweweler_17.wav",
    ]
    found = [fsdd / name for name in wanted if (fsdd / name).is_file()]
    if len(found) < 5:  # another FSDD release: fall back to the first files by name
        found = sorted(fsdd.glob("*.wav"))[::97][:6]
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


def planted(
    sample_rate: int = 16000, before: float = 0.7, sound: float = 1.2, after: float = 0.5, freq: float = 440.0
) -> np.ndarray:
    """Digital silence, a tone, digital silence: SoX must cut exactly the tone out."""
    return np.concatenate(
        [
            np.zeros(int(round(before * sample_rate))),
            tone(sound, sample_rate, freq),
            np.zeros(int(round(after * sample_rate))),
        ]
    )


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


# --- the trained demo run, once per test session ----------------------------------------------
# tests/test_demo_end_to_end.py checks every output; tests/test_tagger_demo.py tags with it.

VENV_BIN = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin").is_dir() else Path(sys.executable).parent
SNAKEMAKE = VENV_BIN / "snakemake" if (VENV_BIN / "snakemake").exists() else Path("snakemake")
DEMO_TIMEOUT_S = 3 * 3600


def snakemake_command(workdir: Path, *extra: str) -> list[str]:
    return [
        str(SNAKEMAKE),
        "--cores",
        "2",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config.yaml"),
        "--directory",
        str(workdir),
        *extra,
    ]


def snakemake_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def job_counts(output: str) -> dict[str, int]:
    """Parse Snakemake's "Job stats" table ({} when it says "Nothing to be done")."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("Job stats")), None)
    if start is None:
        assert "Nothing to be done" in output, output[-3000:]
        return counts
    for line in lines[start + 1 :]:
        match = re.match(r"^\s*([A-Za-z_][\w]*)\s+(\d+)\s*$", line)
        if match:
            counts[match.group(1)] = int(match.group(2))
            if match.group(1) == "total":
                break
    return counts


def failure_report(workdir: Path, output: str) -> str:
    """The tail of Snakemake's output and of the rule logs that mention an error."""
    parts = [output[-6000:]]
    for log in sorted((workdir / "results" / "logs").rglob("*.log")):
        text = log.read_text(errors="replace")
        if "Error" in text or "Traceback" in text:
            parts.append(f"--- {log}\n{text[-3000:]}")
    return "\n".join(parts)


@dataclass
class Demo:
    workdir: Path
    seconds: float
    settings: dict

    @property
    def results(self) -> Path:
        return self.workdir / "results"

    def csv(self, relative: str) -> pd.DataFrame:
        """A result CSV with every column as a string ('' for empty), as the workflow reads it."""
        path = self.results / relative
        assert path.is_file(), f"{relative} was not written"
        return pd.read_csv(path, dtype=str, keep_default_na=False)

    def numeric(self, relative: str) -> pd.DataFrame:
        path = self.results / relative
        assert path.is_file(), f"{relative} was not written"
        return pd.read_csv(
            path,
            dtype={
                "fname": str,
                "label": str,
                "given_label": str,
                "predicted_label": str,
                "true_label": str,
                "preset": str,
                "system": str,
                "set": str,
            },
        )

    # settings, as the Snakefile resolves them
    @property
    def method(self) -> dict:
        return self.settings["method"]

    @property
    def presets(self) -> list[str]:
        return list(self.method["presets"])

    @property
    def n_folds(self) -> int:
        return int(self.method["folds"])

    @property
    def iterations(self) -> list[int]:
        return list(range(self.method["self_verification"]["iterations"] + 1))

    @property
    def classes(self) -> list[str]:
        table = self.csv("data/classes.csv")
        return list(table.sort_values("index", key=lambda s: s.astype(int))["label"])


def run_demo_workflow(workdir: Path, pytestconfig, name: str, *configfiles: Path) -> float:
    """One `snakemake --cores 2` run of the demo in ``workdir`` (extra config files after the
    repository's); fails the test with the logs' tails when it fails. Returns its wall time."""
    extra = ("--configfile", str(REPO / "config.yaml"), *map(str, configfiles)) if configfiles else ()
    command = snakemake_command(workdir)
    if extra:  # the repository's config file, then the extra ones, in one --configfile
        at = command.index("--configfile")
        command[at : at + 2] = list(extra)
    start = time.monotonic()
    proc = subprocess.run(
        command,
        cwd=workdir,
        env=snakemake_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )
    seconds = time.monotonic() - start
    (workdir / f"snakemake_{name}_run.log").write_text(proc.stdout)
    if proc.returncode != 0:
        pytest.fail(
            f"the {name} run failed (exit {proc.returncode}) after {seconds:.0f} s in "
            f"{workdir}:\n{failure_report(workdir, proc.stdout)}"
        )
    line = (
        f"\n[{name} end-to-end] snakemake --cores 2 wall time: {seconds:.1f} s "
        f"({seconds / 60:.1f} min), run directory {workdir}"
    )
    (workdir / f"{name}_wall_time.txt").write_text(f"{seconds:.1f}\n")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(line, flush=True)
    else:
        print(line)
    return seconds


@pytest.fixture(scope="session")
def demo(tmp_path_factory, pytestconfig) -> Demo:
    from workflow_lib.config import resolve_settings

    settings = resolve_settings(yaml.safe_load((REPO / "config.yaml").read_text()))
    if settings["dataset_root"]:
        pytest.skip("config.yaml does not select the demo (dataset_root is set)")
    reuse = os.environ.get("DEMO_E2E_DIR")
    workdir = Path(reuse) if reuse else tmp_path_factory.mktemp("demo_run")
    seconds = float("nan")
    if not (reuse and (workdir / "results" / "chains" / "self_verification" / "summary.csv").is_file()):
        seconds = run_demo_workflow(workdir, pytestconfig, "demo")
    return Demo(workdir, seconds, settings)


#: The multi-label demo (tests/test_multilabel_demo.py): the FSDKaggle2019 layout; to keep the
#: test suite's time in bounds, two of the three presets (one per spectrogram version, so fusion
#: and both versions still run), two folds and one self-verification iteration (8 training jobs
#: instead of the demo's 36; every rule of the multi-label path still runs).
MULTILABEL_DEMO_CONFIG = {
    "dataset": {"layout": "fsdkaggle2019"},
    "method": {"presets": ["vgg_gap_spec1_1", "vgg_gap_spec2"], "folds": 2},
    "run_presets": {"demo": {"method": {"self_verification": {"iterations": 1}}}},
}


@pytest.fixture(scope="session")
def multilabel_demo(tmp_path_factory, pytestconfig) -> Demo:
    from workflow_lib.config import deep_merge, resolve_settings

    config = deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), MULTILABEL_DEMO_CONFIG)
    settings = resolve_settings(config, MULTILABEL_DEMO_CONFIG)
    reuse = os.environ.get("MULTILABEL_DEMO_E2E_DIR")
    workdir = Path(reuse) if reuse else tmp_path_factory.mktemp("multilabel_demo_run")
    seconds = float("nan")
    if not (reuse and (workdir / "results" / "chains" / "self_verification" / "summary.csv").is_file()):
        overlay = workdir / "multilabel.yaml"
        overlay.write_text(yaml.safe_dump(MULTILABEL_DEMO_CONFIG))
        seconds = run_demo_workflow(workdir, pytestconfig, "multilabel_demo", overlay)
    return Demo(workdir, seconds, settings)


# --- the tag command in a fresh process -------------------------------------------------------

# Imports torch's name as missing before anything runs: the ONNX path must not need torch.
NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch' (blocked by the test)")
sys.meta_path.insert(0, _NoTorch())
from workflow_lib.cli import main
code = main(sys.argv[1:])
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
sys.exit(code)
"""


def run_cli(*args: str, cwd: Path, stdin: bytes | None = None, no_torch: bool = False):
    """`python -m workflow_lib.cli ...` in a fresh process, the worktree first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", NO_TORCH] if no_torch else [sys.executable, "-m", "workflow_lib.cli"]
    return subprocess.run(
        [*command, *args], cwd=cwd, env=env, input=stdin, capture_output=True, timeout=600, check=False
    )
