"""Figures of the report (matplotlib). Every function returns a :class:`matplotlib.figure.Figure` built without
pyplot (no global state, no backend switch: safe in notebooks and servers); :func:`figure_png` renders one to PNG
bytes with the Agg renderer.

Conventions that keep the figures legible side by side: filters are drawn with a diverging colour map centred at 0
(red positive, blue negative), each panel scaled to its own largest |value|; key ``i`` always has colour
``key_colors(K)[i]`` (titles, boxes, heat-map ticks); references (random keys) are grey.
"""

from __future__ import annotations

import functools
import io
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, ScalarFormatter

if TYPE_CHECKING:  # pandas loads only for the figures that take tables: keys show --png needs none
    import pandas as pd

FILTER_CMAP = "RdBu_r"
HEAT_CMAP = "viridis"
REFERENCE_COLOR = "0.6"
DPI = 110
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "figure.titlesize": 12,
    "figure.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
}

F = TypeVar("F", bound=Callable[..., Any])


def _styled(fn: F) -> F:
    """Draw inside the report's rc style without touching the caller's matplotlib settings."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _subplots(
    nrows: int = 1,
    ncols: int = 1,
    figsize: tuple[float, float] = (6, 4),
    squeeze: bool = True,
    constrained: bool = False,
) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize, layout="constrained" if constrained else None)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _cmap(name: str) -> Any:
    return matplotlib.colormaps[name]


def key_colors(n: int) -> list[tuple[float, float, float, float]]:
    """One distinct colour per key. Grey is left out (it marks references): tab10 without grey up to 9 keys,
    tab20 without greys up to 18, then a hue circle."""
    if n <= 9:
        cmap = _cmap("tab10")
        return [cmap(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)[:n]]
    if n <= 18:
        cmap = _cmap("tab20")
        return [cmap(i) for i in range(20) if i not in (14, 15)][:n]
    cmap = _cmap("hsv")
    return [cmap(i / n) for i in range(n)]


def figure_png(fig: Figure, dpi: int = DPI, metadata: Mapping[str, str] | None = None) -> bytes:
    """The figure as PNG bytes (tight bounding box, white background; ``metadata``: PNG text chunks)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white", metadata=metadata)
    return buffer.getvalue()


def _wrap(text: str, width: int = 14) -> str:
    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


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
    cmap = _cmap(FILTER_CMAP)
    for cell in cells:
        x0, y0 = cell.col * (1 + _GAP_X), cell.row * (1 + gap_y)
        values = _as_array(cell.values)
        vmax = scale if scale is not None else float(np.abs(values).max()) or 1.0
        image = ax.imshow(
            values, cmap=cmap, vmin=-vmax, vmax=vmax, extent=(x0, x0 + 1, y0 + 1, y0), interpolation="nearest"
        )
        frame = cell.frame if cell.frame is not None else "0.75"
        ax.add_patch(Rectangle((x0, y0), 1, 1, fill=False, edgecolor=frame, lw=2.4 if cell.frame is not None else 0.7))
        if cell.caption:
            ax.text(x0 + 0.5, y0 + 1.07, cell.caption, ha="center", va="top", fontsize=8)
    for r, text in enumerate(row_titles or []):
        color = row_colors[r] if row_colors is not None and r < len(row_colors) else "black"
        ax.text(-0.12, r * (1 + gap_y) + 0.5, _wrap(text, 13), ha="right", va="center", fontsize=9, color=color)
    for c, text in enumerate(column_titles or []):
        color = column_colors[c] if column_colors is not None and c < len(column_colors) else "black"
        ax.text(c * (1 + _GAP_X) + 0.5, -0.08, _wrap(text, 13), ha="center", va="bottom", fontsize=9, color=color)
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


@_styled
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


@_styled
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


@_styled
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


# ---------------------------------------------------------------------- proportions and errors
def _short_layers(names: Sequence[str]) -> list[str]:
    """Drop the dot-separated tokens that every layer name of a model shares at its start and end."""
    parts = [str(n).split(".") for n in names]
    if len(parts) < 2:
        return [str(n) for n in names]
    prefix = 0
    while all(len(p) > prefix + 1 for p in parts) and len({p[prefix] for p in parts}) == 1:
        prefix += 1
    suffix = 0
    while all(len(p) > prefix + suffix + 1 for p in parts) and len({p[-1 - suffix] for p in parts}) == 1:
        suffix += 1
    return [".".join(p[prefix : len(p) - suffix]) for p in parts]


