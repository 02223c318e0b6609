"""The sections of a training run and of an experiment (arms x seeds): curves, accuracy per mode, data
efficiency, what span and scale-space arms learned."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from masterkey.errors import MasterkeyError
from masterkey.nn.modes import REFERENCE
from masterkey.plots.bars import mean_bars
from masterkey.plots.curves import efficiency_curves, sigma_trajectories, training_curves
from masterkey.plots.heatmaps import layer_heatmap
from masterkey.plots.style import figure_png
from masterkey.report.html import Section
from masterkey.report.runs import ExperimentRun, TrainRun
from masterkey.report.sections.common import ReportOptions, new_section, percent_columns, percent_digits, scalar_table


def train_section(train: TrainRun, index: int, options: ReportOptions) -> Section:
    run = train.run
    summary = train.summary or {}
    mode = summary.get("mode") or run.config.get("mode") or ""
    section = new_section(run, index, " ".join(str(x) for x in (run.config.get("model") or "", mode) if x))
    if train.metrics is not None and len(train.metrics):
        label = str(mode or run.name)
        steps = {label: [train.steps]} if train.steps is not None else None
        png = figure_png(training_curves({label: [train.metrics]}, steps))
        section.figure("curves", "Training curves", png)
        cols = [
            c
            for c in (
                "epoch",
                "step",
                "lr",
                "train_loss",
                "train_acc",
                "test_loss",
                "test_top1",
                "test_top5",
                "seconds",
            )
            if c in train.metrics
        ]
        metrics = percent_columns(train.metrics[cols], False)
        section.table("Metrics per epoch", metrics, digits=percent_digits(metrics), collapsed=len(metrics) > 12)
    _learned_keys(section, {str(mode or run.name): [train]})
    scalars = scalar_table(summary)
    if scalars is not None:
        section.table("Summary", scalars, collapsed=len(scalars) > 12)
    return section


def _key_labels(runs: Sequence[TrainRun]) -> list[str] | None:
    from masterkey.keys import load_keys

    name = next((r.summary.get("keys") for r in runs if r.summary and r.summary.get("keys")), None)
    try:
        return load_keys(str(name)).key_labels() if name else None
    except MasterkeyError:
        return None


def _layer_matrix(runs: Sequence[TrainRun], value: Any) -> tuple[list[str], np.ndarray] | None:
    """Layers x columns of ``value(layer entry) -> list`` from the ``depthwise_layers`` of each run's summary,
    averaged over the runs (seeds)."""
    stacks: list[np.ndarray] = []
    names: list[str] = []
    for train in runs:
        layers = (train.summary or {}).get("depthwise_layers") or []
        rows = [value(entry) for entry in layers]
        if rows and all(r is not None for r in rows):
            stacks.append(np.array([[math.nan if v is None else v for v in r] for r in rows], dtype=float))
            names = [str(entry["layer"]) for entry in layers]
    if not stacks or len({s.shape for s in stacks}) != 1:
        return None
    if len(stacks) == 1:
        return names, stacks[0]
    with warnings.catch_warnings():  # keys no channel of a layer holds are NaN in every run: NaN stays
        warnings.simplefilter("ignore", RuntimeWarning)
        return names, np.nanmean(np.stack(stacks), axis=0)


def _learned_keys(section: Section, runs: dict[str, list[TrainRun]]) -> None:
    """What span and scale-space arms learned: mean |alpha| per layer and key (which keys each layer uses); the σ
    trajectories per epoch and the final σ per layer and key."""
    trajectories = {
        arm: [
            t.metrics for t in trains if t.metrics is not None and any(str(c).startswith("dw_sigma") for c in t.metrics)
        ]
        for arm, trains in runs.items()
    }
    trajectories = {arm: tables for arm, tables in trajectories.items() if tables}
    if trajectories:
        labels = _key_labels([t for arm in trajectories for t in runs[arm]])
        section.figure(
            "sigma",
            "Learned scale-space parameters per epoch",
            figure_png(sigma_trajectories(trajectories, labels)),
            "Scale-space arms: σx, σy (and γ of the centre-surround key) of each key after every epoch, averaged "
            "over the layers (or channels) holding the key, then over seeds. Epoch 1 is after one epoch of training; "
            "training starts from the key set's scale-space models (for scalespace8: the fit of paper8).",
        )
    for arm, trains in runs.items():
        alpha = _layer_matrix(trains, lambda e: e.get("mean_abs_alpha"))
        if alpha is not None:
            names, matrix = alpha
            columns = [str(i + 1) for i in range(matrix.shape[1])]
            png = figure_png(layer_heatmap(matrix, names, columns, f"{arm}: mean |alpha| per layer and key", "key"))
            section.figure(
                f"alpha-{arm}",
                f"Mixing weights of {arm}",
                png,
                "Span mode: mean over the layer's channels of |alpha[c, j]| (kernel = Σ_j alpha[c, j] key_j + b), "
                f"averaged over {len(trains)} run(s). A one-hot start puts each channel's weight on its assigned key.",
            )
        sigma = _layer_matrix(trains, lambda e: _interleave(e.get("sigma_x"), e.get("sigma_y")))
        if sigma is not None:
            names, matrix = sigma
            columns = [f"{i // 2 + 1}{'xy'[i % 2]}" for i in range(matrix.shape[1])]
            png = figure_png(layer_heatmap(matrix, names, columns, f"{arm}: final σ per layer and key", "key, axis"))
            section.figure(
                f"sigma-layers-{arm}",
                f"Final σ of {arm} per layer",
                png,
                "σx and σy of each key (columns 1x, 1y, 2x ...) at the end of training, per layer (rows), averaged "
                "over seeds (and over channels with --sigma-scope channel); empty: no channel of the layer holds the "
                "key.",
            )


def _interleave(xs: list[Any] | None, ys: list[Any] | None) -> list[Any] | None:
    if xs is None or ys is None:
        return None
    return [v for pair in zip(xs, ys, strict=True) for v in pair]


def _efficiency(section: Section, exp: ExperimentRun) -> None:
    """The data-efficiency figure and table of a sweep (from ``efficiency.csv``, else from ``summary.csv``)."""
    from masterkey.train.summary import efficiency_table, summarize_sweep

    table = exp.efficiency
    if table is None and exp.table is not None and "train_size" in exp.table:
        needed = {"train_mode", "keys", "seed"}
        if needed <= set(exp.table.columns):
            reference = REFERENCE if REFERENCE in set(exp.table["mode"]) else None
            table = efficiency_table(summarize_sweep(exp.table, reference))
    if table is None or not len(table):
        return
    reference = REFERENCE if REFERENCE in set(table["arm"]) else None
    if "delta_n" not in table:
        table = table.assign(delta_top1=math.nan, delta_ci95=math.nan, delta_n=0)
    section.figure(
        "efficiency",
        "Data efficiency: accuracy vs training-set size",
        figure_png(efficiency_curves(table, reference)),
        "Test top-1 per arm at each training-set size (class-balanced nested subsets, the same for every arm and "
        "seed), mean ± 95% CI over seeds; right: the paired difference to the reference arm at the same size.",
    )
    section.table(
        "Data efficiency (test top-1 %, mean ± 95% CI half-width over seeds)",
        percent_columns(table, False, ("ci95", "delta_ci95")),
        digits=2,
    )


def _arm_of(train: TrainRun) -> str:
    """The experiment arm of a sub-run: its directory is ``runs/<arm>-s<seed>``; else the run's mode."""
    found = re.fullmatch(r"(.+)-s\d+", train.run.name)
    if found:
        return found.group(1)
    return str((train.summary or {}).get("mode") or train.run.config.get("mode") or train.run.name)


