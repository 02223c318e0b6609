"""The greedy-path figure: the one drawing of the path, shared by a discover run's ``path.png`` and the report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from masterkey.discover.plots import path_figure


def _path() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "round": [1] * 5 + [2] * 3,
            "n_keys": [12, 11, 10, 9, 8, 10, 9, 8],
            "objective": [0.7, 0.69, 0.67, 0.65, 0.6, 0.68, 0.66, 0.63],
            "removed": range(8),
        }
    )


def test_path_runs_left_to_right_with_elbows_chosen_size_and_pooled_baselines() -> None:
    baselines = pd.DataFrame(
        {
            "method": ["discovered"] + ["kmeans"] * 3 + ["pca"],
            "n_keys": [8] * 5,
            "objective": [0.63, 0.5, 0.52, 0.51, 0.4],
        }
    )
    fig = path_figure(_path(), baselines, elbows={1: 10, 2: 9}, chosen=8)
    ax = fig.axes[0]
    assert not ax.xaxis_inverted()  # fewer keys to the left, as in every discover run's path.png
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["greedy round 1", "elbow", "greedy round 2", "chosen: 8 keys", "kmeans", "pca"]
    assert {t.get_text() for t in ax.texts} >= {"elbow 10", "elbow 9", "0.630"}
    elbow_marks = [line for line in ax.lines if line.get_marker() == "x"]
    assert [(float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in elbow_marks] == [(10.0, 0.67), (9.0, 0.66)]
    kmeans = next(c for c in ax.containers if c.get_label() == "kmeans")
    np.testing.assert_allclose(kmeans.lines[0].get_ydata(), [0.51])  # three seeds pooled into their mean
    assert kmeans.has_yerr  # with the 95% CI over those seeds


def test_an_accuracy_path_is_drawn_in_percent() -> None:
    path = _path().assign(objective=lambda t: t["objective"] * 100)  # stored in percent, drawn as stored
    fig = path_figure(path, None, elbows={1: 10}, ylabel="held-out top-1", chosen=8, percent=True)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "held-out top-1 (%)"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [60.0, 65.0, 67.0, 69.0, 70.0])
