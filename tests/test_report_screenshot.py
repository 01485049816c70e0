"""The report's opening page in a real browser (issue 24, item 9): report/screenshot.sh takes
screenshots in headless Chromium at 1400x1000 and 1920x1080 and checks that no element of the
workflow description lies under the rule graph drawn beside it (it covered the results tables
when they were embedded there).

Runs only where Chromium is installed (Debian: ``apt-get install -y chromium``; .ci/run installs
it). Builds the report of the session's demo run (the ``demo`` fixture; set DEMO_E2E_DIR
to reuse a finished run).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from PIL import Image

from conftest import REPO, snakemake_command, snakemake_env

SCRIPT = REPO / "report" / "screenshot.sh"
SIZES = ("1400x1000", "1920x1080")


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def test_report_opening_page_has_nothing_under_the_rule_graph(request, tmp_path) -> None:
    if _browser() is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium): no browser to draw the report")
    demo = request.getfixturevalue("demo")
    report = tmp_path / "report.html"
    built = subprocess.run(
        snakemake_command(demo.workdir, "--report", str(report)),
        env=snakemake_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
    shots = tmp_path / "shots"
    done = subprocess.run(
        ["bash", str(SCRIPT), str(report), str(shots), *SIZES], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    for size in SIZES:
        assert lines[size].endswith("description elements under the graph"), done.stdout
        assert " 0 of " in lines[size], done.stdout
        width, height = map(int, size.split("x"))
        with Image.open(shots / f"report_{size}.png") as image:
            assert image.size == (width, height)
            assert len(image.convert("L").getcolors(1 << 16) or ()) > 16  # drawn, not a blank page
