"""Hostile inputs against the whole workflow (issue 13), on a tiny real-audio dataset.

The worst case of the issue, a crash after hours of training, is checked with the smallest
full workflow: a predict-only dataset (no test CSV) with an undecodable test clip, an
unlisted-extension test clip and a lock directory holding `$(touch ...)`, ending with a
submission that answers every test clip; and a class named `fname` refused before any
training job. The other rows are dry runs (seconds each).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import REPO, job_counts, tone

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CLASSES = {"low": 300.0, "mid": 900.0, "high": 2400.0}

# Smallest settings the schema accepts: one preset, two folds, one epoch per stage.
TINY = """
run_preset: tiny
preprocessing: {shards: 1}
run_presets:
  tiny:
    method:
      folds: 2
      presets: [vgg_gap_spec1_1]
      spectrogram_frames: 192
      excerpt_frames: 192
      dropout: {conv: 0.05, head: 0.1}
      nets:
        vgg_gap_spec1_1: {width: 4, batch_size: 4, finetune_lr: 5.0e-4}
      initial_training: {epochs: 1, constant_epochs: 0}
      self_verification: {iterations: 1, excerpts: 2, threshold: 0.5, max_per_class: 5}
      fine_tuning: {epochs: 1, constant_epochs: 0}
      fusion: {learned_epochs: 5}
    compute: {device: cpu, training_threads: 1}
"""


def _snakemake() -> str:
    if not SNAKEMAKE.is_file():
        pytest.skip("snakemake is not installed in this environment")
    return str(SNAKEMAKE)


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> tuple[int, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            _snakemake(),
            "--cores",
            "2",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            *args,
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def write_tiny_dataset(root: Path, labels: dict[str, float] = CLASSES, test_csv: bool = False) -> Path:
    """Three tone classes, 6 clips each (3 verified); test clips incl. hostile ones."""
    rows = []
    train = _mkdir(root / "audio_train")
    for label, freq in labels.items():
        for k in range(6):
            name = f"{label}_{k}.wav"
            sf.write(
                str(train / name), tone(0.4 + 0.05 * k, 8000, freq * (1 + 0.02 * k)), 8000, subtype="PCM_16"
            )
            rows.append({"fname": name, "label": label, "manually_verified": int(k < 3)})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = _mkdir(root / "audio_test")
    for i, freq in enumerate(CLASSES.values()):
        sf.write(str(test / f"t{i}.wav"), tone(0.5, 8000, freq), 8000, subtype="PCM_16")
    sf.write(str(test / "t3.flac"), tone(0.5, 8000, 900.0), 8000, format="FLAC")
    (test / "broken.wav").write_bytes(np.random.default_rng(0).bytes(3000))  # undecodable
    if test_csv:
        names = ["t0.wav", "t1.wav", "t2.wav", "t3.flac", "broken.wav"]
        pd.DataFrame(
            {"fname": names, "label": ["low", "mid", "high", "mid", "low"], "usage": "Public"}
        ).to_csv(root / "test_post_competition.csv", index=False)
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def tiny_args(tmp_path: Path, root: Path, *extra: str, files: tuple[Path, ...] = ()) -> list[str]:
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(TINY)
    return [
        "--configfile",
        str(REPO / "config.yaml"),
        str(overlay),
        *map(str, files),
        "--config",
        f"dataset_root={root}",
        *extra,
    ]


HOSTILE_LOCK_DIR = "compute={gpu_lock_dir: 'gpu locks $(touch PWNED)'}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """The smallest full workflow on a predict-only dataset with hostile test clips."""
    tmp = tmp_path_factory.mktemp("tiny")
    root = write_tiny_dataset(tmp / "data")
    workdir = tmp / "work"
    started = time.monotonic()
    rc, output = snakemake(workdir, *tiny_args(tmp, root, HOSTILE_LOCK_DIR))
    return {
        "rc": rc,
        "output": output,
        "results": workdir / "results",
        "workdir": workdir,
        "seconds": time.monotonic() - started,
        "root": root,
        "tmp": tmp,
    }


def _logs(results: Path) -> str:
    return "\n".join(
        f"--- {p}\n{p.read_text(errors='replace')[-2000:]}"
        for p in sorted((results / "logs").rglob("*.log"))
        if "rror" in p.read_text()
    )


def test_predict_only_run_with_hostile_test_clips_ends_with_a_submission(tiny_run):
    """Rows 'no test_post_competition.csv', 'test clips that cannot be decoded', 'a .flac in
    audio_test/', '`compute.gpu_lock_dir` containing $(touch ...) or spaces': the run completes;
    every test clip has a submission row; the undecodable one is empty with its status; the
    summary says 'no test labels' and counts it; the lock dir's command never ran."""
    results = tiny_run["results"]
    assert tiny_run["rc"] == 0, tiny_run["output"][-5000:] + _logs(results)
    method = results / "chains" / "self_verification"  # the method's chain (workflow_lib/layout.py)
    submission = pd.read_csv(method / "submission.csv", dtype=str, keep_default_na=False)
    assert sorted(submission["fname"]) == ["broken.wav", "t0.wav", "t1.wav", "t2.wav", "t3.flac"]
    answers = submission.set_index("fname")["label"]
    assert answers["broken.wav"] == ""
    assert all(len(answers[f].split(" ")) == 3 for f in ["t0.wav", "t1.wav", "t2.wav", "t3.flac"])
    status = pd.read_csv(method / "submission_status.csv", dtype=str, keep_default_na=False)
    assert status.set_index("fname").loc["broken.wav", "status"] == "skipped_undecodable"
    summary = pd.read_csv(method / "summary.csv", dtype=str, keep_default_na=False)
    assert set(summary["test_note"]) == {
        (
            "no test labels; 1 of 5 test clips not predicted (empty rows in submission.csv; "
            "reasons in submission_status.csv)"
        )
    }
    scores = pd.read_csv(method / "evaluation" / "summary.csv", dtype=str, keep_default_na=False)
    assert set(scores["note"]) == {"no test labels"}
    assert not list(tiny_run["workdir"].rglob("PWNED")) and not (REPO / "PWNED").exists()
    assert json.loads((results / "run.json").read_text()) == {
        "dataset_root": str(tiny_run["root"].resolve()),
        "run_preset": "tiny",
    }


