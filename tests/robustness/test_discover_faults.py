"""kill -9 during discovery, then a rerun: no output until complete, resumed from the checkpoint, same keys.

The killed discovery is a process of its own (``python -m masterkey``); the rerun and the uninterrupted run it is
compared with run in the test's process (a process start of their own would only add seconds of imports)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from masterkey.cli import main

ARGS = ["discover", "--kernel-size", "5", "--rounds", "1", "--baselines", "kmeans", "--compare-k", "8", "--no-progress"]


def _run(*extra: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "masterkey", *ARGS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.kill
def test_kill_9_during_discover_then_resume_gives_the_same_keys(tmp_path, capsys):
    out = tmp_path / "disc"
    checkpoints = tmp_path / ".disc.checkpoint"
    proc = _run("-o", str(out))
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not list(checkpoints.glob("*ae.pt")):
        time.sleep(0.02)
    assert proc.poll() is None, "discover finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed discovery must not leave a run directory behind"
    assert list(checkpoints.glob("*ae.pt"))

    code = main([*ARGS, "-o", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "resumed from a checkpoint" in stdout + stderr + (out / "summary.md").read_text()
    assert not checkpoints.exists()

    code = main([*ARGS, "-o", str(tmp_path / "fresh")])
    assert code == 0, capsys.readouterr().err
    assert (out / "keys.safetensors").read_bytes() == (tmp_path / "fresh" / "keys.safetensors").read_bytes()
