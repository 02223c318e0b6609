"""kill -9 during discovery, then a rerun: no output until complete, resumed from the checkpoint, same keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

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
def test_kill_9_during_discover_then_resume_gives_the_same_keys(tmp_path):
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

    resumed = _run("-o", str(out))
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "resumed from a checkpoint" in stdout + stderr + (out / "summary.md").read_text()
    assert not checkpoints.exists()

    fresh = _run("-o", str(tmp_path / "fresh"))
    _, stderr = fresh.communicate(timeout=300)
    assert fresh.returncode == 0, stderr
    assert (out / "keys.safetensors").read_bytes() == (tmp_path / "fresh" / "keys.safetensors").read_bytes()
