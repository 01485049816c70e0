"""This workflow used as a Snakemake module by another workflow (docs/configuration.md, README).

A host workflow in a temporary folder imports the repository's Snakefile with ``module``
(a local path), hands it its own config (config.yaml + the tiny overlay of
tests/slurm/demo_small.yaml, plus overrides of its own: two chains, one shard per split) and
``use rule * from``; it adds one rule of its own that records its shell environment. One
``snakemake --cores 2`` run of the host must then

* run the whole tiny demo through the module, with the host's overrides in force (one
  preprocessing shard, both chains in the systems table);
* run every module job with this repository's ``workflow_lib`` (each job's log names the
  version of the package it ran, which must be the checkout's);
* leave the host's own rule alone: its PYTHONPATH is what the host started with (nothing
  exported by this workflow) and Snakemake's default bash strict mode is in force;
* produce a report whose opening page links to the results page (the summary and systems tables).

Takes about 1.5 to 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

HOST_PYTHONPATH = "/nonexistent/host-only-path"
TIMEOUT_S = 1800

HOST_SNAKEFILE = textwrap.dedent(
    """
    import yaml
    from snakemake.utils import update_config

    REPO = {repo!r}
    with open(REPO + "/config.yaml") as handle:
        sv_config = yaml.safe_load(handle)
    with open(REPO + "/tests/slurm/demo_small.yaml") as handle:
        update_config(sv_config, yaml.safe_load(handle))
    # the host's own choices for the imported workflow
    sv_config["run_chains"] = ["self_verification", "verified_only"]
    sv_config["preprocessing"]["shards"] = 1


    module sv:
        snakefile:
            REPO + "/Snakefile"
        config:
            sv_config


    use rule * from sv as sv_*


    rule host_environment:
        output:
            "host/environment.txt",
        shell:
            'echo "PYTHONPATH=${{{{PYTHONPATH-unset}}}}" > {{output}}; echo "flags=$-" >> {{output}}'


    rule all:
        input:
            rules.sv_all.input,
            "host/environment.txt",
        default_target: True
    """
)


def _env() -> dict[str, str]:
    """The host's environment: its own PYTHONPATH (not this repository), the venv's python."""
    env = dict(os.environ)
    env["PYTHONPATH"] = HOST_PYTHONPATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _snakemake(host: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(host / "Snakefile"),
            "--directory",
            str(host),
            *args,
        ],
        cwd=host,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Path:
    host = tmp_path_factory.mktemp("host_workflow")
    (host / "Snakefile").write_text(HOST_SNAKEFILE.format(repo=str(REPO)))
    done = _snakemake(host, "--cores", "2")
    assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
    return host


def test_the_demo_runs_through_the_module_with_the_hosts_config(host):
    results = host / "results"
    for name in (
        "chains/self_verification/submission.csv",
        "chains/self_verification/summary.csv",
        "systems.csv",
        "report/results.html",
    ):
        assert (results / name).is_file(), name
    # one shard per split (the host's override), not the module's default of 4 or the overlay's 2
    assert sorted(p.name for p in (results / "spectrograms/v1/train").glob("shard*.npy")) == ["shard0.npy"]
    summary = pd.read_csv(results / "chains/self_verification/summary.csv")
    assert list(summary["preset"]) == ["vgg_gap_spec1_1", "fusion"]
    systems = pd.read_csv(results / "systems.csv")
    assert list(systems["system"]) == ["self_verification", "verified_only"]


def test_module_jobs_use_this_checkouts_workflow_lib(host):
    sys.path.insert(0, str(REPO))
    try:
        from workflow_lib import __version__
    finally:
        sys.path.remove(str(REPO))
    logs = sorted((host / "results" / "logs").rglob("*.log"))
    assert logs
    for log in logs:
        first = log.read_text().splitlines()[0]
        assert re.search(rf"workflow_lib {re.escape(__version__)}: [a-z-]+$", first), (log, first)


def test_the_hosts_own_rule_is_untouched(host):
    lines = dict(line.split("=", 1) for line in (host / "host/environment.txt").read_text().splitlines())
    assert lines["PYTHONPATH"] == HOST_PYTHONPATH  # nothing exported by the imported workflow
    assert "e" in lines["flags"] and "u" in lines["flags"]  # Snakemake's default: set -euo pipefail


def test_report_opening_page_links_to_the_results_page(host):
    report = host / "report.html"
    done = _snakemake(host, "--report", str(report))
    assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
    text = report.read_text()
    # the opening page (the workflow description, a JSON string in the page) links to the
    # results page and embeds no table: the report draws the rule graph beside it, over any
    # wide table (tests/test_report_screenshot.py looks at it in a browser)
    match = re.search(r'var workflow_desc = (".*?");\n', text, flags=re.S)
    assert match, "no workflow description in the report"
    opening = json.loads(match.group(1))
    assert "<table" not in opening
    assert "app.showResultInfo(" in opening and "results.html" in opening
    # the results page is registered first in the menu (sorted by name), before the pictures
    categories = set(re.findall(r'"(\d\. [A-Za-z-]+)"', text))
    assert sorted(categories) == ["1. Results", "2. Training", "3. Self-verification", "4. Evaluation"]