def test_class_named_fname_is_refused_before_any_training(tmp_path):
    """Row 'a class named fname, label or fold' (the worst case: it crashed in `predict`
    after every training job): the run stops at validation, naming file, line and value."""
    root = write_tiny_dataset(tmp_path / "data", {"fname": 300.0, "mid": 900.0, "high": 2400.0})
    rc, _ = snakemake(tmp_path / "work", *tiny_args(tmp_path, root))
    log = (tmp_path / "work" / "results" / "logs" / "validate_dataset.log").read_text()
    assert rc != 0
    assert f"{root / 'train.csv'}, line 2: label 'fname' is a reserved name" in log
    assert not (tmp_path / "work" / "results" / "models").exists()
    assert not (tmp_path / "work" / "results" / "spectrograms").exists()


# --------------------------------------------------------------------------- dry runs


def test_user_setting_beats_the_preset_and_invalid_values_are_refused(tmp_path):
    """Row 'a method.* setting given with --config or an extra config file under the default
    run preset': named in the log and used (the plan changes); threshold 2 is refused."""
    root = write_tiny_dataset(tmp_path / "data")
    mine = tmp_path / "mine.yaml"
    mine.write_text("method: {initial_training: {epochs: 3}}\n")
    rc, output = snakemake(tmp_path / "w", "-n", "-p", *tiny_args(tmp_path, root, files=(mine,)))
    assert rc == 0, output
    assert "your method.initial_training.epochs overrides the value of run preset tiny" in output
    assert '\\"epochs\\": 3' in output or '"epochs": 3' in output, output
    rc, output = snakemake(
        tmp_path / "w", "-n", *tiny_args(tmp_path, root), "method={self_verification: {threshold: 2}}"
    )
    assert rc != 0 and "config key method.self_verification.threshold" in output, output


