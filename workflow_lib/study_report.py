"""A study's page: one self-contained HTML file a person opens to read a study (its tables,
the plot of the paired differences, the CV pick per repetition), written beside the study's
CSV files as ``study_report.html`` (workflow_lib/study.py builds the content).

Only rendering lives here: text and table cells are escaped (chain names and descriptions come
from each repetition's systems.csv, which may come from elsewhere), Markdown-style `code` in a
cell becomes ``<code>``, and the plot is referenced by its file name beside the page, so the
page and its folder stay plain, inspectable files and nothing is fetched from the network.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

#: `text` in a cell or paragraph (the README's Markdown convention) -> <code>text</code>.
_CODE = re.compile(r"`([^`]+)`")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 75em; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f1f1f1; padding: 0 0.2em; border-radius: 3px; }
img { max-width: 100%; border: 1px solid #ddd; }
div.scroll { overflow-x: auto; }
p.note { color: #555; font-size: 0.92em; }
"""


@dataclass(frozen=True)
class Table:
    """A titled table: a header row and rows of already formatted cells."""

    heading: str
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """A titled image referenced by its file name beside the page."""

    heading: str
    file_name: str
    alt: str
    note: str = ""


@dataclass(frozen=True)
class Page:
    """The whole page: a title, paragraphs under it, then the sections in order."""

    title: str
    paragraphs: Sequence[str] = ()
    sections: Sequence[Table | Figure] = field(default_factory=tuple)


def inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return _CODE.sub(r"<code>\1</code>", html.escape(str(text)))


def _is_number(cell: str) -> bool:
    """Cells that read as numbers (with sign, interval or slash-separated parts) align right."""
    return bool(re.fullmatch(r"[-+0-9.,/\[\] ()%]+", str(cell))) and any(c.isdigit() for c in str(cell))


def _cell(text: str) -> str:
    return f'<td class="num">{inline(text)}</td>' if _is_number(text) else f"<td>{inline(text)}</td>"


def _table(table: Table) -> str:
    head = "".join(f"<th>{inline(cell)}</th>" for cell in table.header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in table.rows)
    note = f'<p class="note">{inline(table.note)}</p>' if table.note else ""
    table_html = f"<table><tr>{head}</tr>{body}</table>"
    return f'<h2>{inline(table.heading)}</h2>{note}<div class="scroll">{table_html}</div>'


def _figure(figure: Figure) -> str:
    if "/" in figure.file_name or "\\" in figure.file_name or figure.file_name.startswith("."):
        raise ValueError(f"{figure.file_name!r}: a figure is a file beside the page, named without a folder")
    note = f'<p class="note">{inline(figure.note)}</p>' if figure.note else ""
    source = html.escape(figure.file_name, quote=True)
    return f'<h2>{inline(figure.heading)}</h2>{note}<img src="{source}" alt="{html.escape(figure.alt)}">'


def render(page: Page) -> str:
    """The page as one HTML document."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(page.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{inline(page.title)}</h1>",
        *[f"<p>{inline(text)}</p>" for text in page.paragraphs],
        *[_table(s) if isinstance(s, Table) else _figure(s) for s in page.sections],
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