@_styled
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
    fig, axes = _subplots(
        grid_rows, cols, figsize=(1.2 + 3.5 * cols, row_height * grid_rows), squeeze=False, constrained=True
    )
    colors = key_colors(n_keys)
    image = None
    for i, source in enumerate(sources):
        ax = axes[i // cols][i % cols]
        part = table[table["source"] == source].sort_values("layer_index")
        values = part[pcols].to_numpy(dtype=float)
        image = ax.imshow(values, cmap=HEAT_CMAP, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(_wrap(source, 34), fontsize=9)
        ax.set_xticks(range(n_keys))
        ax.set_xticklabels([lab.split()[0] for lab in labels], fontsize=8)
        for tick, color in zip(ax.get_xticklabels(), colors, strict=True):
            tick.set_color(color)
            tick.set_fontweight("bold")
        ax.set_yticks(range(len(part)))
        ax.set_yticklabels(_short_layers(part["layer"].tolist()), fontsize=7)
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


@_styled
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
    fig, axes = _subplots(
        len(groups), 2, figsize=(max(8.0, 1.5 + 1.1 * (n_keys + 1)), 2.7 * len(groups)), squeeze=False
    )
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


# ---------------------------------------------------------------------- heat-maps
@_styled
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
    fig, ax = _subplots(figsize=(1.8 + 0.55 * n_cols, 1.2 + 0.42 * n_rows))
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
    return matrix_heatmap(matrix, _short_layers(layers), columns, title, xlabel, "layer")


# ---------------------------------------------------------------------- training
@_styled
def training_curves(
    runs: Mapping[str, Sequence[pd.DataFrame]],
    steps: Mapping[str, Sequence[pd.DataFrame]] | None = None,
    title: str | None = None,
) -> Figure:
    """Training loss and test top-1 per epoch; ``runs`` maps a label (mode) to the per-epoch metric tables of its
    seeds (mean line, band = min..max over seeds). Per-step losses, when given, replace the per-epoch loss."""
    palette = _cmap("tab10")
    fig, (loss_ax, acc_ax) = _subplots(1, 2, figsize=(11, 4))
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


def _ci_band(frames: Sequence[pd.DataFrame], x: str, y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    fig, axes = _subplots(2, 2, figsize=(11, 8))
    for ax, (x, y, title, steps) in zip(axes.flat, panels, strict=True):
        for arm, runs in curves.items():
            frames = [s if steps else e for e, s in runs]
            frames = [f for f in frames if len(f) and y in f]
            if not frames:
                continue
            xs, mean, half = _ci_band(frames, x, y)
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


@_styled
def efficiency_curves(table: pd.DataFrame, reference: str | None = None) -> Figure:
    """Data efficiency: test top-1 against training-set size (log axis) per arm, mean ± 95% CI over seeds (error
    bars); beside it the paired difference to the ``reference`` arm when the table has one. ``table`` has the
    columns of :func:`masterkey.train.summary.efficiency_table`."""
    with_delta = reference is not None and bool((table["delta_n"] > 0).any())
    fig, axes = _subplots(1, 2 if with_delta else 1, figsize=(11 if with_delta else 6.5, 4.2), squeeze=False)
    palette = _cmap("tab10")
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


@_styled
def sigma_trajectories(runs: Mapping[str, Sequence[pd.DataFrame]], labels: Sequence[str] | None = None) -> Figure:
    """Learned scales per epoch: one panel per key (σx solid, σy dashed, γ dotted), one colour per arm; the mean
    over seeds of the ``dw_sigma_x_kJ`` / ``dw_sigma_y_kJ`` / ``dw_gamma_kJ`` columns of the per-epoch metrics (each
    itself the mean over the layers, or channels, holding key J)."""
    from matplotlib.lines import Line2D

    columns = {str(c) for tables in runs.values() for t in tables for c in t.columns}
    keys = sorted({int(c.rsplit("_k", 1)[1]) for c in columns if c.startswith("dw_sigma_x_k")})
    cols = min(4, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = _subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows + 0.6), squeeze=False)
    palette = _cmap("tab10")
    styles = (("dw_sigma_x_k", "-"), ("dw_sigma_y_k", "--"), ("dw_gamma_k", ":"))
    for k, ax in zip(keys, axes.flat, strict=False):
        for i, tables in enumerate(runs.values()):
            for prefix, style in styles:
                usable = [t for t in tables if f"{prefix}{k}" in t]
                if usable:
                    x, mean, _ = _ci_band(usable, "epoch", f"{prefix}{k}")
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


@_styled
def mean_bars(table: pd.DataFrame, value: str, error: str | None, label: str, title: str, xlabel: str) -> Figure:
    """Horizontal bars of ``value`` (± ``error``) per row of ``table``, labelled by ``label``, values printed."""
    fig, ax = _subplots(figsize=(7.5, 0.9 + 0.42 * len(table)))
    y = np.arange(len(table))
    values = table[value].to_numpy(dtype=float)
    errors = table[error].to_numpy(dtype=float) if error and error in table else None
    palette = _cmap("tab10")
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
@_styled
def swap_bars(results: pd.DataFrame, title: str | None = None) -> Figure:
    """Top-1 accuracy per key set after swapping, with / without re-estimated normalisation statistics (error bars:
    ``top1_ci95`` where given, all in percent); the unswapped model (keys == "none") is the dashed line."""
    import pandas as pd

    frame = results.copy()
    baseline = frame[frame["keys"].astype(str) == "none"]
    rows = frame[frame["keys"].astype(str) != "none"]
    recal = rows["recalibrated"].astype(bool) if "recalibrated" in rows else pd.Series(False, index=rows.index)
    names = list(dict.fromkeys(rows["keys"].astype(str)))
    fig, ax = _subplots(figsize=(max(6.0, 1.8 + 1.1 * len(names)), 4.2))
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
    ax.set_xticklabels([_wrap(n, 16) for n in names], fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.set_title(title or "Accuracy after replacing every depthwise filter by its best key fit")
    fig.tight_layout()
    return fig


@_styled
def sensitivity_bars(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Accuracy drop (percentage points) when only one layer (or stage) is swapped, in network order."""
    # swap's own tables name the unit swapped in "name" (their "stage" column is that unit's stage)
    where = "name" if "unit" in table and "name" in table else next(c for c in ("layer", "stage", "name") if c in table)
    unit = str(table["unit"].iloc[0]) if "unit" in table and len(table) else where
    fig, ax = _subplots(figsize=(8, 0.9 + 0.26 * len(table)))
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


# ---------------------------------------------------------------------- images
@_styled
def image_panels(images: Mapping[str, np.ndarray], title: str | None = None, columns: int = 4) -> Figure:
    """Grayscale images side by side with captions (e.g. an image and its reconstructions)."""
    n = len(images)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    first = next(iter(images.values()))
    aspect = first.shape[0] / first.shape[1]
    fig, axes = _subplots(rows, cols, figsize=(3.3 * cols, 3.3 * aspect * rows + 1.0), squeeze=False, constrained=True)
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
