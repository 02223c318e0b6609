"""Reports: figures and one self-contained HTML page (plus Markdown) from any mix of run directories.

    from masterkey.report import build_report
    build_report(["runs/fit", "runs/train"], "runs/report")   # runs/report/report.html, report.md, *.png

Runs are recognised by the ``kind`` in their ``run.json`` (fit, discover, swap, train, experiment, explain); each
kind's files are read if present (:mod:`masterkey.report.runs`), drawn (:mod:`masterkey.plots`) and laid
out (:mod:`masterkey.report.sections`, :mod:`masterkey.report.html`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from masterkey.errors import MasterkeyError
from masterkey.files import check_output
from masterkey.lazy import lazy_attributes

#: Each public name and the module that defines it, imported on first use (PEP 562): ``import masterkey.report``
#: loads neither the readers nor the sections (pandas, matplotlib) until a name is used.
_PUBLIC = {
    "Section": "masterkey.report.html",
    "render_html": "masterkey.report.html",
    "render_markdown": "masterkey.report.html",
    "write_report": "masterkey.report.html",
    "KINDS": "masterkey.report.runs",
    "Run": "masterkey.report.runs",
    "load_run": "masterkey.report.runs",
    "read_run": "masterkey.report.runs",
    "ReportOptions": "masterkey.report.sections",
    "build_section": "masterkey.report.sections",
    "build_sections": "masterkey.report.sections",
}
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)

if TYPE_CHECKING:
    from masterkey.report.html import Section, render_html, render_markdown, write_report
    from masterkey.report.runs import KINDS, Run, load_run, read_run
    from masterkey.report.sections import ReportOptions, build_section, build_sections


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    title: str = "masterkey report",
    options: ReportOptions | None = None,
    overwrite: bool = False,
) -> Path:
    """Read every run of ``run_dirs`` and write ``out/report.html``, ``out/report.md`` and the figure PNGs."""
    if not run_dirs:
        raise MasterkeyError("report: give at least one run directory")
    from masterkey.report.html import write_report
    from masterkey.report.runs import load_run
    from masterkey.report.sections import build_sections

    inputs = [*run_dirs, *([options.bank] if options is not None and options.bank else [])]
    check_output(out, "report", overwrite=overwrite, inputs=inputs)  # before the figures are drawn
    loaded = [load_run(path) for path in run_dirs]
    sections = build_sections(loaded, options)
    return write_report(sections, out, title=title, overwrite=overwrite, inputs=inputs)


__all__ = [
    "KINDS",
    "ReportOptions",
    "Run",
    "Section",
    "build_report",
    "build_section",
    "build_sections",
    "load_run",
    "read_run",
    "render_html",
    "render_markdown",
    "write_report",
]
