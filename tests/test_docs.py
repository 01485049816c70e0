"""The documentation in docs/ stays true to the code that cites it and to config.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from conftest import REPO

DOCS = REPO / "docs"
CITED_FILES = [
    *REPO.glob("*.md"),
    *REPO.glob("Snakefile"),
    *REPO.glob("config.yaml"),
    *(REPO / "rules").glob("*.smk"),
    *(REPO / "workflow_lib").glob("*.py"),
    *(REPO / "tests").rglob("*.py"),
    *(REPO / "benchmarks").glob("*.py"),
    *(REPO / "experiments").rglob("*.py"),
    *(REPO / "experiments").rglob("*.yaml"),
    *DOCS.glob("*.md"),
]


def _headings(page: Path) -> list[str]:
    return [line[3:].strip() for line in page.read_text().splitlines() if line.startswith("## ")]


def _cited_sections(page: str) -> set[str]:
    """Section names cited as `docs/<page> "Name"` anywhere in the repository."""
    pattern = re.compile(rf'docs/{re.escape(page)}"?\s*"([^"]+)"')
    found = set()
    for path in CITED_FILES:
        if path.name != "test_docs.py":
            found |= {" ".join(name.split()) for name in pattern.findall(path.read_text(errors="replace"))}
    return found


def test_every_cited_section_of_the_method_exists():
    """A citation names a heading of docs/method.md by its first words (e.g. "Network")."""
    headings = _headings(DOCS / "method.md")
    cited = _cited_sections("method.md")
    assert cited, "nothing cites docs/method.md"
    missing = sorted(c for c in cited if not any(h.startswith(c) for h in headings))
    assert not missing, f"cited but not a heading of docs/method.md: {missing}"


def test_every_cited_section_of_the_differences_exists():
    headings = _headings(DOCS / "differences.md")
    missing = sorted(
        c for c in _cited_sections("differences.md") if not any(h.startswith(c) for h in headings)
    )
    assert not missing, missing


def _leaf_keys(mapping: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if key in ("run_presets", "nets", "chains"):  # documented per entry, not per leaf
            keys.append(path)
        elif isinstance(value, dict):
            keys += _leaf_keys(value, f"{path}.")
        else:
            keys.append(path)
    return keys


def test_every_config_key_is_documented():
    """docs/configuration.md names every key of config.yaml (a new setting needs its row)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    text = (DOCS / "configuration.md").read_text()
    missing = [key for key in _leaf_keys(config) if f"`{key}" not in text]
    assert not missing, f"config keys missing from docs/configuration.md: {missing}"


def test_nothing_points_outside_the_repository():
    """No file cites a path beside the checkout (the method's facts live in docs/)."""
    offenders = [
        str(p.relative_to(REPO))
        for p in CITED_FILES
        if re.search(r"\.\./shared\b|SPEC\.md", p.read_text(errors="replace")) and p.name != "test_docs.py"
    ]
    assert not offenders, offenders
