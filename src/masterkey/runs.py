"""Run directories: the resolved config and the environment are saved beside every result.

Every command that writes a run directory writes ``run.json``::

    {"kind": "fit" | "discover" | "swap" | "train" | ..., "config": {...}, "environment": {...}, "argv": [...]}

so that ``masterkey report`` can tell what a directory holds and anyone can see how it was made.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from masterkey.files import write_json

RUN_INFO = "run.json"


def environment() -> dict[str, Any]:
    """Versions and hardware that shape results."""
    import numpy
    import torch

    from masterkey import __version__

    env: dict[str, Any] = {
        "masterkey": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
    }
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["cuda_version"] = torch.version.cuda
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def command_argv() -> list[str]:
    """``sys.argv``, with the program called ``masterkey`` when it is the console script or ``python -m masterkey``."""
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name == "masterkey" or Path(argv[0]).parts[-2:] == ("masterkey", "__main__.py")):
        argv[0] = "masterkey"
    return argv


def write_run_info(out: str | Path, kind: str, config: dict[str, Any]) -> None:
    """Write ``run.json`` (kind, resolved config, environment, command line) into ``out``."""
    info = {"kind": kind, "config": config, "environment": environment(), "argv": command_argv()}
    write_json(Path(out) / RUN_INFO, info)
