"""Heat-maps: any annotated matrix, one row per layer, and the share of filters per key by layer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from masterkey.plots.style import HEAT_CMAP, key_colors, short_layers, styled, subplots, wrap

if TYPE_CHECKING:  # pandas loads only where a figure needs it
    import pandas as pd


# ---------------------------------------------------------------------- heat-maps
@styled
def matrix_heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    value_label: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    row_colors: Sequence[object] | None = None,
) -> Figure:
    """An annotated heat-map (values printed in cells when the matrix is small)."""
    matrix = np.asarray(matrix, dtype=float)
    n_rows, n_cols = matrix.shape
    fig, ax = subplots(figsize=(1.8 + 0.55 * n_cols, 1.2 + 0.42 * n_rows))
    image = ax.imshow(matrix, cmap=HEAT_CMAP, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels(
        column_labels,
        rotation=45 if max(map(len, column_labels), default=0) > 4 else 0,
        ha="right" if max(map(len, column_labels), default=0) > 4 else "center",
    )
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels(row_labels)
    if row_colors is not None:
        for tick, color in zip(ax.get_yticklabels(), row_colors, strict=False):
            tick.set_color(color)
    lo, hi = np.nanmin(matrix), np.nanmax(matrix)
    if n_rows * n_cols <= 400:
        for (y, x), v in np.ndenumerate(matrix):
            if np.isfinite(v):
                bright = (v - lo) / (hi - lo + 1e-12) > 0.6
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if bright else "white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label(value_label)
    fig.tight_layout()
    return fig


def layer_heatmap(matrix: np.ndarray, layers: Sequence[str], columns: Sequence[str], title: str, xlabel: str) -> Figure:
    """:func:`matrix_heatmap` with one row per layer of a network (names shortened to what tells them apart)."""
    return matrix_heatmap(matrix, short_layers(layers), columns, title, xlabel, "layer")


@styled
def proportion_heatmap(table: pd.DataFrame, labels: Sequence[str], title: str | None = None) -> Figure:
    """Layer x key heat-maps of the proportion of filters per key, one panel per source (layers in depth order).

    ``table`` has columns ``source``, ``layer``, ``layer_index``, ``n`` and ``p_1 .. p_K``.
    """
    n_keys = len(labels)
    pcols = [f"p_{i + 1}" for i in range(n_keys)]
    sources = list(dict.fromkeys(table["source"]))
    n_panels = len(sources)
    cols = min(n_panels, 4)
    grid_rows = math.ceil(n_panels / cols)
    per_panel = [int((table["source"] == s).sum()) for s in sources]
    row_height = max(per_panel) * 0.2 + 1.6
    fig, axes = subplots(
        grid_rows, cols, figsize=(1.2 + 3.5 * cols, row_height * grid_rows), squeeze=False, constrained=True
    )
    colors = key_colors(n_keys)
    image = None
    for i, source in enumerate(sources):
        ax = axes[i // cols][i % cols]
        part = table[table["source"] == source].sort_values("layer_index")
        values = part[pcols].to_numpy(dtype=float)
        image = ax.imshow(values, cmap=HEAT_CMAP, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(wrap(source, 34), fontsize=9)
        ax.set_xticks(range(n_keys))
        ax.set_xticklabels([lab.split()[0] for lab in labels], fontsize=8)
        for tick, color in zip(ax.get_xticklabels(), colors, strict=True):
            tick.set_color(color)
            tick.set_fontweight("bold")
        ax.set_yticks(range(len(part)))
        ax.set_yticklabels(short_layers(part["layer"].tolist()), fontsize=7)
        ax.set_xlabel("key")
        if i % cols == 0:
            ax.set_ylabel("layer (input → output)")
        if n_keys * len(part) <= 160:
            for (y, x), v in np.ndenumerate(values):
                if v >= 0.1:
                    ax.text(
                        x,
                        y,
                        f"{100 * v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="black" if v > 0.6 else "white",
                    )
    for j in range(n_panels, grid_rows * cols):
        axes[j // cols][j % cols].axis("off")
    if image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=0.6, pad=0.01)
        bar.set_label("share of the layer's filters")
    fig.suptitle(title or "Share of filters per key, by layer (numbers: % where ≥ 10%)")
    return fig
