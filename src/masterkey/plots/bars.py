"""Bars and boxes: cos² per key, a mean per row, accuracy after a swap and per-layer sensitivity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from masterkey.plots.style import REFERENCE_COLOR, colormap, key_colors, styled, subplots, wrap

if TYPE_CHECKING:  # pandas loads only where a figure needs it
    import pandas as pd


@styled
def cos2_boxplots(
    groups: Mapping[str, tuple[Sequence[np.ndarray], np.ndarray | None]],
    labels: Sequence[str],
    reference_label: str = "random",
    title: str | None = None,
) -> Figure:
    """Per-key distributions of cos² (left) and of the deviation √(1 - cos²) of the normalised filter from its
    fit (right), one row per group (e.g. kernel size), with the distribution against a random key set in grey.

    ``groups`` maps a row title to (cos² per key, cos² against the random reference or None).
    """
    n_keys = len(labels)
    colors = key_colors(n_keys)
    fig, axes = subplots(len(groups), 2, figsize=(max(8.0, 1.5 + 1.1 * (n_keys + 1)), 2.7 * len(groups)), squeeze=False)
    for r, (group, (per_key, reference)) in enumerate(groups.items()):
        data = [np.asarray(v, dtype=float) for v in per_key]
        names = [lab.split()[0] for lab in labels]
        box_colors: list[object] = list(colors)
        if reference is not None and len(reference):
            data.append(np.asarray(reference, dtype=float))
            names.append(reference_label)
            box_colors.append(REFERENCE_COLOR)
        for c, (metric, transform) in enumerate(
            (("cos²", lambda v: v), ("deviation √(1−cos²)", lambda v: np.sqrt(np.clip(1 - v, 0, 1))))
        ):
            ax = axes[r][c]
            values = [transform(d) if len(d) else np.array([np.nan]) for d in data]
            parts = ax.boxplot(
                values,
                widths=0.6,
                patch_artist=True,
                showfliers=False,
                showmeans=True,
                meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 4},
                medianprops={"color": "black"},
            )
            for patch, color in zip(parts["boxes"], box_colors, strict=True):
                patch.set_facecolor(color)
                patch.set_alpha(0.85)
            ax.set_xticks(range(1, len(names) + 1))
            ax.set_xticklabels(names)
            for tick, color in zip(ax.get_xticklabels(), box_colors, strict=True):
                tick.set_color(color if color != REFERENCE_COLOR else "0.35")
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel(metric)
            ax.set_title(f"{group}: {metric}")
            ax.grid(axis="y", alpha=0.3)
            if r == len(groups) - 1:
                ax.set_xlabel("key (boxes: quartiles, whiskers 1.5 IQR, ◇ mean)")
    fig.suptitle(title or "How well each key explains the filters assigned to it")
    fig.tight_layout()
    return fig


@styled
def mean_bars(table: pd.DataFrame, value: str, error: str | None, label: str, title: str, xlabel: str) -> Figure:
    """Horizontal bars of ``value`` (± ``error``) per row of ``table``, labelled by ``label``, values printed."""
    fig, ax = subplots(figsize=(7.5, 0.9 + 0.42 * len(table)))
    y = np.arange(len(table))
    values = table[value].to_numpy(dtype=float)
    errors = table[error].to_numpy(dtype=float) if error and error in table else None
    palette = colormap("tab10")
    ax.barh(y, values, xerr=errors, color=[palette(i % 10) for i in range(len(table))], alpha=0.85, capsize=3)
    ax.set_yticks(y)
    ax.set_yticklabels(table[label].astype(str))
    ax.invert_yaxis()
    finite = values[np.isfinite(values)]
    span = (finite.max() - min(0, finite.min())) if len(finite) else 1
    right = 0.0
    for i, v in enumerate(values):
        if np.isfinite(v):
            err = errors[i] if errors is not None and np.isfinite(errors[i]) else None
            text = f"{v:.2f}" + (f" ± {err:.2f}" if err is not None else "")
            end = v + (err or 0.0)  # past the error bar's cap, so the number never sits on it
            ax.text(end + 0.015 * span, i, text, va="center", fontsize=8)
            right = max(right, end)
    if len(finite):
        ax.set_xlim(right=right + 0.22 * span)  # room for the printed values
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- swap
@styled
def swap_bars(results: pd.DataFrame, title: str | None = None) -> Figure:
    """Top-1 accuracy per key set after swapping, with / without re-estimated normalisation statistics (error bars:
    ``top1_ci95`` where given, all in percent); the unswapped model (keys == "none") is the dashed line."""
    import pandas as pd

    frame = results.copy()
    baseline = frame[frame["keys"].astype(str) == "none"]
    rows = frame[frame["keys"].astype(str) != "none"]
    recal = rows["recalibrated"].astype(bool) if "recalibrated" in rows else pd.Series(False, index=rows.index)
    names = list(dict.fromkeys(rows["keys"].astype(str)))
    fig, ax = subplots(figsize=(max(6.0, 1.8 + 1.1 * len(names)), 4.2))
    x = np.arange(len(names))
    variants = [(False, "as swapped", "tab:blue"), (True, "recalibrated", "tab:orange")]
    present = [v for v in variants if (recal == v[0]).any()]
    width = 0.8 / max(1, len(present))
    for j, (flag, name, color) in enumerate(present):
        part = rows[recal == flag].groupby(rows["keys"].astype(str))
        top1 = part["top1"].mean().reindex(names).to_numpy(dtype=float)
        err = part["top1_ci95"].mean().reindex(names).to_numpy(dtype=float) if "top1_ci95" in rows else None
        offset = (j - (len(present) - 1) / 2) * width
        bars = ax.bar(x + offset, top1, width, yerr=err, capsize=3, label=name, color=color, alpha=0.85)
        above = top1 + (np.nan_to_num(err) if err is not None else 0.0)
        for bar, v, y in zip(bars, top1, above, strict=True):
            if np.isfinite(v):
                ax.text(bar.get_x() + bar.get_width() / 2, y + 1.0, f"{v:.1f}", ha="center", fontsize=7)
    if len(baseline):
        top1 = float(baseline["top1"].iloc[0])
        ax.axhline(top1, color="black", ls="--", lw=1, label=f"unswapped {top1:.1f}")
    ax.set_xticks(x)
    ax.set_xticklabels([wrap(n, 16) for n in names], fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.set_title(title or "Accuracy after replacing every depthwise filter by its best key fit")
    fig.tight_layout()
    return fig


@styled
def sensitivity_bars(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Accuracy drop (percentage points) when only one layer (or stage) is swapped, in network order."""
    where = next(c for c in ("layer", "stage", "name") if c in table)
    unit = str(table["unit"].iloc[0]) if "unit" in table and len(table) else where
    fig, ax = subplots(figsize=(8, 0.9 + 0.26 * len(table)))
    y = np.arange(len(table))
    drops = table["drop"].to_numpy(dtype=float)
    ax.barh(y, drops, color=["tab:red" if d > 0 else "tab:green" for d in drops], alpha=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(table[where].astype(str), fontsize=7 if len(table) > 12 else 9)
    ax.invert_yaxis()
    for i, d in enumerate(drops):
        if np.isfinite(d):
            ax.text(d, i, f" {d:.1f}", va="center", ha="left" if d >= 0 else "right", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_xlabel("top-1 drop (percentage points)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"Sensitivity: accuracy drop when only one {unit} is swapped")
    fig.tight_layout()
    return fig
