"""Run directories: run.json records the command line as the user typed it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from masterkey import runs
from masterkey.cli import main
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


def test_recording_the_environment_imports_nothing_it_records() -> None:
    """Versions come from the installed metadata: no torch, torchvision or timm import (seconds each, and a
    torchvision built for another torch fails on import)."""
    script = (
        "import json, sys; from masterkey.runs import environment; env = environment(); "
        "print(json.dumps({'env': env, 'loaded': [m for m in ('torch', 'torchvision', 'timm') if m in sys.modules]}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["loaded"] == []
    env = report["env"]
    assert env["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["torchvision"] == importlib.metadata.version("torchvision")
    assert env["timm"] == importlib.metadata.version("timm") and "cuda" not in env  # no torch, no device facts


def test_a_broken_torchvision_cannot_cost_a_finished_run_its_results(tmp_path: Path) -> None:
    """A torchvision built for another torch raises on import (the operator registry fails); a fit run never
    imports it, and run.json still names its version."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    out = tmp_path / "fit"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), *sys.path])}
    argv = ["fit", "--keys", "paper8", "--query", "source == 'convnext_atto_s0_e20'", "--reference", "none"]
    done = subprocess.run(
        [sys.executable, "-m", "masterkey", *argv, "-o", str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "warning" not in done.stderr, done.stderr
    assert len(pd.read_parquet(out / "fits.parquet")) > 0
    info = json.loads((out / RUN_INFO).read_text())
    assert info["environment"]["torchvision"] == importlib.metadata.version("torchvision")
    assert info["environment"]["torch_threads"] >= 1  # the run made tensors: torch's own facts are recorded


def test_a_failure_to_record_the_environment_is_one_warning_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> dict:
        raise RuntimeError("operator torchvision::nms does not exist\nmore detail")

    monkeypatch.setattr(runs, "environment", broken)
    out = tmp_path / "fit"
    argv = ["fit", "--keys", "paper8", "--query", "source == 'convnext_atto_s0_e20'", "--reference", "none"]
    assert main([*argv, "-o", str(out)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "wrote" not in line]
    assert err == [
        "masterkey: warning: could not record the environment in run.json "
        "(RuntimeError: operator torchvision::nms does not exist)"
    ]
    info = json.loads((out / RUN_INFO).read_text())
    assert info["environment"] == {"error": "RuntimeError: operator torchvision::nms does not exist"}
    assert info["kind"] == "fit" and len(pd.read_parquet(out / "fits.parquet")) > 0