def test_nan_settings_stop_the_run_at_start(tmp_path):
    """Row '`threshold: .nan` (schema lets NaN through)', with max_fraction and gamma: the
    dry run stops naming each key; no job ran, no traceback."""
    root = write_tiny_dataset(tmp_path / "data")
    nan = tmp_path / "nan.yaml"
    nan.write_text(
        "method: {self_verification: {threshold: .nan}}\n"
        "chains:\n  self_verification: {max_fraction: .nan}\n  label_spreading: {gamma: .nan}\n"
    )
    rc, output = snakemake(tmp_path / "w", "-n", *tiny_args(tmp_path, root, files=(nan,)))
    assert rc != 0, output
    for key in ("method.self_verification.threshold", "chains.self_verification.max_fraction"):
        assert f"config key {key}: nan is not a finite number" in output, output
    assert "config key chains.label_spreading.gamma: nan" in output and "Traceback" not in output, output
    assert not (tmp_path / "w" / "results").exists()


def test_chain_name_too_long_for_a_file_name_stops_the_run_at_start(tmp_path):
    """Row 'a 300-character chain name': refused by the dry run, naming run_chains and the
    longest name the layout can hold."""
    root = write_tiny_dataset(tmp_path / "data")
    name = "c" * 300
    chain = f"chains={{{name}: {{start: all, policy: paper}}}}"
    rc, output = snakemake(tmp_path / "w", "-n", *tiny_args(tmp_path, root, chain, f"run_chains=[{name}]"))
    assert rc != 0, output
    assert "config key run_chains: the name 'cccc" in output and "is 300 bytes" in output, output
    assert "use a name of at most 237 bytes" in output and "Traceback" not in output, output


def test_results_of_another_run_or_a_mistyped_dataset_are_refused(tmp_path):
    """Rows 'run_preset=paper started in a directory holding the demo's results' and 'a
    mistyped dataset_root in a directory that already holds results'."""
    root = write_tiny_dataset(tmp_path / "data")
    work = tmp_path / "w"
    (work / "results").mkdir(parents=True)
    (work / "results" / "run.json").write_text(
        json.dumps({"dataset_root": "(demo dataset)", "run_preset": "demo"})
    )
    rc, output = snakemake(
        work,
        "-n",
        "--configfile",
        str(REPO / "config.yaml"),
        "--config",
        "run_preset=paper",
        f"dataset_root={root}",
    )
    assert rc != 0 and "holds the results of another run" in output, output
    assert "Traceback" not in output
    rc, output = snakemake(
        work, "-n", "--configfile", str(REPO / "config.yaml"), "--config", f"dataset_root={root}x"
    )
    assert rc != 0 and f"config key dataset_root: {root}x does not exist" in output, output


def test_lock_left_by_a_killed_run_is_explained(tmp_path):
    """Rows 'a second run on the same directory' and 'SIGKILL of snakemake itself': a lock in
    .snakemake/locks gets a note that names --unlock (Snakemake's own names --rerun-incomplete)."""
    root = write_tiny_dataset(tmp_path / "data")
    work = tmp_path / "w"
    (work / ".snakemake" / "locks").mkdir(parents=True)
    (work / ".snakemake" / "locks" / "0.input.lock").write_text("x\n")
    _, output = snakemake(work, "-n", *tiny_args(tmp_path, root))
    assert "snakemake --unlock" in output, output


# ------------------------------------------- change detection after the finished tiny run


def planned_after(tiny_run: dict, settings: str = "") -> dict[str, int]:
    """The jobs a dry run on the finished tiny run's folder plans ({}: nothing to be done);
    ``settings``: YAML given as an extra config file (nested --config values stay strings)."""
    assert tiny_run["rc"] == 0, tiny_run["output"][-3000:]
    extra = tiny_run["tmp"] / "changed.yaml"
    extra.write_text(settings or "{}\n")
    args = tiny_args(tiny_run["tmp"], tiny_run["root"], HOSTILE_LOCK_DIR, files=(extra,))
    rc, output = snakemake(tiny_run["workdir"], "-n", *args)
    assert rc == 0, output
    return {k: v for k, v in job_counts(output).items() if k != "total"}


