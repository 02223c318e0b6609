"""Report sections of the newer training modes and of data-efficiency sweeps, read from runs the real trainer
wrote: the efficiency figure and table, σ trajectories and final σ per layer, and the mixing weights of span
arms."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from masterkey.plots.curves import efficiency_curves, sigma_trajectories
from masterkey.report import build_report, build_section, load_run
from masterkey.train import TrainConfig
from masterkey.train.experiment import Arm, Experiment
from masterkey.train.runner import run_experiment
from masterkey.train.summary import efficiency_table


@pytest.fixture(scope="module")
def sweep_dir(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sweep: trainable, span and scalespace arms at 20 and 40 CIFAR-10 images, 2 seeds, one epoch each, on a
    ConvNeXt-Atto of 8-32 channels."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = TrainConfig(
        model="convnext_atto",
        model_kwargs={"num_classes": 10, "dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "patch_size": 2},
        data=str(shared / "data" / "cifar10"),
        max_test_images=40,
        batch_size=10,
        epochs=2,
        progress=False,
    ).to_dict()
    base.pop("seed")
    base.pop("max_train_images")
    arms = [
        Arm("trainable", {"mode": "trainable"}),
        Arm("span", {"mode": "span", "keys": "paper8"}),
        Arm("scales", {"mode": "scalespace", "keys": "scalespace8", "sigma_scope": "channel"}),
    ]
    out = tmp_path_factory.mktemp("sweep") / "exp"
    try:
        run_experiment(Experiment(base, arms, [0, 1], None, [20, 40]), out)
    finally:
        torch.set_num_threads(threads)
    return out


def test_a_sweep_report_shows_efficiency_sigmas_and_mixing_weights(sweep_dir: Path, tmp_path: Path) -> None:
    loaded = load_run(sweep_dir)
    assert loaded.efficiency is not None and len(loaded.efficiency) == 6
    section = build_section(loaded, 1)
    figures = {b.name for b in section.blocks if hasattr(b, "png")}
    assert {"r1-experiment-efficiency", "r1-experiment-sigma", "r1-experiment-top1", "r1-experiment-curves"} <= figures
    # span and scale-space arms at both sizes: one heat-map each (runs are grouped as <arm>-n<size>)
    assert {"r1-experiment-alpha-span-n20", "r1-experiment-alpha-span-n40"} <= figures
    assert {"r1-experiment-sigma-layers-scales-n20", "r1-experiment-sigma-layers-scales-n40"} <= figures
    assert not any("alpha-trainable" in f or "alpha-scales" in f for f in figures)
    tables = {b.title: b.table for b in section.blocks if hasattr(b, "table")}
    efficiency = tables["Data efficiency (test top-1 %, mean ± 95% CI half-width over seeds)"]
    assert efficiency[["arm", "train_size"]].values.tolist() == [
        ["trainable", 20], ["trainable", 40], ["span", 20], ["span", 40], ["scales", 20], ["scales", 40]
    ]  # fmt: skip
    per_mode = tables["Per mode (mean ± 95% CI half-width over seeds)"]
    assert per_mode["mode"].tolist() == [
        "trainable-n20",
        "trainable-n40",
        "span-n20",
        "span-n40",
        "scales-n20",
        "scales-n40",
    ]
    summary = pd.read_csv(sweep_dir / "summary.csv")
    span40 = summary[(summary["mode"] == "span") & (summary["train_size"] == 40)]["test_top1"]
    assert per_mode.set_index("mode").loc["span-n40", "test_top1 %"] == pytest.approx(span40.mean())
    # without efficiency.csv the table is rebuilt from summary.csv
    (sweep_dir / "efficiency.csv").rename(tmp_path / "efficiency.csv")
    try:
        rebuilt = build_section(load_run(sweep_dir), 1)
    finally:
        (tmp_path / "efficiency.csv").rename(sweep_dir / "efficiency.csv")
    again = {b.title: b.table for b in rebuilt.blocks if hasattr(b, "table")}
    pd.testing.assert_frame_equal(
        again["Data efficiency (test top-1 %, mean ± 95% CI half-width over seeds)"], efficiency, check_dtype=False
    )
    out = build_report([sweep_dir, sweep_dir / "runs" / "scales-n40-s1"], tmp_path / "report")
    html = (out / "report.html").read_text()
    assert "Data efficiency: accuracy vs training-set size" in html and "Learned scale-space parameters" in html
    assert (out / "r2-train-sigma.png").is_file() and (out / "r2-train-sigma-layers-scale-space.png").exists() is False
    assert re.search(r"r2-train-sigma-layers-scalespace\.png", "\n".join(p.name for p in out.glob("*.png")))


def test_efficiency_figure_draws_each_arm_with_its_intervals() -> None:
    rows = [
        {"arm": arm, "train_size": n, "n": 3, "test_top1": base + n / 100, "ci95": 1.0}
        for arm, base in (("trainable", 30.0), ("transfer-frozen", 35.0))
        for n in (500, 2000)
    ]
    table = pd.DataFrame(rows).assign(delta_top1=[np.nan, np.nan, 5.0, 5.0], delta_ci95=[np.nan, np.nan, 0.5, 0.5])
    table["delta_n"] = [0, 0, 3, 3]
    fig = efficiency_curves(table, "trainable")
    left, right = fig.axes
    assert left.get_legend_handles_labels()[1] == ["trainable (n=3)", "transfer-frozen (n=3)"]
    assert left.get_xscale() == "log" and [t.get_text() for t in left.get_xticklabels()] == ["500", "2,000"]
    means = [c.lines[0].get_ydata() for c in left.containers]
    assert np.allclose(means[0], [35.0, 50.0]) and np.allclose(means[1], [40.0, 55.0])
    assert right.get_legend_handles_labels()[1] == ["transfer-frozen"]  # the reference has no difference to itself
    assert np.allclose(right.containers[0].lines[0].get_ydata(), [5.0, 5.0])
    single = efficiency_curves(table.assign(delta_n=0))
    assert len(single.axes) == 1
    assert efficiency_table({}).empty


def test_sigma_trajectories_show_every_key_per_epoch() -> None:
    epochs = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "dw_sigma_x_k1": [0.4, 0.5, 0.6],
            "dw_sigma_y_k1": [0.6, 0.6, 0.7],
            "dw_sigma_x_k2": [1.0, 1.1, 1.2],
            "dw_sigma_y_k2": [0.9, 0.9, 0.9],
            "dw_gamma_k2": [0.7, 0.8, 0.9],
        }
    )
    fig = sigma_trajectories({"learned": [epochs, epochs.assign(dw_sigma_x_k1=[0.4, 0.7, 0.8])]}, ["a", "b"])
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b"]
    sigma_x = visible[0].get_lines()[0].get_ydata()
    assert np.allclose(sigma_x, [0.4, 0.6, 0.7])  # the mean over the two seeds, per epoch
    assert len(visible[1].get_lines()) == 3  # σx, σy, γ
