"""Shared fixtures. Tests use the real weights and images in ../shared (CI has a copy beside the checkout) and
never touch the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASTERKEY_SHARED", REPO.parent / "shared"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def one_thread() -> object:
    """Small models run fastest on one thread, and far faster than on two when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ../shared folder (models, data, keys)."""
    if not (SHARED / "models").is_dir():
        pytest.fail(f"{SHARED} is missing: tests need ../shared (or MASTERKEY_SHARED) with models and data")
    return SHARED


@pytest.fixture(scope="session")
def models_dir(shared: Path) -> Path:
    return shared / "models"


@pytest.fixture(scope="session")
def cifar_convnexts(models_dir: Path) -> list[Path]:
    return sorted((models_dir / "cifar10-convnext").glob("*.safetensors"))


@pytest.fixture(scope="session", autouse=True)
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decoded-image cache for the whole session, outside the repository."""
    path = Path(os.environ.get("MASTERKEY_TEST_CACHE", tmp_path_factory.mktemp("cache")))
    os.environ["MASTERKEY_CACHE"] = str(path)
    return path


@pytest.fixture
def small_tree():
    """``small_tree(root, source, classes, per_class)``: an ImageFolder tree at ``root`` holding the first
    ``per_class`` real images of the first ``classes`` classes of the ImageFolder ``source``."""
    import shutil

    def make(root: Path, source: Path, classes: int = 3, per_class: int = 4) -> Path:
        for cls in sorted(p.name for p in source.iterdir())[:classes]:
            (root / cls).mkdir(parents=True)
            for img in sorted((source / cls).iterdir())[:per_class]:
                shutil.copy(img, root / cls / img.name)
        return root

    return make
