"""Figures (masterkey.plots): each draws what it should, legibly sized, without global state."""

from __future__ import annotations

import io
import struct

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from masterkey.keys import load_keys
from masterkey.plots.bars import cos2_boxplots, mean_bars, sensitivity_bars, swap_bars
from masterkey.plots.curves import experiment_curves, training_curves
from masterkey.plots.filters import assigned_samples, filter_grid, image_panels, key_grid, keyset_figure
from masterkey.plots.heatmaps import matrix_heatmap, proportion_heatmap
from masterkey.plots.style import REFERENCE_COLOR, figure_png, key_colors, short_layers


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def decoded(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def keys() -> np.ndarray:
    return load_keys("paper8").keys.numpy()


@pytest.fixture(scope="module")
def labels() -> list[str]:
    return load_keys("paper8").key_labels()


def test_key_colors_are_distinct_and_never_grey() -> None:
    for n in (1, 8, 9, 12, 18, 30):
        colors = [to_rgb(c) for c in key_colors(n)]
        assert len(colors) == n
        assert len(set(colors)) == n
        assert all(np.ptp(c) > 0.05 for c in colors), "grey is reserved for references"
    assert key_colors(8) == key_colors(8)[:8]  # deterministic
    assert key_colors(5) == key_colors(8)[:5]  # key i keeps its colour when K grows within a palette


def test_figures_leave_global_matplotlib_state_alone(keys, labels) -> None:
    backend, size = matplotlib.get_backend(), matplotlib.rcParams["font.size"]
    matplotlib.rcParams["font.size"] = 13.0
    try:
        fig = key_grid(keys, labels)
        assert matplotlib.rcParams["font.size"] == 13.0
        assert matplotlib.get_backend() == backend
        title_sizes = {t.get_fontsize() for t in fig.axes[0].texts if t.get_text() in labels}
        assert title_sizes == {9.0}  # the report's style applied inside the figure
    finally:
        matplotlib.rcParams["font.size"] = size


def test_key_grid_draws_each_key_with_its_label_and_colour(keys, labels) -> None:
    fig = key_grid(keys, labels, "paper8")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.images) == 8
    np.testing.assert_allclose(ax.images[6].get_array(), keys[6])
    texts = {t.get_text(): t for t in ax.texts}
    assert "1 shift-down" in texts
    assert to_rgb(texts["5 d/dx"].get_color()) == to_rgb(key_colors(8)[4])
    width, height = png_size(figure_png(fig))
    assert 700 < width < 1400 and 150 < height < width


def test_key_grid_wraps_many_keys() -> None:
    many = load_keys("random:20:0").keys.numpy()
    fig = key_grid(many, columns=8)
    assert len(fig.axes[0].images) == 20
    _, height = png_size(figure_png(fig))
    assert height > 250


def test_filter_panels_are_centred_on_zero(keys) -> None:
    fig = filter_grid([("a", keys[:2], ["x", "y"]), ("b", -keys[:2], None)], column_titles=["k1", "k2"])
    ax = fig.axes[0]
    assert len(ax.images) == 4
    for image in ax.images:
        lo, hi = image.get_clim()
        assert lo == pytest.approx(-hi)
    # Red for positive: the centre pixel of key 7 is its largest value.
    pixels = decoded(figure_png(key_grid(keys[6:7], ["7"])))
    red = (pixels[..., 0] > 100) & (pixels[..., 1] < 40) & (pixels[..., 2] < 60)
    assert red.sum() > 20


def test_assigned_samples(keys, labels) -> None:
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal((n, 7, 7)) for n in (3, 0, 5, 5, 5, 5, 5, 5)]
    cos2 = [rng.random(len(s)) for s in samples]
    counts = [30, 0, 50, 50, 50, 50, 50, 50]
    fig = assigned_samples(keys, labels, samples, cos2, counts, "7x7")
    assert len(fig.axes[0].images) == 8 + sum(len(s) for s in samples)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "30 (9.1%)" in texts and "0 (0.0%)" in texts  # 30 of 330
    assert sum(t.startswith("cos² ") for t in texts) == sum(len(s) for s in samples)


