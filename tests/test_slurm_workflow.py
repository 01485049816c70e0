"""The real workflow (a tiny demo) through SLURM equals the same workflow run locally.

One run of the repository's Snakefile with tests/slurm/demo_small.yaml on top of config.yaml
(1 preset, 2 folds, it0 + it1, 2 shards: 21 jobs + `all`) goes through the user-facing
profiles/slurm with the documented GPU-off override (--set-resources train_initial:gpu=0
fine_tune:gpu=0 self_verify:gpu=0 predict:gpu=0) on the one-node test cluster
(tests/slurm/cluster.sh); the same run goes through `snakemake --cores 2` locally, at the same
time (the SLURM run mostly waits for the plugin's status checks). Then:

* every job of a rule outside the Snakefile's `localrules:` ran as its own SLURM job (the
  bookkeeping rules ran in the Snakemake process itself): one per-job log of the plugin per job,
  named .snakemake/slurm_logs/rule_<rule>/<wildcards>/<SLURM job id>.log, the same jobs per
  rule as in the local run, and slurmctld's record of each id (Comment rule_<rule>...,
  COMPLETED) with as many CPUs as the job's threads;
* both runs ran the same shell commands (so training/self-verification/prediction got the same
  --threads) and produced the same outputs: byte-identical data, folds and spectrograms, equal
  numbers (atol 1e-5) in the training histories (except wall-clock seconds), self-verification,
  selection, predictions, evaluation and summary; equal model weights (same atol).

Takes 3 to 4.5 minutes on 2 CPUs: the SLURM run (190-260 s measured, mostly the plugin's
status-check intervals: ~14 s per stage of the DAG); the local run (~80 s alone) overlaps it.
"""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slurm.helpers import (  # noqa: F401  (slurm_cluster is a fixture)
    PLUGIN_DIR,
    PROFILE_GPU,
    REPO,
    run_snakemake_on_slurm,
    slurm_cluster,
)

pytestmark = pytest.mark.slurm

OVERLAY = REPO / "tests" / "slurm" / "demo_small.yaml"
# profiles/slurm asks for a GPU for the method's GPU rules; the documented override for a
# GPU-less cluster (README "On a SLURM cluster")
GPU_OFF = ["--set-resources"] + [
    f"{rule}:gpu=0" for rule in ("train_initial", "fine_tune", "self_verify", "predict", "judge_pool")
]
# keep the plugin's per-job logs (it deletes those of successful jobs by default)
KEEP_LOGS = ["--slurm-keep-successful-logs"]
LOCAL_CORES = 2
TIMEOUT = 900  # seconds, each run

# outputs (relative to the work directory) and how they must agree
BYTE_EQUAL = [
    "results/demo_data/**/*",
    "results/data/*.csv",
    "results/folds.csv",
    "results/spectrograms/v*/**/*.csv",
    "results/spectrograms/v*/**/*.npy",
    "results/chains/self_verification/submission.csv",
]
NUMERIC_EQUAL = [
    "results/initial/**/history.csv",
    "results/chains/*/models/**/history.csv",
    "results/chains/*/trust/**/*.csv",
    "results/chains/*/selection/*.csv",
    "results/chains/*/predictions/**/*.csv",
    "results/chains/*/evaluation/*.csv",
    "results/chains/*/summary.csv",
    "results/systems*.csv",
]
IGNORED_COLUMNS = {"history.csv": ["seconds"]}  # wall-clock time per epoch
MODELS = ["results/initial/**/*.pt", "results/chains/*/models/**/*.pt"]
ATOL = 1e-5
# not compared: logs, benchmarks (timings), plots (PNG metadata), GPU lock files
NOT_OUTPUTS = (
    "results/logs/",
    "results/benchmarks/",
    "results/chains/self_verification/plots/",
    "results/systems.png",
    "results/.gpu_locks/",
)


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run_report(name: str, rc: int | None, output: str) -> str:
    return f"{name} run: rc={rc}\n--- last lines ---\n{_tail(output)}"


