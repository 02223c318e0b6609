"""Simple figures of a discovery: the greedy path (matplotlib, Agg, no pyplot state); the key grid is
:func:`masterkey.report.figures.keyset_figure`."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure_bytes(fig: Figure, dpi: int = 120) -> bytes:
    """The figure as PNG bytes (rendered with the Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def path_figure(
    path: pd.DataFrame,
    baselines: pd.DataFrame | None = None,
    elbows: dict[int, int] | None = None,
    title: str = "",
    ylabel: str = "objective",
) -> Figure:
    """Objective against set size along each greedy round, elbows marked, baselines as markers (95% CI bars)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.subplots()
    for rnd, part in path.groupby("round", sort=True):
        part = part.sort_values("n_keys")
        ax.plot(part["n_keys"], part["objective"], "-o", ms=2.5, lw=1.2, label=f"greedy round {rnd}")
        if elbows and rnd in elbows:
            at = part[part["n_keys"] == elbows[rnd]]
            if len(at):
                ax.plot(at["n_keys"], at["objective"], "x", ms=9, mew=2, color="k")
                ax.annotate(
                    f"elbow {elbows[rnd]}",
                    (float(at["n_keys"].iloc[0]), float(at["objective"].iloc[0])),
                    textcoords="offset points",
                    xytext=(6, -12),
                    fontsize=8,
                )
    if baselines is not None and len(baselines):
        markers = "sD^v<>ph*"
        others = baselines[baselines["method"] != "discovered"]
        for j, (method, part) in enumerate(others.groupby("method", sort=False)):
            err = part["ci95"].to_numpy(dtype=float) if "ci95" in part else None
            if err is not None and not np.isfinite(err).any():
                err = None
            ax.errorbar(
                part["n_keys"],
                part["objective"],
                yerr=None if err is None else np.nan_to_num(err),
                fmt=markers[j % len(markers)],
                ms=5,
                capsize=3,
                linestyle="none",
                label=str(method),
            )
    ax.set_xlabel("number of keys")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    ax.set_title(title or "greedy backward elimination", fontsize=9)
    return fig
