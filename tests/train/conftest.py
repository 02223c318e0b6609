"""A tiny DS-CNN (timm ConvNeXt-Atto with 8-32 channels, one block per stage, stem patch 2) on small real CIFAR-10
subsets: fast enough to train a few steps on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from masterkey.train import TrainConfig

TINY_KWARGS = {"num_classes": 10, "dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "patch_size": 2}


@pytest.fixture(autouse=True)
def tiny_models_on_one_thread(one_thread: object) -> None:
    """Every training test runs on one thread (the ``one_thread`` fixture of tests/conftest.py)."""


@pytest.fixture(scope="session")
def cifar(shared: Path) -> Path:
    return shared / "data" / "cifar10"


@pytest.fixture
def tiny(cifar: Path) -> TrainConfig:
    """60 training images (6 per class), 40 test images, batch 20: 3 steps per epoch, one epoch."""
    return TrainConfig(
        model="convnext_atto",
        model_kwargs=dict(TINY_KWARGS),
        data=str(cifar),
        max_train_images=60,
        max_test_images=40,
        batch_size=20,
        epochs=1,
        warmup_epochs=0.5,
        eval_batch_size=64,
        progress=False,
        log_every=1,
    )