def _local_env() -> dict[str, str]:
    """The environment without the plugin dir on PYTHONPATH, with the venv's bin on PATH."""
    env = dict(os.environ)
    paths = [
        p
        for p in env.get("PYTHONPATH", "").split(os.pathsep)
        if p and Path(p).resolve() != PLUGIN_DIR.resolve()
    ]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        env.pop("PYTHONPATH", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _start_local_run(workdir: Path, log: Path) -> subprocess.Popen:
    workdir.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(LOCAL_CORES),
        "--printshellcmds",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config.yaml"),
        str(OVERLAY),
        "--directory",
        str(workdir),
    ]
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, cwd=workdir, env=_local_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _job_blocks(output: str) -> list[tuple[str, str]]:
    """(job header line, shell command) of each job Snakemake announced, in order.

    The header is "rule NAME:" (a job sent to the executor, here SLURM) or "localrule NAME:"
    (a job run by the Snakemake process itself); the command is "" for a job without one.
    """
    blocks = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", output):
        header = block.split("\n", 1)[0]
        if not re.fullmatch(r"(?:local)?rule \w+:", header):
            continue
        command = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        text = command.group(1) if command else ""
        blocks.append((header, "" if text == "None" else text))  # `all` prints "None"
    return blocks


def _snakefile_local_rules() -> set[str]:
    """The rule names of the Snakefile's `localrules:` block (one per line, snakefmt's style)."""
    block = re.search(r"^localrules:\n((?:    \w+,\n)+)", (REPO / "Snakefile").read_text(), flags=re.M)
    assert block, "no localrules: block in the Snakefile"
    return set(re.findall(r"\w+", block.group(1)))


def _threads_of(command: str) -> int:
    """--threads N of a workflow_lib.cli command; 1 for rules without `threads:`."""
    found = re.findall(r"--threads (\d+)", command)
    return int(found[0]) if found else 1


def _slurm_job_logs(workdir: Path) -> dict[str, tuple[str, Path]]:
    """SLURM job id -> (rule, log): .snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<id>.log."""
    root = workdir / ".snakemake" / "slurm_logs"
    logs = {}
    for log in sorted(root.rglob("*.log")):
        top = log.relative_to(root).parts[0]
        assert top.startswith("rule_"), f"unexpected SLURM log {log} (a group job?)"
        assert re.fullmatch(r"\d+", log.stem), f"SLURM log not named <job id>.log: {log}"
        assert log.stem not in logs, f"two logs for SLURM job {log.stem}: {logs[log.stem]}, {log}"
        logs[log.stem] = (top.removeprefix("rule_"), log)
    return logs


def _scontrol_job(job_id: str) -> dict[str, str]:
    """slurmctld's record of a job (kept MinJobAge, see cluster.sh, after it ended)."""
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, f"scontrol show job {job_id}: {shown.stderr}"
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


def _files(workdir: Path, patterns: list[str]) -> list[str]:
    found = set()
    for pattern in patterns:
        found |= {str(p.relative_to(workdir)) for p in workdir.glob(pattern) if p.is_file()}
    return sorted(found)


def _outputs(workdir: Path) -> set[str]:
    results = workdir / "results"
    return {
        str(p.relative_to(workdir))
        for p in results.rglob("*")
        if p.is_file() and not str(p.relative_to(workdir)).startswith(NOT_OUTPUTS)
    }


