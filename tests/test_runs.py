"""Run directories: run.json records the command line as the user typed it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from masterkey.runs import RUN_INFO, command_argv, write_run_info


@pytest.mark.parametrize(
    ("argv0", "expected"),
    [
        ("/usr/local/bin/masterkey", "masterkey"),
        ("/work/src/masterkey/__main__.py", "masterkey"),  # python -m masterkey
        ("bench/bench_train.py", "bench/bench_train.py"),
        ("/x/other/__main__.py", "/x/other/__main__.py"),
    ],
)
def test_the_program_is_named_as_typed(monkeypatch: pytest.MonkeyPatch, argv0: str, expected: str) -> None:
    monkeypatch.setattr(sys, "argv", [argv0, "train", "-o", "out dir"])
    assert command_argv() == [expected, "train", "-o", "out dir"]


def test_run_info_holds_kind_config_environment_and_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["/src/masterkey/__main__.py", "fit"])
    write_run_info(tmp_path, "fit", {"keys": "paper8"})
    info = json.loads((tmp_path / RUN_INFO).read_text())
    assert info["kind"] == "fit" and info["config"] == {"keys": "paper8"}
    assert info["argv"] == ["masterkey", "fit"] and info["environment"]["torch"]