def test_short_layer_names() -> None:
    names = ["stages.0.blocks.0.conv_dw", "stages.0.blocks.1.conv_dw", "stages.1.blocks.0.conv_dw"]
    assert short_layers(names) == ["0.blocks.0", "0.blocks.1", "1.blocks.0"]
    assert short_layers(["_blocks.0._depthwise_conv", "_blocks.12._depthwise_conv"]) == ["0", "12"]
    assert short_layers(["conv"]) == ["conv"]


def test_proportion_heatmap_one_panel_per_source(labels) -> None:
    rows = []
    rng = np.random.default_rng(0)
    for source, n_layers in (("mnv2", 17), ("convnext", 6), ("effnet", 3)):
        for i in range(n_layers):
            p = rng.dirichlet(np.ones(8))
            rows.append(
                {"source": source, "layer": f"blocks.{i}.dw", "layer_index": n_layers - 1 - i, "n": 10}
                | {f"p_{k + 1}": p[k] for k in range(8)}
            )
    fig = proportion_heatmap(pd.DataFrame(rows), labels)
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["mnv2", "convnext", "effnet"]
    # Layers are drawn in network order (layer_index), whatever the row order.
    first = panels[0]
    assert [t.get_text() for t in first.get_yticklabels()][:2] == ["16", "15"]
    assert panels[0].images[0].get_array().shape == (17, 8)
    assert png_size(figure_png(fig))[1] > 400


def test_cos2_boxplots_with_reference(labels) -> None:
    rng = np.random.default_rng(0)
    groups = {
        "7x7": ([rng.random(50) for _ in range(8)], rng.random(400) * 0.3),
        "3x3": ([rng.random(50) for _ in range(7)] + [np.array([])], None),
    }
    fig = cos2_boxplots(groups, labels)
    top_left, top_right, bottom_left, _ = fig.axes
    assert [t.get_text() for t in top_left.get_xticklabels()] == [str(i) for i in range(1, 9)] + ["random"]
    assert len(top_left.patches) == 9 and len(bottom_left.patches) == 8
    assert "deviation" in top_right.get_ylabel()
    assert to_rgb(top_left.patches[-1].get_facecolor()) == to_rgb(REFERENCE_COLOR)


def test_training_curves_band_over_seeds() -> None:
    runs = {
        mode: [
            pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [2.0, 1.0, 0.5], "test_top1": [50.0 + s, 70.0, 80.0 + s]})
            for s in range(3)
        ]
        for mode in ("normal", "frozen-keys")
    }
    fig = training_curves(runs)
    _, acc_ax = fig.axes
    assert len(acc_ax.lines) == 2 and len(acc_ax.collections) == 2  # a mean line and a min-max band per mode
    np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), [51.0, 70.0, 81.0])
    steps = {"normal": [pd.DataFrame({"step": range(100), "train_loss": np.linspace(2, 0.5, 100)})]}
    fig = training_curves({"normal": runs["normal"]}, steps)
    assert fig.axes[0].get_xlabel() == "step"


def test_one_epoch_curves_stay_readable() -> None:
    """A one-epoch run: one point per curve, values that barely differ. No offset notation (+2.213), the point
    marked and its value printed, a y-range of a few units around it, a note saying why there is no curve."""
    one = [pd.DataFrame({"epoch": [1], "train_loss": [2.21334], "test_loss": [2.2132], "test_top1": [15.0]})]
    fig = training_curves({"frozen": one})
    fig.canvas.draw()
    loss_ax, acc_ax = fig.axes
    for ax in (loss_ax, acc_ax):
        assert ax.yaxis.get_offset_text().get_text() == ""
        assert ax.lines[0].get_marker() == "o"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1"]
        assert any("one point per curve" in t.get_text() for t in ax.texts)
    assert {t.get_text() for t in loss_ax.texts} >= {"2.213"}
    low, high = loss_ax.get_ylim()
    assert low < 2.213 < high and high - low > 0.2
    assert acc_ax.get_ylim() == (10.0, 20.0)
    steps = [pd.DataFrame({"step": [1, 2, 3], "train_loss": [2.3012, 2.3011, 2.3013]})]
    loss_ax = training_curves({"frozen": one}, {"frozen": steps}).axes[0]
    assert loss_ax.lines[0].get_marker() == "o"  # three steps: each one shown
    curves = experiment_curves({"frozen": [(one[0], steps[0])]})
    curves.canvas.draw()
    assert all(ax.yaxis.get_offset_text().get_text() == "" for ax in curves.axes)
    assert curves.axes[-1].get_ylim() == (10.0, 20.0)
    many = [
        pd.DataFrame({"epoch": range(1, 41), "train_loss": np.linspace(2, 1, 40), "test_top1": np.linspace(20, 60, 40)})
    ]
    loss_ax, acc_ax = training_curves({"normal": many}).axes
    assert acc_ax.lines[0].get_marker() in (None, "None", "")  # long curves: lines only, no note
    assert not acc_ax.texts and acc_ax.get_ylim()[1] < 65