def _numeric_differences(a: Path, b: Path) -> list[str]:
    """How two CSVs differ: columns, shape, non-numeric cells, numbers beyond ATOL."""
    left, right = pd.read_csv(a), pd.read_csv(b)
    drop = IGNORED_COLUMNS.get(a.name, [])
    left = left.drop(columns=drop, errors="ignore")
    right = right.drop(columns=drop, errors="ignore")
    if list(left.columns) != list(right.columns):
        return [f"columns {list(left.columns)} != {list(right.columns)}"]
    if left.shape != right.shape:
        return [f"shape {left.shape} != {right.shape}"]
    problems = []
    for column in left.columns:
        x, y = left[column], right[column]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            xv, yv = x.to_numpy(dtype=float), y.to_numpy(dtype=float)
            if not np.allclose(xv, yv, rtol=0, atol=ATOL, equal_nan=True):
                worst = np.nanmax(np.abs(xv - yv))
                problems.append(f"column {column}: max |difference| {worst:.3g} > {ATOL}")
        elif not x.fillna("<NA>").astype(str).equals(y.fillna("<NA>").astype(str)):
            rows = [i for i, (u, v) in enumerate(zip(x.astype(str), y.astype(str))) if u != v]
            problems.append(f"column {column}: rows {rows[:10]} differ")
    return problems


def _weight_differences(a: Path, b: Path) -> list[str]:
    """Model files: the same tensors (the archives' bytes differ: torch.save names the archive
    after the file, and the workflow writes through a randomly named temporary file)."""
    import torch

    left = torch.load(a, map_location="cpu", weights_only=False)
    right = torch.load(b, map_location="cpu", weights_only=False)
    key = "state_dict" if "state_dict" in left else "model"
    ls, rs = left[key], right[key]
    if list(ls) != list(rs):
        return [f"{key} keys differ"]
    problems = []
    for name in ls:
        x, y = ls[name].double(), rs[name].double()
        if not torch.allclose(x, y, rtol=0, atol=ATOL):
            problems.append(f"{key}.{name}: max |difference| {(x - y).abs().max():.3g}")
    return problems


def test_demo_workflow_on_slurm_equals_local_run(slurm_cluster, tmp_path):
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    local_log = tmp_path / "local.log"

    started = time.monotonic()
    local = _start_local_run(local_dir, local_log)
    try:
        slurm = run_snakemake_on_slurm(
            slurm_dir, [*GPU_OFF, *KEEP_LOGS], profile=PROFILE_GPU, configfiles=[OVERLAY], timeout=TIMEOUT
        )
        slurm_seconds = time.monotonic() - started
        local_rc = local.wait(timeout=TIMEOUT)
    finally:
        if local.poll() is None:
            local.kill()
            local.wait()
    local_seconds = time.monotonic() - started  # when the local run was collected
    print(f"\nSLURM run: {slurm_seconds:.0f} s; local run done by {local_seconds:.0f} s")

    local_output = local_log.read_text()
    slurm_output = slurm.stdout + slurm.stderr
    (tmp_path / "slurm.log").write_text(slurm_output)
    assert local_rc == 0, _run_report("local", local_rc, local_output)
    assert slurm.returncode == 0, _run_report("SLURM", slurm.returncode, slurm_output)
    check_runs(local_dir, local_output, slurm_dir, slurm_output)


def check_runs(local_dir: Path, local_output: str, slurm_dir: Path, slurm_output: str) -> None:
    """The assertions on two finished runs (their work directories and Snakemake output)."""
    _check_jobs(local_output, slurm_dir, slurm_output)
    _check_outputs(local_dir, slurm_dir)


