"""The results tables as one HTML page for ``snakemake --report``.

Snakemake's report shows pictures, PDFs and HTML pages inline, but a CSV only as a download.
This page puts the run's tables (the first chain's ``summary.csv`` and
``results/systems.csv``, one row per chain) first in the report's menu ("1. Results", linked
from the opening page), and names the ``workflow_lib`` version that wrote them, so a result
can be traced to a release. The opening page itself only links to it: the report draws the
rule graph beside the workflow description, over any wide table embedded there
(report/screenshot.sh takes screenshots to check the layout).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from . import __version__
from .io import write_text

# Scoped to the page's own <div>, so the fragment can be embedded in another page unchanged.
STYLE = """
.sv-results { font-size: 14px; }
.sv-results table { border-collapse: collapse; margin-bottom: 1.5em; }
.sv-results th, .sv-results td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
.sv-results th { background: #f0f0f0; }
.sv-results p.source { color: #555; margin-top: 0; }
"""


def table_html(frame: pd.DataFrame, digits: int = 4, table_id: str | None = None) -> str:
    """One table: counts as integers, other numbers rounded for reading (the CSV keeps every
    digit), empty cells blank. With ``table_id``, text columns (names, notes) are set left
    aligned and wide enough to read, not squeezed into a right-aligned strip."""
    shown = frame.convert_dtypes()  # a count column with empty cells stays integer
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].round(digits)
    text = [n for n, c in enumerate(shown.columns, 1) if pd.api.types.is_string_dtype(shown[c])]
    shown = shown.astype(object).where(shown.notna(), "")  # to_html prints pd.NA as "<NA>"
    table = shown.to_html(index=False, border=0, escape=True, table_id=table_id)
    if table_id is None or not text:
        return table
    cells = ", ".join(f"#{table_id} {cell}:nth-child({n})" for n in text for cell in ("th", "td"))
    return f"<style>{cells} {{ text-align: left; min-width: 10em; }}</style>\n{table}"


def results_page(tables: Sequence[tuple[str, Path]], out: Path, version: str = __version__) -> None:
    """Write ``out``: a heading, then each (title, CSV path) as a table with its source file.

    An HTML5 fragment (no <html>/<body>): a browser shows it as a page on its own, and the
    report shows it full width in its own frame.
    """
    parts = [
        '<meta charset="utf-8">',
        f"<style>{STYLE}</style>",
        '<div class="sv-results">',
        "<h2>Results</h2>",
        f'<p class="source">Written by workflow_lib {html.escape(version)}.</p>',
    ]
    for number, (title, path) in enumerate(tables):
        frame = pd.read_csv(path)
        parts += [
            f"<h3>{html.escape(title)}</h3>",
            f'<p class="source">{html.escape(str(path))}: {len(frame)} rows</p>',
            table_html(frame, table_id=f"sv-table-{number}"),
        ]
    parts.append("</div>")
    write_text("\n".join(parts) + "\n", out)
