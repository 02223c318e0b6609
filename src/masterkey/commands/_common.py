"""Small helpers shared by the commands: tables, JSON output, option parsing, and the bounds of every size a user
gives (checked while the command line is parsed, before any work)."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from masterkey.errors import MasterkeyError

#: Upper bounds of user-given sizes. They are far above any real use and far below what would exhaust a machine.
MAX_BATCH = 65_536  # images (or filters) per batch
MAX_IMAGES = 100_000_000  # images read from a folder or held out
MAX_SEEDS = 1_000  # repetitions with different seeds
MAX_SEED = 2**32 - 1  # seeds must fit every generator (numpy's legacy one takes 32 bits)
MAX_THREADS = 1_024
MAX_KEYS = 10_000  # keys in a key set (also masterkey.keys.MAX_KEYS)
MAX_KERNEL_SIZE = 63  # kernel sizes (also masterkey.keys.MAX_KERNEL_SIZE)
MAX_CHUNK = 1 << 24  # filters per matrix product
MAX_STEPS = 100_000_000  # optimisation steps
MAX_WORKERS = 64  # DataLoader processes (also masterkey.data.decode.MAX_WORKERS)


def int_arg(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a decimal integer in ``low..high``; anything else is one clear line."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*[-+]?\d+\s*", text):
            raise argparse.ArgumentTypeError(f"expected an integer from {low:,} to {high:,}, got {text!r}")
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low:,} to {high:,}, got {value:,}")
        return value

    parse.__name__ = "integer"
    return parse


def float_arg(low: float, high: float, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    where = f"{'(' if open_low else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {where}, got {text!r}") from None
        if not math.isfinite(value) or value < low or value > high or (open_low and value == low):
            raise argparse.ArgumentTypeError(f"expected a finite number in {where}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def int_list_arg(low: int, high: int) -> Callable[[str], tuple[int, ...]]:
    """An argparse ``type``: integers in ``low..high`` separated by commas, e.g. ``3,5,7``."""
    one = int_arg(low, high)

    def parse(text: str) -> tuple[int, ...]:
        parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected integers from {low:,} to {high:,} separated by commas")
        try:
            return tuple(one(p) for p in parts)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (in {text!r})" if len(parts) > 1 else str(exc)) from None

    parse.__name__ = "integer list"
    return parse


SEED = int_arg(0, MAX_SEED)
THREADS = int_arg(1, MAX_THREADS)
BATCH = int_arg(1, MAX_BATCH)
IMAGES = int_arg(1, MAX_IMAGES)
SEEDS = int_arg(1, MAX_SEEDS)
KERNEL_SIZE = int_arg(2, MAX_KERNEL_SIZE)
WORKERS = int_arg(0, MAX_WORKERS)


def device_arg(text: str) -> str:
    """An argparse ``type`` for ``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available),
    checked against this machine, so a missing GPU is one clear line before any work. Only a CUDA device imports
    torch to check: ``cpu`` and ``auto`` cost nothing at parse time."""
    spec = text.strip().lower()
    if spec == "auto":
        return spec
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", spec)
    if not match or (match.group(1) == "cpu" and match.group(2) is not None):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")
    if match.group(1) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine (use --device cpu)")
        count = torch.cuda.device_count()
        if match.group(2) is not None and int(match.group(2)) >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}"
            )
    return spec


def output_arg(text: str) -> str:
    """An argparse ``type`` for ``-o``: a non-empty path (an empty value is a mistake, never "no output")."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty value")
    return text


def query_arg(text: str) -> str:
    """An argparse ``type`` for a metadata query (``--query``, ``bank query EXPR``): parsed while the command line
    is read (:mod:`masterkey.query`), so a query outside the grammar is one line before any work. Its columns are
    checked against the bank when it is evaluated."""
    from masterkey.query import parse

    try:
        parse(text)
    except MasterkeyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def resolved_device(spec: str) -> str:
    """``auto`` → ``cuda`` when CUDA is available, else ``cpu``; other specs unchanged."""
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def print_json(obj: Any) -> None:
    """``obj`` as strict, indented JSON on stdout (the one JSON writer, :func:`masterkey.jsonio.dumps`: a NaN is
    written as ``null`` and recorded in ``nonfinite_values``, never as a bare ``NaN`` that strict parsers refuse)."""
    from masterkey.jsonio import dumps

    sys.stdout.write(dumps(obj) + "\n")


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``--model-kwargs``: :func:`masterkey.networks.models.parse_model_kwargs` (``K=V,...`` or a JSON object)."""
    from masterkey.networks.models import parse_model_kwargs

    return parse_model_kwargs(text)


def note(message: str) -> None:
    """A remark for the user on stderr (stdout stays machine-readable with --json)."""
    print(f"masterkey: {message}", file=sys.stderr)


def note_written(*paths: str | Path | None) -> None:
    """The closing list of a command that writes files: one ``masterkey: wrote ...`` line on stderr per output
    (a directory with its size and the files in it), so that stdout keeps only the results."""
    from masterkey.files import describe_written

    for path in paths:
        if path is not None:
            note(f"wrote {describe_written(path)}")


def add_progress_argument(p: argparse.ArgumentParser, default: Any = None) -> None:
    """``--progress / --no-progress`` on ``p`` and on the parsers of its sub-actions, so that both
    ``masterkey bank --no-progress info`` and ``masterkey bank info --no-progress`` work: bars on stderr; by
    default only when stderr is a terminal. Read it with :func:`progress_enabled`."""
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="progress bars on stderr (default: shown when stderr is a terminal, hidden when it is a pipe or file)",
    )
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in {id(c): c for c in action.choices.values()}.values():
                # SUPPRESS: a sub-action given no option keeps the value its parent parsed.
                add_progress_argument(child, default=argparse.SUPPRESS)


def progress_enabled(args: argparse.Namespace) -> bool:
    """Whether to show progress bars: ``--progress`` / ``--no-progress`` if given, else whether stderr is a
    terminal."""
    choice = getattr(args, "progress", None)
    if choice is None:
        return sys.stderr.isatty()
    return bool(choice)


def add_data_mode_arguments(p: Any, workers: bool = True) -> None:
    """``--data-mode``, ``--memory-budget`` (and ``--workers``): how a command that evaluates images reads them."""
    p.add_argument(
        "--data-mode",
        choices=("auto", "memory", "stream"),
        default="auto",
        help="memory: decode the images once and hold them; stream: decode them batch by batch in DataLoader "
        "workers (same numbers); auto (default): memory when the decoded images fit the memory budget",
    )
    p.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="budget of --data-mode auto, e.g. 16G (default: MASTERKEY_MEMORY_BUDGET, else half the free RAM)",
    )
    if workers:
        p.add_argument(
            "--workers",
            type=WORKERS,
            metavar="N",
            help=f"DataLoader processes when streaming, 0 to {MAX_WORKERS} (default: the CPUs, at most 8)",
        )
