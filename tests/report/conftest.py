"""Run directories for the report tests: a real fit run (a ConvNeXt of the default bank) and a real explain run,
plus discover / swap / train / experiment runs written here with the exact file names and columns of the
run-directory contracts (those commands are exercised by their own tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from masterkey.files import write_json, write_text
from masterkey.keys import load_keys
from masterkey.runs import write_run_info


def make_fit_run(path: Path) -> Path:
    from masterkey.bank import open_bank
    from masterkey.commands.fit import write_fit_run
    from masterkey.fit import fit_bank, fit_report

    bank = open_bank("default").query("source == 'convnext_atto_s0_e20'")
    fit = fit_bank(bank, "paper8")
    reference = fit_bank(bank, "random:8:0")
    report = fit_report(fit, reference)
    report["bank"] = str(bank.path)
    config = {"bank": "default", "keys": "paper8", "query": "source == 'convnext_atto_s0_e20'", "reference_seed": 0}
    write_fit_run(path, fit, report, config, overwrite=False)
    return path


def make_discover_run(path: Path) -> Path:
    path.mkdir(parents=True)
    load_keys("paper8").save(path / "keys.safetensors")
    load_keys("random:20:3").save(path / "candidates.safetensors")
    rng = np.random.default_rng(0)
    rows = []
    for rnd, (start, stop) in enumerate(((20, 8), (12, 8)), 1):
        for n in range(start, stop - 1, -1):
            rows.append({"round": rnd, "n_keys": n, "objective": 0.5 + 0.01 * n + 0.002 * rnd, "removed": n})
    pd.DataFrame(rows).to_csv(path / "path.csv", index=False)
    baselines = [
        {"method": "kmeans", "n_keys": 8, "objective": 0.55 + 0.01 * s, "seed": s, "ci95": None} for s in range(3)
    ]
    baselines += [{"method": "pca", "n_keys": 8, "objective": 0.52, "seed": None, "ci95": None}]
    baselines += [{"method": "random", "n_keys": 8, "objective": 0.2, "seed": None, "ci95": 0.02}]
    pd.DataFrame(baselines).to_csv(path / "baselines.csv", index=False)
    uni = [
        {"keys_from": a, "fitted_to": b, "objective": float(rng.uniform(0.3, 0.7)), "own_objective": 0.7}
        for a in ("mnv2", "convnext")
        for b in ("mnv2", "convnext")
    ]
    pd.DataFrame(uni).to_csv(path / "universality.csv", index=False)
    write_json(path / "summary.json", {"n_keys": 8, "objective": 0.58, "selection": {"split": "held-out"}})
    write_text(path / "summary.md", "# Discover\n")
    write_run_info(path, "discover", {"bank": "default", "n_keys": 8})
    return path


def make_discover_run_per_kernel(path: Path) -> Path:
    """A discover run over several kernel sizes: one sub-directory k3/, k7/ each with its own files."""
    path.mkdir(parents=True)
    for k in (3, 7):
        sub = path / f"k{k}"
        sub.mkdir()
        load_keys("paper8", kernel_size=k, resize=True).save(sub / "keys.safetensors")
        pd.DataFrame({"round": 1, "n_keys": [10, 9, 8], "objective": [0.6, 0.59, 0.57], "removed": [3, 1, 0]}).to_csv(
            sub / "path.csv", index=False
        )
        pd.DataFrame(
            {
                "method": ["kmeans", "kmeans", "random"],
                "n_keys": [9, 8, 8],
                "objective": [0.5, 0.49, 0.3],
                "ci95": [None, None, 0.01],
            }
        ).to_csv(sub / "baselines.csv", index=False)
        write_json(sub / "summary.json", {"n_keys": 8, "kernel_size": k})
    write_json(path / "summary.json", {"bank": "default", "kernel_sizes": [3, 7]})
    write_text(path / "summary.md", "# Key discovery\n")
    write_run_info(path, "discover", {"bank": "default", "n_keys": 8})
    return path


def make_swap_run(path: Path, with_sensitivity: bool = True) -> Path:
    """As masterkey.swap.write_swap_run writes it: accuracies as fractions, seeded key sets pooled in summary.csv."""
    path.mkdir(parents=True)
    base = {"n_layers": 17, "n_filters": 7136, "n_images": 1000, "calib_images": 256, "seconds": 3.0}
    rows = [
        {
            "keys": "none",
            "group": "none",
            "seed": None,
            "n_keys": 0,
            "recalibrated": False,
            "calibration": "",
            "top1": 0.823,
            "top5": 0.955,
            "delta_top1": 0.0,
            "mean_cos2": 1.0,
            **base,
        }
    ]
    for recal in (False, True):
        rows.append(
            {
                "keys": "paper8",
                "group": "paper8",
                "seed": None,
                "n_keys": 8,
                "recalibrated": recal,
                "calibration": "train" if recal else "",
                "top1": 0.605 if recal else 0.41,
                "top5": 0.8,
                "delta_top1": -0.2,
                "mean_cos2": 0.69,
                **base,
            }
        )
        for seed in range(3):
            rows.append(
                {
                    "keys": f"random:8:{seed}",
                    "group": "random:8",
                    "seed": seed,
                    "n_keys": 8,
                    "recalibrated": recal,
                    "calibration": "train" if recal else "",
                    "top1": 0.02 + 0.01 * seed,
                    "top5": 0.08,
                    "delta_top1": -0.8,
                    "mean_cos2": 0.39,
                    **base,
                }
            )
    results = pd.DataFrame(rows)
    results.to_csv(path / "results.csv", index=False)
    summary = (
        results.groupby(["group", "recalibrated", "calibration"], sort=False)
        .agg(n_keys=("n_keys", "first"), n_seeds=("top1", "size"), top1=("top1", "mean"), top1_ci95=("top1", "std"))
        .reset_index()
        .rename(columns={"group": "keys"})
    )
    summary.to_csv(path / "summary.csv", index=False)
    write_json(path / "results.json", {"info": {"model": "mobilenet_v2"}, "results": rows})
    pd.DataFrame({"stage": [0, 1, 2], "n_filters": [100, 200, 300], "mean_cos2": [0.7, 0.6, 0.5]}).to_csv(
        path / "per_stage.csv", index=False
    )
    if with_sensitivity:
        names = [f"features.{i}.conv.1.0" for i in range(1, 8)]
        top1 = np.linspace(0.80, 0.70, 7)
        pd.DataFrame({"unit": "layer", "name": names, "keys": "paper8", "top1": top1, "drop": 0.823 - top1}).to_csv(
            path / "sensitivity.csv", index=False
        )
    write_text(path / "summary.md", "# Swap\n")
    write_run_info(path, "swap", {"model": "mobilenet_v2", "keys": ["paper8", "random:8:0..2"]})
    return path


def _metrics(epochs: int, seed: int, frozen: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    e = np.arange(1, epochs + 1)
    loss = 2.3 * np.exp(-e / (3 if frozen else 4)) + 0.3 + 0.02 * rng.random(epochs)
    top1 = 90 - 60 * np.exp(-e / 3) - (1.0 if frozen else 0.0) + rng.random(epochs)
    return pd.DataFrame(
        {
            "epoch": e,
            "step": e * 98,
            "lr": 3e-3 * np.cos(e / epochs),
            "train_loss": loss,
            "train_acc": top1 - 5,
            "test_loss": loss + 0.1,
            "test_top1": top1,
            "test_top5": np.minimum(99.9, top1 + 8),
            "seconds": 12.0 * e,
        }
    )


def make_train_run(path: Path, mode: str = "frozen-keys", seed: int = 0, epochs: int = 6) -> Path:
    path.mkdir(parents=True)
    metrics = _metrics(epochs, seed, frozen=mode != "normal")
    metrics.to_csv(path / "metrics.csv", index=False)
    lines = [json.dumps({"step": int(s), "train_loss": float(2.3 * np.exp(-s / 200) + 0.3)}) for s in range(0, 588, 7)]
    lines += [json.dumps(row) for row in metrics.to_dict(orient="records")]
    write_text(path / "metrics.jsonl", "\n".join(lines) + "\n")
    final = metrics.iloc[-1]
    write_json(
        path / "summary.json", {"mode": mode, "seed": seed, "keys": "paper8", "test_top1": float(final.test_top1)}
    )
    write_run_info(path, "train", {"model": "convnext_atto", "mode": mode, "seed": seed, "data": "cifar10"})
    return path


def make_experiment_run(path: Path) -> Path:
    path.mkdir(parents=True)
    rows = []
    for mode in ("normal", "frozen-keys"):
        for seed in range(3):
            sub = make_train_run(path / "runs" / f"{mode}-s{seed}", mode, seed, epochs=5)
            rows.append(
                {"mode": mode, "seed": seed, "test_top1": float(pd.read_csv(sub / "metrics.csv").test_top1.iloc[-1])}
            )
    pd.DataFrame(rows).to_csv(path / "summary.csv", index=False)
    write_json(path / "summary.json", {"normal": {"mean": 88.0, "ci95": 1.0, "n": 3}})
    write_text(path / "summary.md", "# Experiment\n")
    write_run_info(path, "experiment", {"model": "convnext_atto", "modes": ["normal", "frozen-keys"], "seeds": 3})
    return path


def make_explain_run(path: Path) -> Path:
    from PIL import Image

    from masterkey.explain.eigenpatches import builtin_image
    from masterkey.explain.run import explain_keys, write_explain_run

    images = path.with_name(path.name + "-images")
    images.mkdir()
    for name, (y, x) in {"camera": (60, 180), "astronaut": (20, 200)}.items():
        crop = builtin_image(name)[y : y + 160, x : x + 160]
        Image.fromarray((255 * crop).round().astype(np.uint8)).save(images / f"{name}.png")
    expl = explain_keys("paper8", images=str(images), n_components=10, stride=2, seeds=range(3))
    write_explain_run(expl, path, {"keys": "paper8", "images": str(images)})
    return path


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "fit": make_fit_run(root / "fit"),
        "discover": make_discover_run(root / "discover"),
        "swap": make_swap_run(root / "swap"),
        "train": make_train_run(root / "train"),
        "experiment": make_experiment_run(root / "experiment"),
        "explain": make_explain_run(root / "explain"),
    }


@pytest.fixture
def run_factories() -> dict[str, object]:
    """The builders, for tests that damage a fresh run of their own."""
    return {
        "train": make_train_run,
        "swap": make_swap_run,
        "fit": make_fit_run,
        "discover_per_kernel": make_discover_run_per_kernel,
    }