def experiment_section(exp: ExperimentRun, index: int, options: ReportOptions) -> Section:
    run = exp.run
    section = new_section(run, index, str(run.config.get("model") or ""))
    table = exp.table
    if table is not None and len(table):
        from masterkey.stats import mean_ci95

        rows = []
        labels = table["mode"].astype(str)
        if "train_size" in table:  # a sweep: one bar per arm and size
            labels = labels + "-n" + table["train_size"].astype(int).astype(str)
        for mode, group in table.groupby(labels, sort=False):
            mean, ci = mean_ci95(group["test_top1"].dropna().tolist())
            rows.append({"mode": mode, "n": int(group["test_top1"].notna().sum()), "test_top1": mean, "ci95": ci})
        per_mode = pd.DataFrame(rows)
        png = figure_png(
            mean_bars(
                per_mode,
                "test_top1",
                "ci95",
                "mode",
                "Final test top-1 per mode (mean ± 95% CI over seeds)",
                "test top-1 (%)",
            )
        )
        section.figure("top1", "Final accuracy per mode", png)
        section.table(
            "Per mode (mean ± 95% CI half-width over seeds)", percent_columns(per_mode, False, ("ci95",)), digits=2
        )
        section.table("Per run", percent_columns(table, False), digits=2, collapsed=len(table) > 12)
    _efficiency(section, exp)
    by_arm: dict[str, list[TrainRun]] = {}
    for train in exp.runs:
        by_arm.setdefault(_arm_of(train), []).append(train)
    _learned_keys(section, by_arm)
    curves: dict[str, list[pd.DataFrame]] = {}
    for train in exp.runs:
        if train.metrics is not None and len(train.metrics):
            curves.setdefault(_arm_of(train), []).append(train.metrics)
    if curves:
        png = figure_png(
            training_curves(curves, title="Training curves per mode (line: mean over seeds; band: min–max)")
        )
        section.figure("curves", "Training curves", png)
    if exp.summary_md and table is None:
        section.text(exp.summary_md, preformatted=True)
    return section