@contextlib.contextmanager
def changed_file(path: Path, content: bytes | None, mtime_of: Path | None = None):
    """``path`` holds ``content`` (None: removed) with the time stamp of ``mtime_of`` (what
    `cp -p` and `rsync -a` keep), inside the block; then exactly as before."""
    before = path.read_bytes() if path.exists() else None
    stamp = path.stat() if path.exists() else None
    try:
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
            reference = mtime_of.stat() if mtime_of is not None else stamp
            if reference is not None:
                os.utime(path, ns=(reference.st_atime_ns, reference.st_mtime_ns))
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)
            os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


TRAINING = {"validate_dataset", "preprocess_shard", "train_initial", "fine_tune", "self_verify"}


def test_unchanged_dataset_and_run_only_settings_rerun_nothing(tiny_run):
    """Row 'compute.checkpoint_every, compute.eval_batch_size or compute.compile changed
    between runs': nothing retrains or predicts again; only the export (seconds) reruns,
    because the bundle writes the evaluation batch into its preprocessing.json. The finished
    run itself plans nothing (the fingerprints and unrecorded params are stable)."""
    assert planned_after(tiny_run) == {}
    run_only = "compute: {eval_batch_size: 3, compile: true, checkpoint_every: {epochs: 7, minutes: 2}}"
    assert set(planned_after(tiny_run, run_only)) <= {"export_tagger", "all"}
    assert planned_after(tiny_run, "compute: {compile: true, checkpoint_every: {epochs: 7}}") == {}


@pytest.mark.parametrize(
    "setting,first",
    [
        ("method: {self_verification: {threshold: 0.4}}", "self_verify"),
        ("method: {nets: {vgg_gap_spec1_1: {width: 5}}}", "train_initial"),
        ("method: {seed: 7}", "folds"),
        ("method: {fine_tuning: {epochs: 2}}", "fine_tune"),
    ],
)
def test_settings_that_change_results_still_rerun(tiny_run, setting, first):
    """The other side of the row above: threshold, width, seed, epochs rerun their jobs."""
    planned = planned_after(tiny_run, setting)
    assert planned.get(first), planned


def test_replaced_recording_reruns_the_training_side(tiny_run):
    """Row 'an audio file replaced in place by another recording (same name)': a recording of
    the same length (same size) copied over a training clip with its old time stamp reruns
    the training split's validation and everything after it."""
    clip = tiny_run["root"] / "audio_train" / "low_0.wav"
    other = tiny_run["tmp"] / "other.wav"
    sf.write(str(other), tone(0.4, 8000, 5000.0), 8000, subtype="PCM_16")
    assert other.stat().st_size == clip.stat().st_size
    with changed_file(clip, other.read_bytes()):
        planned = planned_after(tiny_run)
    assert set(planned) >= TRAINING, planned


def test_relabelled_csv_with_an_older_time_stamp_reruns(tiny_run):
    """Row 'train.csv relabelled but with an older modification time (cp -p, rsync -a)'."""
    listing = tiny_run["root"] / "train.csv"
    relabelled = listing.read_text().replace("mid_4.wav,mid", "mid_4.wav,high").encode()
    with changed_file(listing, relabelled, mtime_of=tiny_run["root"] / "audio_train" / "low_0.wav"):
        assert os.stat(listing).st_mtime_ns <= os.stat(tiny_run["results"] / "data" / "train.csv").st_mtime_ns
        planned = planned_after(tiny_run)
    assert set(planned) >= TRAINING, planned


def test_new_test_file_of_a_predict_only_run_is_predicted_without_retraining(tiny_run):
    """Row 'a new file in audio_test/ of a predict-only run': the test side reruns (validation,
    spectrograms, prediction, submission); no training job does."""
    test_dir = tiny_run["root"] / "audio_test"
    with changed_file(test_dir / "t9.wav", (test_dir / "t0.wav").read_bytes(), mtime_of=test_dir / "t0.wav"):
        planned = planned_after(tiny_run)
    assert {"validate_test", "preprocess_shard", "predict", "fuse"} <= set(planned), planned
    assert not {"validate_dataset", "train_initial", "fine_tune", "self_verify"} & set(planned), planned
