"""The raw output of a benchmark run, kept beside the results page it feeds.

A results page ``bench/results/NAME.md`` shows medians and ratios; ``bench/results/NAME.raw.json`` holds what they
were computed from: every repeat / sample the script measured, and the context needed to judge them (the command
line, the machine as :func:`machine.describe_machine` reads it, the git commit of the measured tree, UTC start and
end times, the load average at both ends, the package versions as run directories record them). The JSON holds every
number the script printed, so no separate log is kept. Files are written atomically
(:func:`masterkey.files.write_json`), so an interrupted run leaves the previous raw file, never half of one.

    record = RawRecord("cpu")            # at the start: time, load average, machine
    ...                                  # measure
    record.write(raw_path(page), {"samples": ...})
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from machine import describe_machine
from masterkey.files import write_json
from masterkey.runs import environment

REPO = Path(__file__).resolve().parents[1]
#: Keys of the record itself; a script's measurements may not use them.
RECORD_KEYS = (
    "command", "argv", "machine", "environment", "git_commit", "git_dirty", "utc_start", "utc_end",
    "load_average_start", "load_average_end", "page",
)  # fmt: skip


def raw_path(page: str | Path) -> Path:
    """``bench/results/startup.md`` -> ``bench/results/startup.raw.json`` (any suffix is replaced)."""
    page = Path(page)
    return page.with_name(f"{page.stem}.raw.json")


def raw_note(page: str | Path) -> str:
    """The line a generated results page ends with, naming its raw file."""
    return f"Raw output of this run (every sample, machine, command, commit, load): `{raw_path(page).name}`."


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_state(repo: Path = REPO) -> tuple[str | None, bool | None]:
    """(commit, whether tracked files other than the results pages differ from it) of the tree the benchmark runs
    from; (None, None) outside a git checkout or without git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(changes.strip())


class RawRecord:
    """The context of one benchmark run, taken when it starts; :meth:`write` adds the measurements and the end."""

    def __init__(self, device: str | torch.device = "cpu", argv: list[str] | None = None) -> None:
        self.argv = list(sys.argv if argv is None else argv)
        self.utc_start = _utc_now()
        self.load_average_start = _load_average()
        self.machine = describe_machine(device)
        self.environment = environment()
        self.git_commit, self.git_dirty = git_state()

    @property
    def command(self) -> str:
        """The command line as typed from the repository root, e.g. ``python bench/bench_startup.py --repeats 3``."""
        script = Path(self.argv[0]) if self.argv else Path("?")
        with contextlib.suppress(ValueError):  # a script outside the repository keeps its path
            script = script.resolve().relative_to(REPO)
        return shlex.join(["python", str(script), *self.argv[1:]])

    def write(self, path: str | Path, measurements: dict[str, Any], page: str | Path | None = None) -> Path:
        """Write the record and ``measurements`` (every sample, JSON-serialisable) as one JSON object to
        ``path``, atomically; ``page`` is the results page the numbers feed, if any. Returns ``path``."""
        clash = sorted(set(measurements) & set(RECORD_KEYS))
        if clash:
            raise ValueError(f"measurement keys {clash} clash with the record's own")
        record = {
            "command": self.command,
            "argv": self.argv,
            "machine": self.machine,
            "environment": self.environment,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "utc_start": self.utc_start,
            "utc_end": _utc_now(),
            "load_average_start": self.load_average_start,
            "load_average_end": _load_average(),
            "page": None if page is None else Path(page).name,
            **measurements,
        }
        write_json(path, record)
        return Path(path)
