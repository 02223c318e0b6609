"""Small helpers shared by the commands: tables, JSON output, option parsing."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from masterkey.errors import MasterkeyError
from masterkey.networks.models import parse_scalar


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Plain-text table with right-aligned numbers."""
    if not rows:
        return "(none)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}f}" if v == v else "-"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        cells = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))
        return "  ".join(cells).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(b) for b in body)]).rstrip()


def print_json(obj: Any) -> None:
    from masterkey.files import _json_default

    json.dump(obj, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def parse_kwargs(text: str | None, what: str = "--model-kwargs") -> dict[str, Any]:
    """``"num_classes=10,patch_size=1"`` → ``{"num_classes": 10, "patch_size": 1}`` (ints, floats, bools, strings)."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MasterkeyError(f"{what}: expected key=value pairs separated by commas, got {item!r}")
        out[key.strip()] = parse_scalar(value.strip())
    return out


def note(message: str) -> None:
    """A remark for the user on stderr (stdout stays machine-readable with --json)."""
    print(f"masterkey: {message}", file=sys.stderr)


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
        p.add_argument("--workers", type=int, metavar="N", help="DataLoader processes when streaming (default: CPUs)")
