"""Figures of filters and images drawn as pixels: key sets, filter grids, filters assigned to keys, image
panels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from masterkey.plots.style import FILTER_CMAP, colormap, key_colors, styled, subplots, wrap


# ---------------------------------------------------------------------- filter grids
def _as_array(values: object) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()  # type: ignore[union-attr]
    return np.asarray(values, dtype=float)


@dataclass
class Cell:
    """One filter in a grid: position, values, frame colour (a key's colour) and a caption under it."""

    row: int
    col: int
    values: np.ndarray
    frame: object | None = None
    caption: str = ""


_GAP_X = 0.22  # gaps between cells, in cell widths
_GAP_Y = 0.5


def filter_canvas(
    cells: Sequence[Cell],
    title: str | None = None,
    row_titles: Sequence[str] | None = None,
    row_colors: Sequence[object] | None = None,
    column_titles: Sequence[str] | None = None,
    column_colors: Sequence[object] | None = None,
    cell_inches: float = 0.95,
    scale: float | None = None,
) -> Figure:
    """Filters drawn on one axes (fast for hundreds of filters): a diverging colour map centred at 0 with each
    filter scaled to its own largest |value| or, with ``scale``, all on the one range [-scale, scale] shown by a
    colour bar; optional coloured frames, captions, row and column titles."""
    n_rows = 1 + max((c.row for c in cells), default=0)
    n_cols = 1 + max((c.col for c in cells), default=0)
    gap_y = _GAP_Y if any(c.caption for c in cells) else _GAP_X
    left = 1.5 if row_titles else 0.05
    top = 0.75 if column_titles else 0.15
    width = left + n_cols * (1 + _GAP_X)
    height = top + n_rows * (1 + gap_y)
    bar_inches = 1.1 if scale is not None else 0.0
    fig_width = width * cell_inches + bar_inches
    fig = Figure(figsize=(fig_width, height * cell_inches + (0.45 if title else 0)))
    top_frac = 1 - (0.45 / (height * cell_inches + 0.45) if title else 0)
    ax = fig.add_axes((0, 0, 1 - bar_inches / fig_width, top_frac))
    ax.set_xlim(-left, n_cols * (1 + _GAP_X))
    ax.set_ylim(n_rows * (1 + gap_y), -top)
    ax.set_aspect("equal")
    ax.axis("off")
    cmap = colormap(FILTER_CMAP)
    for cell in cells:
        x0, y0 = cell.col * (1 + _GAP_X), cell.row * (1 + gap_y)
        values = _as_array(cell.values)
        vmax = scale if scale is not None else float(np.abs(values).max()) or 1.0
        image = ax.imshow(
            values, cmap=cmap, vmin=-vmax, vmax=vmax, extent=(x0, x0 + 1, y0 + 1, y0), interpolation="nearest"
        )
        frame = cell.frame if cell.frame is not None else "0.75"
        # add_artist, not add_patch: the limits are set for the whole canvas below, so updating them per frame
        # (add_patch) only costs time.
        rect = Rectangle((x0, y0), 1, 1, fill=False, edgecolor=frame, lw=2.4 if cell.frame is not None else 0.7)
        ax.add_artist(rect)
        if cell.caption:
            ax.text(x0 + 0.5, y0 + 1.07, cell.caption, ha="center", va="top", fontsize=8)
    for r, text in enumerate(row_titles or []):
        color = row_colors[r] if row_colors is not None and r < len(row_colors) else "black"
        ax.text(-0.12, r * (1 + gap_y) + 0.5, wrap(text, 13), ha="right", va="center", fontsize=9, color=color)
    for c, text in enumerate(column_titles or []):
        color = column_colors[c] if column_colors is not None and c < len(column_colors) else "black"
        ax.text(c * (1 + _GAP_X) + 0.5, -0.08, wrap(text, 13), ha="center", va="bottom", fontsize=9, color=color)
    # imshow resets the limits to the last image; restore the whole canvas.
    ax.set_xlim(-left, n_cols * (1 + _GAP_X))
    ax.set_ylim(n_rows * (1 + gap_y), -top)
    if scale is not None and cells:
        cax = fig.add_axes((1 - 0.8 * bar_inches / fig_width, 0.12 * top_frac, 0.15 / fig_width, 0.76 * top_frac))
        bar = fig.colorbar(image, cax=cax)
        bar.set_label(f"value (one scale for all, ±{scale:.2f})", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, y=0.995, va="top")
    return fig


@styled
def filter_grid(
    rows: Sequence[tuple[str, Sequence[np.ndarray] | np.ndarray, Sequence[str] | None]],
    title: str | None = None,
    column_titles: Sequence[str] | None = None,
    column_colors: Sequence[object] | None = None,
    cell: float = 0.95,
    scale: float | None = None,
) -> Figure:
    """A grid of filters: ``rows`` of (row title, filters [n, k, k], captions or None); columns may have titles
    and frame colours (a key's colour); ``scale``: one colour range for all (see :func:`filter_canvas`)."""
    cells = []
    for r, (_, filters, captions) in enumerate(rows):
        for c in range(len(filters)):
            frame = column_colors[c] if column_colors is not None and c < len(column_colors) else None
            caption = captions[c] if captions is not None and c < len(captions) else ""
            cells.append(Cell(r, c, _as_array(filters[c]), frame, caption))
    row_titles = [r[0] for r in rows] if any(r[0] for r in rows) else None
    return filter_canvas(cells, title, row_titles, None, column_titles, column_colors, cell, scale)


@styled
def key_grid(
    keys: np.ndarray | object,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    captions: Sequence[str] | None = None,
    columns: int = 8,
    colored: bool = True,
    shared_scale: bool = False,
) -> Figure:
    """Filters side by side (wrapped after ``columns``). With ``colored`` (keys) each is framed and titled in its
    key colour; otherwise (e.g. eigen-patches) frames are neutral. With ``shared_scale`` all share one symmetric
    colour range (their largest |value|), shown by a colour bar; otherwise each uses its own."""
    keys = _as_array(keys)
    n = len(keys)
    scale = (float(np.abs(keys).max()) or 1.0) if shared_scale else None
    labels = list(labels) if labels is not None else [str(i + 1) for i in range(n)]
    colors: list[Any] = key_colors(n) if colored else [None] * n
    if n <= columns:
        rows = [("", keys, list(captions) if captions is not None else None)]
        return filter_grid(rows, title, labels, colors if colored else None, cell=1.05, scale=scale)
    # Several rows: the label goes under each key (column titles would only name the first row).
    cells = [
        Cell(i // columns, i % columns, keys[i], colors[i], labels[i] + (f"\n{captions[i]}" if captions else ""))
        for i in range(n)
    ]
    return filter_canvas(cells, title, cell_inches=0.9, scale=scale)


def keyset_figure(keyset: Any, title: str | None = None, columns: int = 8) -> Figure:
    """A :class:`~masterkey.keys.KeySet` (or its numpy :class:`~masterkey.keys.KeyValues`) drawn as a
    :func:`key_grid` on one shared symmetric colour scale: each key titled with its label and, when the key set
    carries it (discovered keys: provenance ``shares``), captioned with the share of the bank's filters it explains."""
    shares = keyset.provenance.get("shares")
    captions = None
    if isinstance(shares, list) and len(shares) == len(keyset):
        captions = [f"{100 * float(s):.1f}% of filters" for s in shares]
    k = keyset.kernel_size
    what = "; caption: share of filters whose best key it is" if captions else ""
    title = title or f"{keyset.name}: {len(keyset)} keys, {k}x{k} (centred, unit-norm{what})"
    return key_grid(keyset.keys, keyset.key_labels(), title, captions, columns=columns, shared_scale=True)


@styled
def assigned_samples(
    keys: np.ndarray | object,
    labels: Sequence[str],
    samples: Sequence[np.ndarray],
    cos2: Sequence[np.ndarray],
    counts: Sequence[int],
    title: str | None = None,
) -> Figure:
    """One row per key: the key (framed in its colour, with its share of filters), then real filters assigned to
    it (normalised, sign-aligned with the key), each captioned with its cos²."""
    keys = _as_array(keys)
    colors = key_colors(len(keys))
    total = max(1, sum(counts))
    cells = []
    for r, key in enumerate(keys):
        cells.append(Cell(r, 0, key, colors[r], f"{counts[r]:,} ({100 * counts[r] / total:.1f}%)"))
        for c, values in enumerate(samples[r]):
            cells.append(Cell(r, c + 1, _as_array(values), None, f"cos² {float(cos2[r][c]):.2f}"))
    n_samples = max((len(s) for s in samples), default=0)
    column_titles = ["key"] + ["assigned filters →"] + [""] * max(0, n_samples - 1)
    return filter_canvas(cells, title, list(labels), colors, column_titles, None, cell_inches=0.85)


# ---------------------------------------------------------------------- images
@styled
def image_panels(images: Mapping[str, np.ndarray], title: str | None = None, columns: int = 4) -> Figure:
    """Grayscale images side by side with captions (e.g. an image and its reconstructions)."""
    n = len(images)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    first = next(iter(images.values()))
    aspect = first.shape[0] / first.shape[1]
    fig, axes = subplots(rows, cols, figsize=(3.3 * cols, 3.3 * aspect * rows + 1.0), squeeze=False, constrained=True)
    for i, (caption, image) in enumerate(images.items()):
        ax = axes[i // cols][i % cols]
        ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    if title:
        fig.suptitle(title)
    return fig
