"""The results page of the Snakemake report (workflow_lib.report_tables)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_lib import __version__
from workflow_lib.report_tables import results_page, table_html


def _cells(html: str) -> list[list[str]]:
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html, flags=re.S)
    return [[c.strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, flags=re.S)] for r in rows]


def test_table_rounds_floats_keeps_counts_integer_and_blanks_empty_cells():
    frame = pd.DataFrame({"preset": ["a", "fusion"], "clips": [7, None], "accuracy": [0.123456, 0.5]})
    cells = _cells(table_html(frame))
    assert cells == [["preset", "clips", "accuracy"], ["a", "7", "0.1235"], ["fusion", "", "0.5"]]


def test_table_escapes_text():
    cells = _cells(table_html(pd.DataFrame({"system": ["<b>x</b> & y"]})))
    assert cells[1] == ["&lt;b&gt;x&lt;/b&gt; &amp; y"]


def test_page_holds_each_table_with_its_source_and_the_version(tmp_path: Path):
    summary, systems = tmp_path / "summary.csv", tmp_path / "systems.csv"
    pd.DataFrame({"preset": ["p1", "fusion"], "test_accuracy": [0.9, 0.95]}).to_csv(summary, index=False)
    pd.DataFrame({"system": ["verified_only"], "cv_accuracy": [0.8]}).to_csv(systems, index=False)
    out = tmp_path / "report" / "results.html"
    results_page([("Summary", summary), ("Systems", systems)], out)
    text = out.read_text()
    assert f"workflow_lib {__version__}" in text
    assert text.count("<table") == 2
    assert text.index("Summary") < text.index("p1") < text.index("Systems") < text.index("verified_only")
    assert f"{summary}: 2 rows" in text
    # a fragment that another page can embed unchanged: no document-level tags
    assert "<html" not in text and "<body" not in text


def test_text_columns_are_left_aligned_and_readable():
    frame = pd.DataFrame({"preset": ["p1", "fusion"], "accuracy": [0.9, np.nan], "note": [np.nan, "why"]})
    page = table_html(frame, table_id="t0")
    style = page[: page.index("<table")]
    for n in (1, 3):  # preset and note; not the number column
        assert f"#t0 td:nth-child({n})" in style and f"#t0 th:nth-child({n})" in style
    assert "nth-child(2)" not in style and "text-align: left" in style
    assert 'id="t0"' in page
