"""The section of a swap run: accuracy after the swap, per stage, sensitivity."""

from __future__ import annotations

from masterkey.plots.bars import sensitivity_bars, swap_bars
from masterkey.plots.style import figure_png
from masterkey.report.html import Section
from masterkey.report.runs import SwapRun
from masterkey.report.sections.common import ReportOptions, new_section, percent_columns, percent_digits


def swap_section(swap: SwapRun, index: int, options: ReportOptions) -> Section:
    run = swap.run
    model = run.config.get("model") or run.config.get("weights") or ""
    section = new_section(run, index, str(model))
    table = swap.summary if swap.summary is not None and len(swap.summary) else swap.results
    if table is not None and len(table):
        png = figure_png(swap_bars(table))
        section.figure(
            "accuracy",
            "Accuracy after the swap",
            png,
            "Every depthwise filter replaced by a·key + b of its best key; 'recalibrated': normalisation "
            "statistics re-estimated after the swap; error bars: 95% CI over key-set seeds where given.",
        )
    if swap.summary is not None and len(swap.summary):
        summary = percent_columns(swap.summary, False)
        section.table("Summary (seeded key sets pooled: mean and 95% CI)", summary, digits=percent_digits(summary))
    if swap.results is not None and len(swap.results):
        results = percent_columns(swap.results, False)
        section.table("Results per key set", results, digits=percent_digits(results), collapsed=len(results) > 12)
    if swap.per_stage is not None and len(swap.per_stage):
        section.table("Per stage", swap.per_stage)
    if swap.sensitivity is not None and len(swap.sensitivity):
        png = figure_png(sensitivity_bars(swap.sensitivity))
        section.figure("sensitivity", "Sensitivity", png)
        sensitivity = percent_columns(swap.sensitivity, False)
        section.table("Sensitivity", sensitivity, digits=percent_digits(sensitivity), collapsed=len(sensitivity) > 12)
    return section
