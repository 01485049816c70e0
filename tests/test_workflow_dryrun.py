"""The Snakemake workflow as a whole, without running any job.

docs/method.md "Data contract": a dataset in the FSDKaggle2018 layout (9,473 training clips, 41 classes,
1,600 test clips) must plan quickly: the DAG must not grow with the number of files (sharded
preprocessing), and must not need the audio to be present to plan. Bad settings must stop the
run with one readable sentence naming the key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, job_counts

SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _snakemake_binary() -> str:
    if SNAKEMAKE.is_file():
        return str(SNAKEMAKE)
    found = shutil.which("snakemake")
    if found is None:
        pytest.skip("snakemake is not installed in this environment")
    return found


def run_snakemake(*args: str, cwd: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    done = subprocess.run(
        [_snakemake_binary(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return done, time.perf_counter() - start


def dry_run(dataset_root: Path, workdir: Path, *config: str, cwd: Path):
    """snakemake -n against the repository's Snakefile, working in ``workdir``.

    ``configfile: "config.yaml"`` in the Snakefile is resolved against the working directory,
    so with --directory the repository's config.yaml has to be named with --configfile.
    """
    return run_snakemake(
        "-n",
        "--cores",
        "4",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config.yaml"),
        "--config",
        "run_preset=paper",
        f"dataset_root={dataset_root}",
        *config,
        cwd=cwd,
    )


def write_fsdkaggle_listing(
    root: Path,
    n_train: int = 9500,
    n_test: int = 1600,
    n_classes: int = 41,
    verified: float = 0.4,
    seed: int = 0,
) -> Path:
    """FSDKaggle2018-layout CSVs with no audio at all (planning must not read the audio)."""
    rng = np.random.default_rng(seed)
    classes = [f"Class_{i:02d}" for i in range(n_classes)]
    train = pd.DataFrame(
        {
            "fname": [f"{i:08x}.wav" for i in rng.choice(16**8, n_train, replace=False)],
            "label": np.asarray(classes)[np.arange(n_train) % n_classes],
            "manually_verified": (rng.random(n_train) < verified).astype(int),
        }
    )
    test = pd.DataFrame(
        {
            "fname": [f"t{i:07x}.wav" for i in range(n_test)],
            "label": np.asarray(classes)[rng.integers(0, n_classes, n_test)],
            "usage": np.where(np.arange(n_test) < 301, "Public", "Private"),
            "freesound_id": rng.integers(1, 10**6, n_test),
            "license": "CC0",
        }
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "audio_train").mkdir()
    (root / "audio_test").mkdir()
    train.to_csv(root / "train.csv", index=False)
    test.to_csv(root / "test_post_competition.csv", index=False)
    return root


def test_lint_is_clean():
    """`snakemake --lint` in the repository reports nothing."""
    done, _ = run_snakemake("--lint", cwd=REPO)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Congratulations" in output, output


def test_paper_dry_run_on_a_full_size_listing(tmp_path):
    """docs/method.md "Data contract": a 9,500 + 1,600 clip listing plans jobs per shard, never
    per file, so planning does not grow with the corpus. Checked by the job counts, not by a
    clock (a timed assertion fails on a loaded machine); the time is printed for the reader."""
    big = write_fsdkaggle_listing(tmp_path / "fsdkaggle")
    done, seconds = dry_run(big, tmp_path / "work", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    print(f"\n[paper dry run, 9,500 + 1,600 clips] {seconds:.1f} s")
    counts = job_counts(output)
    # One validation job; 2 splits x 4 shards (shards: auto, --cores 4, >= 25 files per shard);
    # 2 versions (v1 for spec1_*, v2 for spec2) x 2 splits.
    assert counts["validate_dataset"] == 1, counts
    assert counts["preprocess_shard"] == 2 * 4, counts
    assert counts["spectrogram_manifest"] == 2 * 2, counts
    assert counts["all"] == 1 and counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert "demo_dataset" not in counts, "a dataset_root was given: no demo data"
    # Only the shards depend on the number of files: a 60 + 10 clip listing plans the same
    # training jobs, and shards: auto gives it ceil(60 / 25) = 3 train shards and 1 test shard.
    small = write_fsdkaggle_listing(tmp_path / "small", n_train=60, n_test=10, n_classes=5)
    small_done, _ = dry_run(small, tmp_path / "work_small", cwd=tmp_path)
    assert small_done.returncode == 0, small_done.stdout + small_done.stderr
    small_counts = job_counts(small_done.stdout + small_done.stderr)
    assert small_counts["preprocess_shard"] == 3 + 1, small_counts
    assert {k: v for k, v in small_counts.items() if k not in ("preprocess_shard", "total")} == {
        k: v for k, v in counts.items() if k not in ("preprocess_shard", "total")
    }
    # Snakemake worked in --directory (not in the repository), and a dry run creates no outputs.
    assert (tmp_path / "work" / ".snakemake").is_dir()
    assert not (tmp_path / "work" / "results").exists()


def test_demo_dry_run_plans_the_demo_dataset(tmp_path):
    """config.yaml: an empty dataset_root generates the synthetic demo dataset first."""
    done, _ = run_snakemake(
        "-n",
        "--cores",
        "2",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path / "work"),
        "--configfile",
        str(REPO / "config.yaml"),
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    counts = job_counts(output)
    assert counts["demo_dataset"] == 1 and counts["validate_dataset"] == 1, counts


@pytest.mark.parametrize(
    "setting,fragment",
    [
        ("run_preset=papr", "config key run_preset"),
        ("dataset_root=5", "config key dataset_root"),
        ("method={folds: x}", "config key method.folds"),
        ("compute={device: tpu}", "config key compute.device"),
    ],
)
def test_bad_config_on_the_command_line_is_one_readable_error(tmp_path, setting, fragment):
    """A bad value given with --config stops the run naming the key, with no traceback."""
    root = write_fsdkaggle_listing(tmp_path / "data", n_train=60, n_test=10, n_classes=5)
    done, _ = dry_run(root, tmp_path / "work", setting, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert fragment in output, output
    assert "Traceback" not in output, output


def rule_inputs(output: str, rule: str) -> list[str]:
    """The input files of ``rule``'s (single) job in a dry run's job listing."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"rule {rule}:")
    line = next(x for x in lines[start + 1 : start + 4] if x.strip().startswith("input:"))
    return line.split("input:", 1)[1].strip().split(", ")


