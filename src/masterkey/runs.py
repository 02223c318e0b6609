"""Run directories: the resolved config and the environment are saved beside every result.

Every command that writes a run directory writes ``run.json``::

    {"kind": "fit" | "discover" | "swap" | "train" | ..., "config": {...}, "environment": {...}, "argv": [...]}

so that ``masterkey report`` can tell what a directory holds and anyone can see how it was made.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

from masterkey.errors import MasterkeyError
from masterkey.files import RUN_INFO, RUN_INFO_OPTIONAL, write_json
from masterkey.reading import kind_of, read_json

__all__ = ["RUN_INFO", "command_argv", "environment", "read_run_info", "write_run_info"]

#: A ``run.json`` larger than this is not one masterkey wrote (they are a few kB).
MAX_RUN_INFO_BYTES = 16 << 20


#: Distributions whose versions shape results, recorded from their installed metadata (never by importing them:
#: importing timm imports torchvision and torch._dynamo, seconds of start-up, and a torchvision built for another
#: torch fails on import).
VERSIONED = ("torch", "torchvision", "timm", "numpy", "safetensors", "pandas", "pyarrow")


def _installed_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def environment() -> dict[str, Any]:
    """Versions and hardware that shape results.

    Package versions come from the installed metadata, so recording them imports nothing. The torch facts that need
    torch itself (its build string, threads, CUDA devices) are recorded when the run has imported torch, which is
    when they shaped the results; a run that never made a tensor does not pay for importing it.
    """
    from masterkey import __version__

    env: dict[str, Any] = {
        "masterkey": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        **_installed_versions(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__  # the build too, e.g. 2.4.1+cu121, which the metadata may not say
        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.is_available()
        if env["cuda"]:
            env["cuda_version"] = torch.version.cuda
            env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def _environment_or_note() -> dict[str, Any]:
    """:func:`environment`, or, when recording it fails, ``{"error": ...}`` and one warning line: the environment
    is a record beside the results, never a reason to lose them."""
    try:
        return environment()
    except Exception as exc:  # anything at all: the results are already computed
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
        logging.getLogger("masterkey").warning("warning: could not record the environment in run.json (%s)", reason)
        return {"error": reason}


def command_argv() -> list[str]:
    """``sys.argv``, with the program called ``masterkey`` when it is the console script or ``python -m masterkey``."""
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name == "masterkey" or Path(argv[0]).parts[-2:] == ("masterkey", "__main__.py")):
        argv[0] = "masterkey"
    return argv


def write_run_info(out: str | Path, kind: str, config: dict[str, Any], **extra: Any) -> None:
    """Write ``run.json`` (kind, resolved config, environment, command line, and any ``extra`` entries such as
    ``warnings``: :data:`masterkey.files.RUN_INFO_OPTIONAL` names those a run folder may have) into ``out``. A
    failure to record the environment is one warning line and an ``{"error": ...}`` environment, never a failed
    run."""
    unknown = set(extra) - set(RUN_INFO_OPTIONAL)
    if unknown:
        raise ValueError(f"run.json entries {sorted(unknown)} are not declared in files.RUN_INFO_OPTIONAL")
    info = {"kind": kind, "config": config, **extra, "environment": _environment_or_note(), "argv": command_argv()}
    write_json(Path(out) / RUN_INFO, info)


def read_run_info(run_dir: str | Path, kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The ``run.json`` of ``run_dir``, validated: an object with a string ``kind`` (one of ``kinds`` when given),
    a ``config`` and an ``environment`` object and an ``argv`` list (the last three may be absent: they read as
    empty). Raises :class:`MasterkeyError` naming the file otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_INFO
    if not run_dir.is_dir():
        if os.path.lexists(run_dir):
            try:
                what = "a file" if run_dir.is_file() else kind_of(os.stat(run_dir).st_mode)
            except OSError:
                what = "a dangling link or a loop of links"
            raise MasterkeyError(f"{run_dir}: {what}, not a run directory")
        raise MasterkeyError(f"{run_dir}: no such run directory")
    if not os.path.lexists(path):
        raise MasterkeyError(
            f"{run_dir}: not a run directory (no {RUN_INFO}; runs are written by masterkey commands with -o)"
        )
    info = read_json(path, "run description", MAX_RUN_INFO_BYTES)  # regular, bounded, depth-limited
    if not isinstance(info, dict) or not isinstance(info.get("kind"), str):
        raise MasterkeyError(f"{path}: expected an object with a string 'kind'")
    if kinds is not None and info["kind"] not in kinds:
        raise MasterkeyError(f"{path}: a run of kind '{info['kind']}', expected {' or '.join(kinds)}")
    out = {"kind": info["kind"]}
    for name, default in (("config", {}), ("environment", {}), ("argv", [])):
        value = default if info.get(name) is None else info[name]
        if type(value) is not type(default):
            raise MasterkeyError(f"{path}: '{name}' must be {'a list' if name == 'argv' else 'an object'}")
        out[name] = value
    return {**info, **out}
