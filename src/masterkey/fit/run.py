"""The fit run directory (:func:`write_fit_run`; its files are declared in :mod:`masterkey.runformats`) and the
fit report as text (:func:`render_text`, :func:`render_markdown`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from masterkey.files import atomic_directory, write_json, write_text
from masterkey.fit.bank_fit import BankFit
from masterkey.runformats import write_table
from masterkey.runs import write_run_info
from masterkey.tables import format_table


def fit_kernel(fit: BankFit) -> int:
    """The kernel size of the key set the fit was asked for."""
    return next(iter(fit.keysets.values())).kernel_size


def write_fit_run(
    out: str | Path,
    fit: BankFit,
    report: dict[str, Any],
    config: dict[str, Any],
    overwrite: bool,
    inputs: list[Any] | None = None,
) -> None:
    """A fit run directory: fits.parquet, summary.json, summary.md, keys_k*.safetensors, run.json."""
    with atomic_directory(out, "fit", overwrite=overwrite, inputs=inputs or []) as tmp:
        write_table(tmp, "fit", "fits.parquet", fit.table)
        for k, keyset in fit.keysets.items():
            keyset.save(tmp / f"keys_k{k}.safetensors")
        write_json(tmp / "summary.json", report)
        write_text(tmp / "summary.md", render_markdown(report))
        write_run_info(tmp, "fit", {k: v for k, v in config.items() if not k.startswith("_")})


_SHORT = ["n", "mean_cos2", "q05_cos2", "q50_cos2", "q95_cos2", "ref_mean_cos2", "ref_q50_cos2"]


def _columns(rows: list[dict[str, Any]], first: list[str]) -> list[str]:
    present = rows[0].keys() if rows else []
    return first + [c for c in _SHORT if c in present] + [c for c in present if c.startswith("p_")]


def render_text(report: dict[str, Any]) -> str:
    """The fit report (:func:`fit_report`) as the plain-text tables ``masterkey fit`` prints."""
    from masterkey.depthwise import UNKNOWN_STAGE_NOTE, stage_name

    keys = "; ".join(f"{k}x{k}: {v['name']}" for k, v in report["keys"].items())
    excluded = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in report["excluded"].items())
    lines = [
        f"fit of {keys}",
        f"bank {report['bank']}: {report['n_fitted']:,} filters fitted (excluded: {excluded})",
    ]
    if "reference" in report:
        lines.append("reference: " + "; ".join(f"{k}x{k}: {v}" for k, v in report["reference"].items()))
    for title, name, first in (
        ("overall", "overall", []),
        ("by kernel size", "by_kernel", ["kernel_size"]),
        ("by source", "by_source", ["source"]),
        ("by stage", "by_stage", ["stage"]),
    ):
        rows = report[name] if isinstance(report[name], list) else [report[name]]
        if name == "by_stage":
            rows = [{**row, "stage": stage_name(row["stage"])} for row in rows]
        lines += ["", f"{title}:", format_table(rows, _columns(rows, first))]
    if any(str(row.get("stage")) == "-1" for row in report["by_stage"]):
        lines.append(UNKNOWN_STAGE_NOTE)
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The fit report as ``summary.md``: the printed tables, then one row per layer."""
    lines = ["# Fit summary", "", "```", render_text(report), "```", ""]
    rows = report["by_layer"]
    lines += ["## By layer", "", "```", format_table(rows, _columns(rows, ["source", "layer"])), "```", ""]
    return "\n".join(lines)