def test_chain_choice_cv_waits_for_the_pick_only_with_several_chains(tmp_path):
    """chain_choice: cv with two chains: one choose_chain job, which the systems table and the
    export wait for, and the export gets every chain's models; chain_choice: first (or cv with
    one chain) leaves the export on the first chain's models with no extra dependency."""
    root = write_fsdkaggle_listing(tmp_path / "data", n_train=60, n_test=10, n_classes=5)
    two = "run_chains=[self_verification,agreement]"
    runs = {
        "cv": dry_run(root, tmp_path / "cv", two, "chain_choice=cv", cwd=tmp_path)[0],
        "first": dry_run(root, tmp_path / "first", two, cwd=tmp_path)[0],
        "alone": dry_run(root, tmp_path / "alone", "chain_choice=cv", cwd=tmp_path)[0],
    }
    outputs = {name: done.stdout + done.stderr for name, done in runs.items()}
    assert all(done.returncode == 0 for done in runs.values()), outputs
    choice = "results/chosen/choice.csv"
    cv_export = rule_inputs(outputs["cv"], "export_tagger")
    assert job_counts(outputs["cv"])["choose_chain"] == 1
    assert choice in cv_export and choice in rule_inputs(outputs["cv"], "systems")
    assert any("chains/agreement/models/" in f for f in cv_export)
    assert "results/chains/agreement/predictions/fusion_weights.csv" in cv_export
    assert "results/chosen/summary.csv" in rule_inputs(outputs["cv"], "report_tables")
    first_export = rule_inputs(outputs["first"], "export_tagger")
    assert "choose_chain" not in job_counts(outputs["first"])
    assert not any("chains/agreement/" in f for f in first_export) and choice not in first_export
    assert job_counts(outputs["alone"])["choose_chain"] == 1  # results/chosen/ records the one chain
    assert choice not in rule_inputs(outputs["alone"], "export_tagger")
    assert choice not in rule_inputs(outputs["alone"], "systems")
