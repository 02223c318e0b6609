"""Run directories for the report tests, every one written by the real writer on real inputs (the default bank,
CIFAR-10 ConvNeXts and images of ../shared): a change to a writer that the report cannot read fails here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from masterkey.cli import main
from masterkey.train import TrainConfig, train
from masterkey.train.experiment import Arm, Experiment
from masterkey.train.runner import run_experiment

SHARED = Path(os.environ.get("MASTERKEY_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
CIFAR = SHARED / "data" / "cifar10"


def make_fit_run(path: Path) -> Path:
    from masterkey.bank import open_bank
    from masterkey.fit import fit_bank, fit_report, write_fit_run

    bank = open_bank("default").query("source == 'convnext_atto_s0_e20'")
    fit = fit_bank(bank, "paper8")
    reference = fit_bank(bank, "random:8:0")
    report = fit_report(fit, reference)
    report["bank"] = str(bank.path)
    config = {"bank": "default", "keys": "paper8", "query": "source == 'convnext_atto_s0_e20'", "reference_seed": 0}
    write_fit_run(path, fit, report, config, overwrite=False)
    return path


def _cli(*argv: str) -> None:
    """Run a masterkey command in this process, as a user would from a terminal (no progress bars)."""
    assert main([*argv, "--no-progress"] if argv[0] == "discover" else list(argv)) == 0, argv


def make_discover_run(path: Path) -> Path:
    """A flat discover run (one kernel size) of two CIFAR-10 ConvNeXts of the default bank, with every default
    baseline and the universality table, written by ``masterkey discover``."""
    _cli(
        *("discover", "default", "--query", "source in ['convnext_atto_s0_e20', 'convnext_atto_s1_e20']"),
        *("-k", "2", "--candidates", "8", "--rounds", "1", "--ae-steps", "100", "--random-seeds", "2"),
        *("--universality", "-o", str(path)),
    )
    return path


def make_discover_run_per_kernel(path: Path) -> Path:
    """A discover run over two kernel sizes (one sub-directory k3/, k7/ each), written by ``masterkey discover``."""
    _cli(
        *("discover", "default", "--query", "source in ['mobilenet_v2_imagenet', 'convnext_atto_s0_e20']"),
        *("-k", "2", "--candidates", "8", "--rounds", "1", "--ae-steps", "100", "--baselines", "kmeans,random"),
        *("--random-seeds", "2", "-o", str(path)),
    )
    return path


def make_swap_run(path: Path, with_sensitivity: bool = True) -> Path:
    """A swap run of a CIFAR-10 ConvNeXt on 20 test images (paper8 and two seeds of random:8), written by
    ``masterkey swap``."""
    sensitivity = ["--sensitivity", "stage"] if with_sensitivity else []
    _cli(
        *("swap", "--weights", str(SHARED / "models" / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors")),
        *("--keys", "paper8", "--keys", "random:8", "--seeds", "2", "--data", str(CIFAR / "test")),
        *("--max-images", "20", *sensitivity, "-o", str(path)),
    )
    return path


def tiny_training(epochs: int = 2) -> TrainConfig:
    """A tiny ConvNeXt on 60 CIFAR-10 training images and 40 test images: 3 steps per epoch."""
    return TrainConfig(
        model="convnext_atto",
        model_kwargs={"num_classes": 10, "dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "patch_size": 2},
        data=str(CIFAR),
        max_train_images=60,
        max_test_images=40,
        batch_size=20,
        epochs=epochs,
        warmup_epochs=0.5,
        progress=False,
        log_every=1,
        threads=1,
    )


def make_train_run(path: Path, epochs: int = 2) -> Path:
    """A training run written by :func:`masterkey.train.train` (frozen paper8 keys)."""
    train(tiny_training(epochs).replace(mode="frozen", keys="paper8"), path)
    return path


def make_experiment_run(path: Path) -> Path:
    """An experiment (trainable and frozen paper8 keys, seeds 0 and 1) written by the real experiment runner."""
    base = {k: v for k, v in tiny_training().to_dict().items() if k != "seed"}
    arms = [Arm("trainable", {"mode": "trainable"}), Arm("frozen-paper8", {"mode": "frozen", "keys": "paper8"})]
    run_experiment(Experiment(base, arms, [0, 1]), path)
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


#: Each run kind the report tests read and the writer that makes it.
RUN_MAKERS = {
    "fit": make_fit_run,
    "discover": make_discover_run,
    "swap": make_swap_run,
    "train": make_train_run,
    "experiment": make_experiment_run,
    "explain": make_explain_run,
    "discover-per-kernel": make_discover_run_per_kernel,
}


@pytest.fixture(scope="session")
def run_dirs(build_once) -> dict[str, Path]:
    """One run of each kind, written once per session for every worker (tests only read them: ``run_copy``)."""
    return {kind.replace("-", "_"): build_once(f"runs/{kind}", make) for kind, make in RUN_MAKERS.items()}


@pytest.fixture
def run_copy(run_dirs: dict[str, Path], tmp_path: Path):
    """A fresh copy of one of the session's runs, for a test that damages it."""

    def copy(kind: str) -> Path:
        return Path(shutil.copytree(run_dirs[kind], tmp_path / kind))

    return copy
