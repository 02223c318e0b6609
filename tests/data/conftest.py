"""Real CIFAR-10 for the data tests, on one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def data_tests_on_one_thread(one_thread: object) -> None:
    """Every data test runs on one thread (the ``one_thread`` fixture of tests/conftest.py)."""


@pytest.fixture(scope="session")
def cifar(shared: Path) -> Path:
    return shared / "data" / "cifar10"
