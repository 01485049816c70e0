"""The SLURM profiles (profiles/slurm, profiles/slurm-cpu) on a real one-node SLURM cluster.

tests/slurm/cluster.sh starts slurmctld + slurmd on this machine (installing Debian's
slurm-wlm and munge as root when missing); tests/slurm/install_plugin.sh puts
snakemake-executor-plugin-slurm into .slurm-plugin/ (not into the venv: see that script).
A cluster that does not come up FAILS these tests; they skip only on a machine that cannot
host one (not root, or no apt-get, and no SLURM installed).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slurm.helpers import (  # noqa: F401  (slurm_cluster is a fixture)
    PROFILE_CPU,
    PROFILE_GPU,
    plugin_env,
    run_snakemake_on_slurm,
    slurm_cluster,
)

pytestmark = pytest.mark.slurm

GPU_RULES = ("train_initial", "fine_tune", "self_verify", "predict", "judge_pool")
REPO = Path(__file__).resolve().parents[1]

# Three rules, one depending on the other two; each writes the SLURM job id it ran under.
# The rules carry the GPU rule names, and fine_tune even declares a GPU itself: the CPU
# profile must still send no GPU request (the test cluster has none, sbatch would refuse).
TINY_SNAKEFILE = """\
rule all:
    input: "fine_tune.txt"

rule train_initial:
    output: "train_initial.txt"
    shell: "echo $SLURM_JOB_ID > {output}"

rule prepare:
    output: "prepare.txt"
    shell: "echo $SLURM_JOB_ID > {output}"

rule fine_tune:
    input: "train_initial.txt", "prepare.txt"
    output: "fine_tune.txt"
    resources: gpu=1
    shell: "echo $SLURM_JOB_ID > {output}"
"""

ONE_GPU_RULE_SNAKEFILE = """\
rule train_initial:
    output: "train_initial.txt"
    shell: "echo $SLURM_JOB_ID > {output}"
"""


def _output(done: subprocess.CompletedProcess) -> str:
    return f"rc={done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"


def _job_ids(workdir: Path, names: list[str]) -> dict[str, str]:
    return {name: (workdir / f"{name}.txt").read_text().strip() for name in names}


def _scontrol_job(job_id: str) -> dict[str, str]:
    """slurmctld's record of a job (kept MinJobAge after it ended: cluster.sh), as Key=Value."""
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, f"scontrol show job {job_id}: {shown.stderr}"
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


def test_plugin_is_not_in_the_main_venv():
    """Importing the plugin stalls every snakemake start when no slurmctld answers: keep it out."""
    probe = "import importlib.util as u; print(u.find_spec('snakemake_executor_plugin_slurm'))"
    env = {k: v for k, v in plugin_env().items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "None", _output(done)


def test_profiles_differ_only_in_the_gpu_request():
    gpu = yaml.safe_load((PROFILE_GPU / "config.yaml").read_text())
    cpu = yaml.safe_load((PROFILE_CPU / "config.yaml").read_text())
    assert gpu["executor"] == "slurm"
    assert gpu["slurm-status-command"] == "squeue"
    assert gpu["default-resources"]["slurm_partition"] == "main"
    assert {rule: gpu["set-resources"][rule]["gpu"] for rule in GPU_RULES} == dict.fromkeys(GPU_RULES, 1)
    assert {rule: cpu["set-resources"][rule]["gpu"] for rule in GPU_RULES} == dict.fromkeys(GPU_RULES, 0)
    assert {k: v for k, v in gpu.items() if k != "set-resources"} == {
        k: v for k, v in cpu.items() if k != "set-resources"
    }
    assert set(gpu["set-resources"]) == set(cpu["set-resources"]) == set(GPU_RULES)


def test_every_rule_that_declares_a_gpu_is_in_the_profiles():
    """A rule with `resources: gpu=` that the profile forgot would run GPU-less on a cluster."""
    declared = set()
    for path in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=\s*rule )", path.read_text()):
            name = re.match(r"\s*rule (\w+):", block)
            if name and re.search(r"resources:\s*\n\s*gpu=", block):
                declared.add(name.group(1))
    assert declared == set(GPU_RULES)


def test_snakemake_offers_the_slurm_executor_with_the_plugin_dir(slurm_cluster):
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--help"],
        env=plugin_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, _output(done)
    assert re.search(r"--executor \{[^}]*\bslurm\b", done.stdout), done.stdout[:3000]
    assert "--slurm-status-command" in done.stdout
    assert "--slurm-init-seconds-before-status-checks" in done.stdout


def test_three_rules_run_as_distinct_slurm_jobs(slurm_cluster, tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(TINY_SNAKEFILE)
    workdir = tmp_path / "work"
    done = run_snakemake_on_slurm(workdir, [], snakefile)
    assert done.returncode == 0, _output(done)

    rules = ["train_initial", "prepare", "fine_tune"]
    ids = _job_ids(workdir, rules)
    assert all(re.fullmatch(r"\d+", job_id) for job_id in ids.values()), ids
    assert len(set(ids.values())) == len(rules), ids
    for rule, job_id in ids.items():
        job = _scontrol_job(job_id)
        # each id really is the SLURM job of that rule (the plugin sets --comment rule_<name>)
        assert job.get("Comment") == f"rule_{rule}", (rule, job)
        assert job.get("JobState") == "COMPLETED", (rule, job)
        assert job.get("Partition") == "main", (rule, job)
        # the GPU rules asked for no GPU on this cluster
        assert "gpu" not in (job.get("TresPerJob", "") + job.get("TresPerNode", "")), (rule, job)


def test_gpu_profile_asks_sbatch_for_a_gpu(slurm_cluster, tmp_path):
    """profiles/slurm sends --gpus=1 for train_initial; this GPU-less cluster refuses it."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(ONE_GPU_RULE_SNAKEFILE)
    done = run_snakemake_on_slurm(tmp_path / "work", [], snakefile, profile=PROFILE_GPU, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0, _output(done)
    assert "SLURM sbatch failed" in output, _output(done)
    assert re.search(r"sbatch .*--gpus=1", output), _output(done)


def test_gpu_profile_with_the_documented_command_line_override(slurm_cluster, tmp_path):
    """profiles/slurm + `--set-resources train_initial:gpu=0 fine_tune:gpu=0` runs GPU-less."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(ONE_GPU_RULE_SNAKEFILE)
    workdir = tmp_path / "work"
    done = run_snakemake_on_slurm(
        workdir, ["--set-resources", "train_initial:gpu=0", "fine_tune:gpu=0"], snakefile, profile=PROFILE_GPU
    )
    assert done.returncode == 0, _output(done)
    assert re.fullmatch(r"\d+", _job_ids(workdir, ["train_initial"])["train_initial"])
