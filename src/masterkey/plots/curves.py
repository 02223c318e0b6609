"""Curves of training runs and experiments: loss and accuracy per epoch or step, data efficiency, learned
scales per epoch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from masterkey.plots.style import REFERENCE_COLOR, colormap, styled, subplots

if TYPE_CHECKING:  # pandas loads only where a figure needs it
    import pandas as pd


# ---------------------------------------------------------------------- training
@styled
def training_curves(
    runs: Mapping[str, Sequence[pd.DataFrame]],
    steps: Mapping[str, Sequence[pd.DataFrame]] | None = None,
    title: str | None = None,
) -> Figure:
    """Training loss and test top-1 per epoch; ``runs`` maps a label (mode) to the per-epoch metric tables of its
    seeds (mean line, band = min..max over seeds). Per-step losses, when given, replace the per-epoch loss."""
    palette = colormap("tab10")
    fig, (loss_ax, acc_ax) = subplots(1, 2, figsize=(11, 4))
    for i, (label, tables) in enumerate(runs.items()):
        color = palette(i % 10)
        step_tables = list(steps.get(label, [])) if steps else []
        if step_tables:
            for j, table in enumerate(step_tables):
                x = table["step"].to_numpy(dtype=float)
                y = table["train_loss"].rolling(max(1, len(table) // 100), min_periods=1).mean().to_numpy()
                loss_ax.plot(
                    x,
                    y,
                    color=color,
                    alpha=0.9 if len(step_tables) == 1 else 0.5,
                    lw=1,
                    marker="o" if len(x) <= 30 else None,
                    ms=3,
                    label=label if j == 0 else None,
                )
            loss_ax.set_xlabel("step")
        else:
            _band(loss_ax, tables, "train_loss", color, label)
            loss_ax.set_xlabel("epoch")
        _band(acc_ax, tables, "test_top1", color, label)
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title("training loss")
    for ax in (loss_ax, acc_ax):
        if ax.get_xlabel() != "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("test top-1 (%)")
    acc_ax.set_title("test top-1")
    readable_axes(loss_ax)
    readable_axes(acc_ax, min_span=10.0, bounds=(0.0, 100.0))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def readable_axes(ax: Axes, min_span: float | None = None, bounds: tuple[float, float] | None = None) -> None:
    """Keep a short curve legible (a one-epoch run has one point per epoch curve): tick labels without an offset
    (never "+2.213"); a y-range of at least ``min_span`` (default 10% of the values' size) around values that
    barely change, within ``bounds``; and where every point sits at one x, that x centred, each value printed
    beside its point and a note saying why there is no curve."""
    for axis in (ax.xaxis, ax.yaxis):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):
            formatter.set_useOffset(False)
    points = [(x, y) for line in ax.lines for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)]
    points = [(float(x), float(y)) for x, y in points if np.isfinite(x) and np.isfinite(y)]
    if not points:
        return
    xs, ys = np.array(points).T
    lo, hi = float(ys.min()), float(ys.max())
    span = min_span if min_span is not None else 0.1 * max(abs(lo), abs(hi)) or 0.1
    if hi - lo < span:
        low, high = (lo + hi - span) / 2, (lo + hi + span) / 2
        if bounds is not None:
            low, high = max(bounds[0], low), min(bounds[1], high)
        ax.set_ylim(low, high)
    if np.ptp(xs) == 0:
        ax.set_xlim(xs[0] - 1, xs[0] + 1)
        ax.set_xticks([xs[0]])
        for x, y in points:
            ax.annotate(f"{y:.4g}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.text(
            0.5,
            0.03,
            "one point per curve: a curve needs two epochs or more",
            transform=ax.transAxes,
            ha="center",
            fontsize=8,
            color="0.4",
        )


def _band(ax: Axes, tables: Sequence[pd.DataFrame], column: str, color: object, label: str) -> None:
    import pandas as pd

    usable = [t for t in tables if column in t and "epoch" in t and t[column].notna().any()]
    if not usable:
        return
    joined = pd.concat([t[["epoch", column]].dropna().assign(_seed=i) for i, t in enumerate(usable)])
    stats = joined.groupby("epoch")[column].agg(["mean", "min", "max", "count"])
    ax.plot(
        stats.index,
        stats["mean"],
        "-",
        color=color,
        lw=1.6,
        marker="o" if len(stats) <= 30 else None,
        ms=3,
        label=f"{label} (n={len(usable)})" if len(usable) > 1 else label,
    )
    if len(usable) > 1:
        ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2, lw=0)


def ci_band(frames: Sequence[pd.DataFrame], x: str, y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs of ``y`` at each ``x`` and the half-width of its 95% CI (0 where it is undefined)."""
    import pandas as pd

    from masterkey.stats import mean_ci

    merged = pd.concat([f[[x, y]].assign(run=i) for i, f in enumerate(frames)])
    table = merged.pivot_table(index=x, columns="run", values=y)
    means, halves = [], []
    for _, values in table.iterrows():
        mean, _, half = mean_ci(values.dropna().tolist())
        means.append(mean)
        halves.append(0.0 if math.isnan(half) else half)
    return table.index.to_numpy(), np.asarray(means), np.asarray(halves)


def experiment_curves(curves: Mapping[str, Sequence[tuple[pd.DataFrame, pd.DataFrame]]]) -> Figure:
    """An experiment's ``curves.png``: per-step train loss, per-epoch train loss, test loss and test top-1 for every
    arm, the mean over seeds with a shaded 95% CI band. ``curves[arm]`` holds one ``(epoch_rows, step_rows)`` pair
    per seed."""
    panels = [
        ("step", "train_loss", "train loss (per logged step)", True),
        ("epoch", "train_loss", "train loss (epoch mean)", False),
        ("epoch", "test_loss", "test loss", False),
        ("epoch", "test_top1", "test top-1 (%)", False),
    ]
    fig, axes = subplots(2, 2, figsize=(11, 8))
    for ax, (x, y, title, steps) in zip(axes.flat, panels, strict=True):
        for arm, runs in curves.items():
            frames = [s if steps else e for e, s in runs]
            frames = [f for f in frames if len(f) and y in f]
            if not frames:
                continue
            xs, mean, half = ci_band(frames, x, y)
            marker = "o" if len(xs) <= 30 else None  # short curves: show the points
            (line,) = ax.plot(xs, mean, label=f"{arm} (n={len(frames)})", lw=1.5, marker=marker, ms=3)
            ax.fill_between(xs, mean - half, mean + half, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if y == "test_top1":
            readable_axes(ax, min_span=10.0, bounds=(0.0, 100.0))
        else:
            readable_axes(ax)
    axes.flat[-1].legend(fontsize=8)
    fig.suptitle("mean over seeds, shaded: 95% CI (Student t)")
    fig.tight_layout()
    return fig


@styled
def efficiency_curves(table: pd.DataFrame, reference: str | None = None) -> Figure:
    """Data efficiency: test top-1 against training-set size (log axis) per arm, mean ± 95% CI over seeds (error
    bars); beside it the paired difference to the ``reference`` arm when the table has one. ``table`` has the
    columns of :func:`masterkey.train.summary.efficiency_table`."""
    with_delta = reference is not None and bool((table["delta_n"] > 0).any())
    fig, axes = subplots(1, 2 if with_delta else 1, figsize=(11 if with_delta else 6.5, 4.2), squeeze=False)
    palette = colormap("tab10")
    sizes = sorted(table["train_size"].unique())
    for i, (arm, group) in enumerate(table.groupby("arm", sort=False)):
        group = group.sort_values("train_size")
        color = palette(i % 10)
        x = group["train_size"].to_numpy(dtype=float) * (1 + 0.012 * (i - len(sizes) / 2))  # no hidden bars
        ci = np.nan_to_num(group["ci95"].to_numpy(dtype=float))
        n = int(group["n"].max())
        axes[0, 0].errorbar(
            x, group["test_top1"], yerr=ci, color=color, marker="o", ms=4, capsize=3, label=f"{arm} (n={n})"
        )
        if with_delta and arm != reference:
            dci = np.nan_to_num(group["delta_ci95"].to_numpy(dtype=float))
            axes[0, 1].errorbar(x, group["delta_top1"], yerr=dci, color=color, marker="o", ms=4, capsize=3, label=arm)
    axes[0, 0].set_ylabel("test top-1 (%)")
    axes[0, 0].set_title("test top-1 vs training-set size (mean ± 95% CI)")
    if with_delta:
        axes[0, 1].axhline(0, color=REFERENCE_COLOR, lw=1)
        axes[0, 1].set_ylabel(f"Δ top-1 vs {reference} (points)")
        axes[0, 1].set_title(f"paired difference to {reference} (± 95% CI)")
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{s:,}" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


@styled
def sigma_trajectories(runs: Mapping[str, Sequence[pd.DataFrame]], labels: Sequence[str] | None = None) -> Figure:
    """Learned scales per epoch: one panel per key (σx solid, σy dashed, γ dotted), one colour per arm; the mean
    over seeds of the ``dw_sigma_x_kJ`` / ``dw_sigma_y_kJ`` / ``dw_gamma_kJ`` columns of the per-epoch metrics (each
    itself the mean over the layers, or channels, holding key J)."""
    from matplotlib.lines import Line2D

    columns = {str(c) for tables in runs.values() for t in tables for c in t.columns}
    keys = sorted({int(c.rsplit("_k", 1)[1]) for c in columns if c.startswith("dw_sigma_x_k")})
    cols = min(4, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows + 0.6), squeeze=False)
    palette = colormap("tab10")
    styles = (("dw_sigma_x_k", "-"), ("dw_sigma_y_k", "--"), ("dw_gamma_k", ":"))
    for k, ax in zip(keys, axes.flat, strict=False):
        for i, tables in enumerate(runs.values()):
            for prefix, style in styles:
                usable = [t for t in tables if f"{prefix}{k}" in t]
                if usable:
                    x, mean, _ = ci_band(usable, "epoch", f"{prefix}{k}")
                    ax.plot(x, mean, style, color=palette(i % 10), lw=1.4)
        ax.set_title(labels[k - 1] if labels is not None and k - 1 < len(labels) else f"key {k}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=palette(i % 10), lw=2, label=arm) for i, arm in enumerate(runs)]
    handles += [
        Line2D([], [], color="0.2", ls=style, label=name) for name, style in (("σx", "-"), ("σy", "--"), ("γ", ":"))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), fontsize=8, frameon=False)
    fig.suptitle("Learned scale-space parameters per epoch (mean over seeds)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return fig