def test_swap_bars_show_baseline_both_variants_and_seed_intervals() -> None:
    summary = pd.DataFrame(
        {
            "keys": ["none", "paper8", "paper8", "random:8"],
            "recalibrated": [False, False, True, True],
            "top1": [82.0, 40.0, 60.0, 0.5],
            "top1_ci95": [None, None, None, 0.25],
        }
    )
    ax = swap_bars(summary).axes[0]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(sorted(h for h in heights if np.isfinite(h)), [0.5, 40.0, 60.0])  # percent as given
    assert any("unswapped 82.0" in t for t in ax.get_legend_handles_labels()[1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["paper8", "random:8"]
    assert ax.get_ylabel() == "top-1 accuracy (%)"


def test_sensitivity_bars_in_percentage_points() -> None:
    sens = pd.DataFrame(
        {"unit": "stage", "name": ["0", "1", "2"], "top1": [70.0, 75.0, 82.5], "drop": [12.0, 0.5, -0.5]}
    )
    ax = sensitivity_bars(sens).axes[0]
    # Points as given, small ones too (a drop of 0.5 points is not a fraction to scale).
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [12.0, 0.5, -0.5])
    assert "one stage" in ax.get_title()


def test_matrix_heatmap_and_mean_bars() -> None:
    fig = matrix_heatmap(np.eye(3), ["a", "b", "c"], ["x", "y", "z"], "m", vmin=0, vmax=1)
    assert sum(t.get_text() == "1.00" for t in fig.axes[0].texts) == 3
    table = pd.DataFrame({"mode": ["a", "b"], "top1": [90.0, 85.0], "ci95": [0.5, float("nan")]})
    ax = mean_bars(table, "top1", "ci95", "mode", "t", "x").axes[0]
    assert [t.get_text() for t in ax.texts] == ["90.00 ± 0.50", "85.00"]
    assert ax.texts[0].get_position()[0] > 90.5  # printed past the error bar, not on it
    assert ax.get_xlim()[1] > 95.0  # with room for the text


def test_image_panels() -> None:
    images = {"a": np.zeros((20, 30)), "b": np.ones((20, 30))}
    fig = image_panels(images, "two", columns=2)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    assert png_size(figure_png(fig))[0] > 300


def test_keyset_figure_draws_one_panel_per_key_on_one_stated_scale() -> None:
    from masterkey.keys import KeySet

    base = load_keys("random:3:0", kernel_size=5)
    discovered = KeySet("discovered3-5x5", base.keys, {"shares": [0.5, 0.3, 0.2]}, ("z=0.1", "z=0.5", "z=0.9"))
    fig = keyset_figure(discovered)
    grid, bar = fig.axes
    assert len(grid.images) == 3
    limit = float(base.keys.abs().max())
    assert all(image.get_clim() == pytest.approx((-limit, limit)) for image in grid.images)
    texts = [t.get_text() for t in grid.texts]
    assert {"z=0.1", "z=0.5", "z=0.9", "50.0% of filters", "30.0% of filters", "20.0% of filters"} <= set(texts)
    assert bar.get_ylabel() == f"value (one scale for all, ±{limit:.2f})"
    assert "share of filters" in fig._suptitle.get_text()

    paper = keyset_figure(load_keys("paper8"))
    assert len(paper.axes[0].images) == 8 and "% of filters" not in " ".join(t.get_text() for t in paper.axes[0].texts)
    assert "1 shift-down" in [t.get_text() for t in paper.axes[0].texts]
    many = keyset_figure(load_keys("random:20:0"))
    assert len(many.axes[0].images) == 20 and len(many.axes) == 2
