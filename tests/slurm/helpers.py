"""Run Snakemake on the one-node test SLURM cluster (tests/slurm/cluster.sh).

Import from a test module in tests/ (tests/ itself is on sys.path, like ``conftest``)::

    from slurm.helpers import run_snakemake_on_slurm, slurm_cluster  # noqa: F401

``slurm_cluster`` is a session fixture. Starting the cluster changes the machine (apt-get
installs munge and slurm-wlm, /etc/slurm/slurm.conf is written, daemons run as root), so it
happens only when asked: with ``SV_TEST_SLURM=1`` in the environment (``.ci/run`` sets it).
Without it every test that needs the cluster skips, saying so. With it the fixture installs the
executor plugin into ``.slurm-plugin/`` (tests/slurm/install_plugin.sh), starts the cluster
(cluster.sh start), stops it at the end of the session if it started it, and FAILS with the
daemons' log tails when the cluster cannot come up, also where this machine cannot host one
(cluster.sh exit 2: not root / no apt-get): whoever asked for the cluster test must get it.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = Path(__file__).resolve().parent
CLUSTER_SH = SLURM_DIR / "cluster.sh"
INSTALL_PLUGIN_SH = SLURM_DIR / "install_plugin.sh"

# The plugin lives outside the main venv (see install_plugin.sh); git-ignored.
PLUGIN_DIR = Path(os.environ.get("SLURM_PLUGIN_DIR", REPO / ".slurm-plugin"))
PROFILE_GPU = REPO / "profiles" / "slurm"
PROFILE_CPU = REPO / "profiles" / "slurm-cpu"  # the test cluster has no GPU

#: The environment variable that allows the tests to install and start the SLURM cluster.
OPT_IN = "SV_TEST_SLURM"

# Only sensible for tests: the plugin waits 40 s before its first status check (then +10 s per
# check without a finished job); the tiny test jobs finish in ~10 s.
TEST_ARGS = ["--slurm-init-seconds-before-status-checks", "2"]


def plugin_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment with the plugin dir on PYTHONPATH and the venv's bin on PATH.

    sbatch exports this environment into the jobs (--export=ALL), so the job-side snakemake
    finds the jobstep plugin too.
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN_DIR), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_snakemake_on_slurm(
    workdir: Path,
    extra_args: list[str],
    snakefile: Path | None = None,
    *,
    profile: Path = PROFILE_CPU,
    configfiles: Sequence[Path] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """``snakemake --profile <profile> --directory <workdir> ...`` on the test SLURM cluster.

    snakefile None: the repository's own Snakefile, with ``--configfile <repo>/config.yaml``
    (its ``configfile: "config.yaml"`` is resolved against --directory) followed by
    ``configfiles`` (overlays, merged recursively in that order; a second ``--configfile`` in
    ``extra_args`` would REPLACE the list instead). Put ``--config ...`` (e.g. demo mode) and
    targets into ``extra_args``; they come last. Runs from ``workdir``; output is captured as
    text (``stdout``/``stderr``). Needs the ``slurm_cluster`` fixture.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        str(profile),
        "--directory",
        str(workdir),
        *TEST_ARGS,
    ]
    if snakefile is None:
        cmd += [
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(REPO / "config.yaml"),
            *map(str, configfiles),
        ]
    else:
        if configfiles:
            cmd += ["--configfile", *map(str, configfiles)]
        cmd += ["--snakefile", str(snakefile)]
    cmd += [str(a) for a in extra_args]
    return subprocess.run(cmd, cwd=workdir, env=plugin_env(), capture_output=True, text=True, timeout=timeout)


def _run_script(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _output(done: subprocess.CompletedProcess) -> str:
    return f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"


def install_plugin() -> None:
    """tests/slurm/install_plugin.sh into PLUGIN_DIR (idempotent, fast when present)."""
    done = _run_script([str(INSTALL_PLUGIN_SH), str(PLUGIN_DIR)], timeout=600)
    if done.returncode != 0:
        pytest.fail(f"install_plugin.sh failed (rc={done.returncode})\n{_output(done)}", pytrace=False)


def cluster_is_up() -> bool:
    return _run_script([str(CLUSTER_SH), "status"], timeout=60).returncode == 0


def start_cluster() -> None:
    """cluster.sh start: fail loudly (only called when the user opted in with SV_TEST_SLURM=1,
    so a cluster that cannot start is a failure, never a silent skip)."""
    done = _run_script([str(CLUSTER_SH), "start"], timeout=900)
    if done.returncode != 0:
        stop_cluster()  # whatever half of it came up
        pytest.fail(
            f"tests/slurm/cluster.sh start failed (rc={done.returncode})\n{_output(done)}", pytrace=False
        )


def stop_cluster() -> None:
    done = _run_script([str(CLUSTER_SH), "stop"], timeout=120)
    if done.returncode != 0:
        print(f"tests/slurm/cluster.sh stop failed (rc={done.returncode})\n{_output(done)}", file=sys.stderr)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The one-node cluster and the plugin; stops the cluster afterwards if it started it.

    A shared flock on $SLURM_TEST_DIR/users.lock marks this session as a user of the cluster,
    so that a concurrent pytest session does not lose the cluster under its feet: the one
    that started it stops it only if nobody else holds the lock by then.
    SLURM_TEST_KEEP_CLUSTER=1 leaves it running (faster reruns while developing).
    """
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(
            f"SLURM cluster tests are opt-in: they install munge and slurm-wlm with apt-get, "
            f"write /etc/slurm/slurm.conf and start SLURM daemons as root. Set {OPT_IN}=1 "
            f"to run them (.ci/run does)."
        )
    install_plugin()
    state_dir = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/slurm-test"))
    users = None
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        users = open(state_dir / "users.lock", "a")  # noqa: SIM115 (held until the session ends)
        fcntl.flock(users, fcntl.LOCK_SH)
    except OSError:  # e.g. not writable for a non-root user: cluster.sh decides below
        users = None
    try:
        was_up = cluster_is_up()
        if not was_up:
            start_cluster()
        yield
        if not was_up and os.environ.get("SLURM_TEST_KEEP_CLUSTER") != "1":
            last_user = True
            if users is not None:
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    last_user = False
            if last_user:
                stop_cluster()
    finally:
        if users is not None:
            users.close()
