"""What the benchmark scripts print about the machine they ran on: one line, read from the machine itself."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1-minute load average (other jobs sharing the cores show up here), or ``n/a``."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def describe_machine(device: str | torch.device = "cpu") -> str:
    """``"<CPU model>, N CPU cores, <GPU or 'no GPU'>, torch X, load L"`` for the device a benchmark used."""
    device = torch.device(device)
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = f"{torch.cuda.device_count()} GPU(s) unused" if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu_model()}, {os.cpu_count()} CPU cores, {gpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads; load average {load_average()} at the start"
    )
