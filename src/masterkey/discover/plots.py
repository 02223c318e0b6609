"""Simple figures of a discovery: the greedy path (matplotlib, Agg, no pyplot state); the key grid is
:func:`masterkey.plots.filters.keyset_figure`."""

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


def _baseline_points(part: pd.DataFrame) -> tuple[pd.Series, pd.Series | None]:
    """Mean objective of one baseline method per set size and its 95% CI half-width: the ``ci95`` column where the
    run wrote one (seeds pooled already), else over the rows of that size (one per seed), else None."""
    from masterkey.stats import mean_ci95

    grouped = part.groupby("n_keys")["objective"]
    mean = grouped.mean()
    if "ci95" in part and part["ci95"].notna().any():
        return mean, part.groupby("n_keys")["ci95"].mean().reindex(mean.index)
    if grouped.size().max() > 1:
        return mean, pd.Series({n: mean_ci95(g.tolist())[1] for n, g in grouped}, dtype=float).reindex(mean.index)
    return mean, None


def path_figure(
    path: pd.DataFrame,
    baselines: pd.DataFrame | None = None,
    elbows: dict[int, int] | None = None,
    title: str = "",
    ylabel: str = "objective",
    chosen: int | None = None,
    percent: bool = False,
) -> Figure:
    """The greedy path, the one drawing of it (a discover run's ``path.png`` and the report): objective against
    set size (fewer keys to the left) along each greedy round, each round's elbow marked (x), the chosen set size
    ``chosen`` circled on the last round, baselines (k-means, PCA, random ...) as markers with 95% CI bars.
    ``percent``: the objective is an accuracy fraction, drawn in %."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    scale = 100.0 if percent else 1.0
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.subplots()
    rounds = sorted(path["round"].unique()) if "round" in path else [1]
    for rnd in rounds:
        part = (path[path["round"] == rnd] if "round" in path else path).sort_values("n_keys")
        y = part["objective"].to_numpy(dtype=float) * scale
        ax.plot(part["n_keys"], y, "-o", ms=2.5, lw=1.2, label=f"greedy round {rnd}" if len(rounds) > 1 else "greedy")
        at = part[part["n_keys"] == elbows[rnd]] if elbows and rnd in elbows else part.iloc[0:0]
        if len(at):
            x0, y0 = float(at["n_keys"].iloc[0]), float(at["objective"].iloc[0]) * scale
            ax.plot([x0], [y0], "x", ms=9, mew=2, color="k", label="elbow" if rnd == rounds[0] else None)
            ax.annotate(f"elbow {elbows[rnd]}", (x0, y0), textcoords="offset points", xytext=(6, -12), fontsize=8)
    last = path[path["round"] == rounds[-1]] if "round" in path else path
    at = last[last["n_keys"] == chosen] if chosen is not None else last.iloc[0:0]
    if len(at):
        x0, y0 = float(at["n_keys"].iloc[0]), float(at["objective"].iloc[0]) * scale
        ax.plot([x0], [y0], "o", ms=10, mfc="none", mec="k", mew=1.5, label=f"chosen: {chosen} keys")
        ax.annotate(f"{y0:.3f}", (x0, y0), textcoords="offset points", xytext=(8, 6), fontsize=8)
    if baselines is not None and len(baselines):
        markers = "sD^v<>ph*"
        others = baselines[baselines["method"] != "discovered"]
        for j, (method, part) in enumerate(others.groupby("method", sort=False)):
            mean, err = _baseline_points(part)
            ax.errorbar(
                mean.index,
                mean.to_numpy(dtype=float) * scale,
                yerr=None if err is None else np.nan_to_num(err.to_numpy(dtype=float)) * scale,
                fmt=markers[j % len(markers)],
                ms=5,
                capsize=3,
                linestyle="none",
                label=str(method),
            )
    ax.set_xlabel("number of keys")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{ylabel} (%)" if percent and "%" not in ylabel else ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    ax.set_title(title or "greedy backward elimination", fontsize=9)
    return fig
