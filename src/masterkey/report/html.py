"""The report page: sections of figures, tables and text rendered as one self-contained HTML file (figures embedded
as base64 PNG) and as Markdown with the figures written beside it as PNG files."""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from masterkey.files import atomic_directory, write_text
from masterkey.tables import markdown_table, md_escape, numeric_columns, table_cells


@dataclass
class FigureBlock:
    """A figure: ``name`` (file stem, unique in the report), ``title``, PNG bytes and an optional caption."""

    name: str
    title: str
    png: bytes
    caption: str = ""


@dataclass
class TableBlock:
    """A table; ``collapsed`` tables are folded (HTML ``<details>``) because they are long."""

    title: str
    table: pd.DataFrame
    caption: str = ""
    digits: int | Mapping[str, int] = 3
    collapsed: bool = False


@dataclass
class TextBlock:
    """A paragraph of plain text (``preformatted``: kept as it is, in a monospace block)."""

    text: str
    preformatted: bool = False


Block = FigureBlock | TableBlock | TextBlock


@dataclass
class Folded:
    """A long fact (e.g. a run's whole config): ``summary`` on one line, ``text`` shown whole when unfolded (HTML
    ``<details>``, opened for printing) and as a code block in Markdown; never cut."""

    summary: str
    text: str


@dataclass
class Section:
    """One run in the report: a title, facts (label, value), notes about missing files, and blocks. ``kind`` (the
    run kind) is shown as a badge beside the title; without it the title's first word is the badge."""

    title: str
    anchor: str
    facts: list[tuple[str, str | Folded]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    kind: str = ""

    def heading(self) -> tuple[str, str]:
        """(badge, title): the run kind and the rest of the title."""
        if self.kind:
            return self.kind, self.title
        kind, _, rest = self.title.partition(" ")
        return kind, rest

    def toc_label(self) -> str:
        """The table-of-contents entry: the title, led by the run kind only where the title does not already
        name it (a run directory called ``discover`` is not listed as "discover discover")."""
        kind, rest = self.heading()
        return rest if kind.lower() in rest.lower() else f"{kind} {rest}".strip()

    def figure(self, name: str, title: str, png: bytes, caption: str = "") -> None:
        self.blocks.append(FigureBlock(f"{self.anchor}-{name}", title, png, caption))

    def table(
        self,
        title: str,
        table: pd.DataFrame,
        caption: str = "",
        digits: int | Mapping[str, int] = 3,
        collapsed: bool = False,
    ) -> None:
        self.blocks.append(TableBlock(title, table, caption, digits, collapsed))

    def text(self, text: str, preformatted: bool = False) -> None:
        self.blocks.append(TextBlock(text, preformatted))


# ---------------------------------------------------------------------- HTML
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2430;
       background: #f6f7f9; line-height: 1.45; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.35em; margin: 0 0 0.4em; border-bottom: 2px solid #d6dae1; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.4em; }
section { background: white; border: 1px solid #e1e4e8; border-radius: 8px; padding: 18px 22px; margin: 22px 0; }
.meta { color: #5a6270; font-size: 0.9em; }
.kind { display: inline-block; font-size: 0.75em; font-weight: 600; text-transform: uppercase;
        letter-spacing: 0.05em; background: #1f6feb; color: white; border-radius: 4px; padding: 1px 7px;
        margin-right: 8px; vertical-align: middle; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.3em 0 0.8em; }
th, td { padding: 3px 9px; border-bottom: 1px solid #e6e8eb; vertical-align: top; }
th { background: #f0f2f5; text-align: left; }
td { max-width: 32em; overflow-wrap: break-word; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.facts { width: 100%; }
table.facts th { background: none; font-weight: 600; color: #5a6270; white-space: nowrap; width: 1%; }
table.facts td { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.95em; max-width: none;
                 overflow-wrap: anywhere; }
table.facts details summary { font-weight: normal; margin: 0; }
table.facts pre { margin: 0.3em 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; }
figure { margin: 0.6em 0 1.4em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eceef1; border-radius: 4px; background: white; }
figcaption { color: #5a6270; font-size: 0.88em; margin-top: 0.3em; }
.notes { background: #fff8e1; border-left: 4px solid #f0b429; padding: 6px 12px; font-size: 0.88em; margin: 0.6em 0; }
pre { background: #f6f8fa; padding: 10px; border-radius: 6px; overflow-x: auto; font-size: 0.82em; }
nav ul { margin: 0.3em 0; padding-left: 1.2em; }
details summary { cursor: pointer; font-weight: 600; margin: 0.8em 0 0.3em; }
@media print {
  @page { size: A4; margin: 12mm; }
  body { background: white; font-size: 10pt; }
  main { max-width: none; padding: 0; }
  section { border: none; border-radius: 0; padding: 0; margin: 0 0 14pt; }
  h2, h3 { break-after: avoid; }
  figure { break-inside: avoid; }
  figure img { max-height: 240mm; object-fit: contain; border: none; }
  .scroll { overflow: visible; }
  table.data { width: 100%; font-size: 7pt; }
  table.data th, table.data td { padding: 1px 3px; max-width: none; }
  table.data td { overflow-wrap: anywhere; }
  table.data td.num { overflow-wrap: normal; }
  thead { display: table-header-group; }
  tr { break-inside: avoid; }
  pre { white-space: pre-wrap; overflow-wrap: anywhere; overflow: visible; }
  details::details-content { content-visibility: visible; display: block; }
  details > summary { list-style: none; cursor: auto; }
}
"""

# Folded blocks (long tables, whole configs) print unfolded: every row of every table is on paper.
PRINT_SCRIPT = (
    "<script>addEventListener('beforeprint', function () {"
    " document.querySelectorAll('details').forEach(function (d) { d.open = true; }); });</script>"
)


def _html_table(table: pd.DataFrame, digits: int | Mapping[str, int], css_class: str = "data") -> str:
    numeric = numeric_columns(table)
    head = "".join(f"<th>{_breakable(str(c))}</th>" for c in table.columns)
    body = []
    for row in table_cells(table, digits):
        cells = "".join(
            f'<td class="num">{html.escape(v)}</td>' if num else f"<td>{html.escape(v)}</td>"
            for v, num in zip(row, numeric, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table class="{css_class}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _breakable(name: str) -> str:
    """A column name that may wrap after its underscores (narrow columns on paper)."""
    return html.escape(name).replace("_", "_<wbr>")


def _html_fact(label: str, value: str | Folded) -> str:
    if isinstance(value, Folded):
        body = f"<details><summary>{html.escape(value.summary)}</summary><pre>{html.escape(value.text)}</pre></details>"
    else:
        body = html.escape(value)
    return f"<tr><th>{html.escape(label)}</th><td>{body}</td></tr>"


def _html_block(block: Block) -> str:
    if isinstance(block, FigureBlock):
        data = base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{html.escape(block.caption)}</figcaption>" if block.caption else ""
        return (
            f'<h3>{html.escape(block.title)}</h3><figure id="{html.escape(block.name)}">'
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(block.title)}">{caption}</figure>'
        )
    if isinstance(block, TableBlock):
        caption = f'<p class="meta">{html.escape(block.caption)}</p>' if block.caption else ""
        table = _html_table(block.table, block.digits)
        if block.collapsed:
            summary = f"{html.escape(block.title)} ({len(block.table):,} rows)"
            return f"<details><summary>{summary}</summary>{caption}{table}</details>"
        return f"<h3>{html.escape(block.title)}</h3>{caption}{table}"
    if block.preformatted:
        return f"<pre>{html.escape(block.text)}</pre>"
    return f"<p>{html.escape(block.text)}</p>"


def render_html(sections: Sequence[Section], title: str, generated: str | None = None) -> str:
    """One self-contained HTML page (no external resources: CSS inline, figures as data URIs)."""
    generated = generated or dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    toc = "".join(f'<li><a href="#{html.escape(s.anchor)}">{html.escape(s.toc_label())}</a></li>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style>{PRINT_SCRIPT}</head><body><main>",
        f'<h1>{html.escape(title)}</h1><p class="meta">generated {html.escape(generated)} by masterkey report · '
        f"{len(sections)} run{'s' if len(sections) != 1 else ''}</p>",
        f"<nav><ul>{toc}</ul></nav>",
    ]
    for section in sections:
        kind, rest = section.heading()
        parts.append(f'<section id="{html.escape(section.anchor)}">')
        parts.append(f'<h2><span class="kind">{html.escape(kind)}</span>{html.escape(rest)}</h2>')
        if section.facts:
            facts = "".join(_html_fact(k, v) for k, v in section.facts)
            parts.append(f'<table class="facts">{facts}</table>')
        if section.notes:
            items = "".join(f"<li>{html.escape(n)}</li>" for n in section.notes)
            parts.append(f'<div class="notes">Not shown:<ul>{items}</ul></div>')
        parts.extend(_html_block(b) for b in section.blocks)
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------- Markdown
def render_markdown(sections: Sequence[Section], title: str, generated: str | None = None) -> str:
    """Markdown of the report; figure ``name`` is referenced as ``name.png`` beside the Markdown file."""
    generated = generated or dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"# {title}", "", f"generated {generated} by masterkey report", ""]
    lines += [f"- [{s.toc_label()}](#{s.anchor})" for s in sections] + [""]
    for section in sections:
        lines += [f'<a id="{section.anchor}"></a>', "", f"## {section.toc_label()}", ""]
        if section.facts:
            lines += ["| | |", "|:---|:---|"]
            for k, v in section.facts:
                text = v.summary if isinstance(v, Folded) else v
                lines.append(f"| **{md_escape(k)}** | `{md_escape(text)}` |")
            lines.append("")
            for k, v in section.facts:
                if isinstance(v, Folded):
                    lines += [f"{k}:", "", "```", v.text.rstrip(), "```", ""]
        if section.notes:
            lines += ["> Not shown:"] + [f"> - {n}" for n in section.notes] + [""]
        for block in section.blocks:
            if isinstance(block, FigureBlock):
                lines += [f"### {block.title}", "", f"![{md_escape(block.title)}]({block.name}.png)", ""]
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
            elif isinstance(block, TableBlock):
                lines += [f"### {block.title}", ""]
                if block.caption:
                    lines += [block.caption, ""]
                lines += [markdown_table(block.table, block.digits), ""]
            elif block.preformatted:
                lines += ["```", block.text.rstrip(), "```", ""]
            else:
                lines += [block.text, ""]
    return "\n".join(lines)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def generated_time() -> str:
    """When a report is made: now, or ``SOURCE_DATE_EPOCH`` (UTC) when set, so a rebuilt report can be bitwise
    identical (the reproducible-builds convention)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def write_report(
    sections: Sequence[Section],
    out: str | Path,
    title: str = "masterkey report",
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out/report.html`` (self-contained), ``out/report.md``, one PNG per figure and ``run.json`` (kind
    ``report``, with ``config``), atomically. ``out`` follows the output rule (:func:`masterkey.files.check_output`):
    it is never one of the ``inputs`` (the run directories reported), nor inside or around one."""
    from masterkey.runs import write_run_info

    names = [b.name for s in sections for b in s.blocks if isinstance(b, FigureBlock)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or not all(_SAFE_NAME.match(n) for n in names):
        raise ValueError(f"figure names must be unique file stems, got {duplicates or names}")
    generated = generated_time()
    out = Path(out)
    with atomic_directory(out, "report", overwrite=overwrite, inputs=inputs) as tmp:
        for section in sections:
            for block in section.blocks:
                if isinstance(block, FigureBlock):
                    (tmp / f"{block.name}.png").write_bytes(block.png)
        write_text(tmp / "report.md", render_markdown(sections, title, generated))
        write_text(tmp / "report.html", render_html(sections, title, generated))
        write_run_info(tmp, "report", {"title": title, "inputs": [str(p) for p in inputs], **(config or {})})
    return out
