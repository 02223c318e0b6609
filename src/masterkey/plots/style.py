"""The figures' common style: rc settings, colours, PNG rendering and small text helpers."""

from __future__ import annotations

import functools
import io
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import matplotlib
from matplotlib.figure import Figure

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


def styled(fn: F) -> F:
    """Draw inside the figures' rc style without touching the caller's matplotlib settings."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def subplots(
    nrows: int = 1,
    ncols: int = 1,
    figsize: tuple[float, float] = (6, 4),
    squeeze: bool = True,
    constrained: bool = False,
) -> tuple[Figure, Any]:
    """A pyplot-free :class:`Figure` and its axes (as ``Figure.subplots`` returns them)."""
    fig = Figure(figsize=figsize, layout="constrained" if constrained else None)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def colormap(name: str) -> Any:
    """The registered matplotlib colour map ``name``."""
    return matplotlib.colormaps[name]


def key_colors(n: int) -> list[tuple[float, float, float, float]]:
    """One distinct colour per key. Grey is left out (it marks references): tab10 without grey up to 9 keys,
    tab20 without greys up to 18, then a hue circle."""
    if n <= 9:
        cmap = colormap("tab10")
        return [cmap(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)[:n]]
    if n <= 18:
        cmap = colormap("tab20")
        return [cmap(i) for i in range(20) if i not in (14, 15)][:n]
    cmap = colormap("hsv")
    return [cmap(i / n) for i in range(n)]


def figure_png(fig: Figure, dpi: int = DPI, metadata: Mapping[str, str] | None = None) -> bytes:
    """The figure as PNG bytes (tight bounding box, white background; ``metadata``: PNG text chunks)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white", metadata=metadata)
    return buffer.getvalue()


def wrap(text: str, width: int = 14) -> str:
    """``text`` broken into lines of at most ``width`` characters (titles and tick labels)."""
    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


def short_layers(names: Sequence[str]) -> list[str]:
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
