"""A tiny document model rendered to Markdown and to one self-contained HTML page.

Evaluation reports are built once as a list of blocks (headings, paragraphs, lists,
tables) and rendered twice, so the Markdown and the HTML always say the same thing.
Every piece of text, including file names and model output, is escaped for its target:
HTML special characters become entities (the page has no scripts and loads nothing),
and Markdown table cells cannot break their row.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    """A section title (level 1-3)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted list of plain-text items."""

    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    """A table: header cells, then rows of plain-text cells."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]


Block = Heading | Paragraph | Bullets | Table

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:62rem;margin:2rem auto;
padding:0 1rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem}table{border-collapse:collapse;margin:.5rem 0 1rem;width:100%}
th,td{border:1px solid #ccc;padding:.35rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td{overflow-wrap:anywhere}
""".strip()


def to_markdown(blocks: Sequence[Block]) -> str:
    """Render blocks as GitHub-flavoured Markdown."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {_md_line(block.text)}")
        elif isinstance(block, Paragraph):
            out.append(_md_line(block.text))
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {_md_line(item)}" for item in block.items))
        else:
            lines = [_md_row(block.header), "|" + "---|" * len(block.header)]
            lines += [_md_row(row) for row in block.rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def to_html(blocks: Sequence[Block], *, title: str) -> str:
    """Render blocks as one self-contained HTML page (inline CSS, no scripts, no links out)."""
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 3)
            body.append(f"<h{level}>{_esc(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_esc(i)}</li>" for i in block.items) + "</ul>")
        else:
            head = "".join(f"<th>{_esc(cell)}</th>" for cell in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_esc(cell)}</td>" for cell in row) + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _md_line(text: str) -> str:
    """One Markdown line: newlines folded, HTML neutralised (renderers pass raw HTML through)."""
    flat = " ".join(text.split())
    return flat.replace("<", "&lt;").replace(">", "&gt;")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_md_line(c).replace("|", "\\|") for c in cells) + " |"