def _check_jobs(local_output: str, slurm_dir: Path, slurm_output: str) -> None:
    """The jobs: the same in both runs, with the same commands; the bookkeeping rules ran in the
    SLURM run's Snakemake, every other job went to SLURM, one SLURM job each, with the rule's CPUs."""
    local_jobs = _job_blocks(local_output)
    slurm_jobs = _job_blocks(slurm_output)
    assert local_jobs and all(h.startswith("localrule ") for h, _ in local_jobs), local_jobs
    local_rules = Counter(h.split()[1].rstrip(":") for h, _ in local_jobs)
    assert local_rules["all"] == 1 and local_rules["train_initial"] == 2 and local_rules["fine_tune"] == 2, (
        local_rules
    )
    declared_local = _snakefile_local_rules()
    assert {"all", "fuse", "summary"} <= declared_local and "train_initial" not in declared_local
    ran_locally = Counter({rule: n for rule, n in local_rules.items() if rule in declared_local})
    expected = local_rules - ran_locally

    # what the SLURM run's Snakemake ran itself: the bookkeeping rules, each job once
    assert Counter(h.split()[1].rstrip(":") for h, _ in slurm_jobs if h.startswith("localrule ")) == (
        ran_locally
    ), slurm_jobs
    assert Counter(h.split()[1].rstrip(":") for h, _ in slurm_jobs if h.startswith("rule ")) == expected, (
        slurm_jobs
    )

    # one SLURM job (id, per-job log) per job sent to SLURM
    submitted = dict(re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", slurm_output))
    logs = _slurm_job_logs(slurm_dir)
    assert sorted(submitted) == sorted(logs), (submitted, logs)
    assert Counter(rule for rule, _ in logs.values()) == expected, logs

    # the same commands (same wildcards, params and --threads) in both runs
    local_commands = sorted(c for _, c in local_jobs if c)
    slurm_commands = sorted(c for h, c in slurm_jobs if c)
    assert len(local_commands) == sum((local_rules - Counter(["all"])).values()), local_jobs  # `all` has none
    assert slurm_commands == local_commands

    for job_id, (rule, log) in sorted(logs.items(), key=lambda item: int(item[0])):
        text = log.read_text()
        # the job-side Snakemake ran this rule's command inside that SLURM job
        assert re.search(rf"^rule {rule}:$", text, flags=re.M), (job_id, log, _tail(text))
        command = re.search(r"^Shell command: (.*)$", text, flags=re.M)
        assert command and command.group(1) in local_commands, (job_id, log, _tail(text))
        assert "Finished jobid" in text, (job_id, log, _tail(text))
        job = _scontrol_job(job_id)
        wildcards = log.parent.relative_to(slurm_dir / ".snakemake" / "slurm_logs" / f"rule_{rule}")
        comment = f"rule_{rule}" + (f"_wildcards_{wildcards}" if str(wildcards) != "." else "")
        assert job.get("Comment") == comment, (job_id, job)
        assert job.get("JobState") == "COMPLETED", (job_id, job)
        assert job.get("Partition") == "main", (job_id, job)
        assert "gpu" not in (job.get("TresPerJob", "") + job.get("TresPerNode", "")), (job_id, job)
        # SLURM gave the job as many CPUs as the rule's threads (what --threads received)
        assert int(job.get("NumCPUs", "0")) == _threads_of(command.group(1)), (job_id, job)


def _check_outputs(local_dir: Path, slurm_dir: Path) -> None:
    """The outputs: the same files, byte- or number-equal, the same model weights; and the
    tiny demo still exercised self-verification."""
    assert _outputs(slurm_dir) == _outputs(local_dir)

    byte_equal = _files(local_dir, BYTE_EQUAL)
    numeric_equal = _files(local_dir, NUMERIC_EQUAL)
    models = _files(local_dir, MODELS)
    for patterns, _found in ((BYTE_EQUAL, byte_equal), (NUMERIC_EQUAL, numeric_equal), (MODELS, models)):
        for pattern in patterns:
            assert _files(local_dir, [pattern]), f"no output matches {pattern}"
    assert len(models) == 2 * 2 * 2, models  # best + last of 2 folds x (it0, it1)

    differing = [f for f in byte_equal if not filecmp.cmp(local_dir / f, slurm_dir / f, shallow=False)]
    assert not differing, f"not byte-identical in the SLURM run: {differing}"
    numeric = {f: p for f in numeric_equal if (p := _numeric_differences(local_dir / f, slurm_dir / f))}
    assert not numeric, f"numbers differ between the local and the SLURM run: {numeric}"
    weights = {f: p for f in models if (p := _weight_differences(local_dir / f, slurm_dir / f))}
    assert not weights, f"model weights differ between the local and the SLURM run: {weights}"

    # the tiny demo still exercised self-verification (accepted clips fed the fine-tuning)
    decisions = pd.read_csv(
        local_dir / "results/chains/self_verification/trust/vgg_gap_spec1_1/it0/decisions.csv"
    )
    assert decisions["accepted"].any(), decisions
