"""Fixtures of the command tests: a real discover run, written once per session by ``masterkey discover``."""

from __future__ import annotations

from pathlib import Path

import pytest

from masterkey.cli import main

DISCOVER_FAST = [
    *("--kernel-size", "3,7", "-k", "4", "--compare-k", "2,4", "--ae-steps", "200", "--ae-hidden", "32"),
    *("--candidates", "16", "--random-seeds", "2", "--rounds", "1", "--no-progress"),
]


@pytest.fixture(scope="session")
def discover_run(build_once) -> Path:
    """A real discover run (3x3 and 7x7 keys of the embedded bank) written by ``masterkey discover``, once per
    session for every worker."""

    def make(out: Path) -> None:
        assert main(["discover", *DISCOVER_FAST, "-o", str(out)]) == 0

    return build_once("commands-discover/run", make)
