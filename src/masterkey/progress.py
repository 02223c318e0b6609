"""Progress bars of long operations: one style for all of them, on stderr, shown only when asked.

Library functions take ``progress: bool = False`` and pass it here, so library users and tests stay quiet; the
command line decides (``--progress / --no-progress``, by default whether stderr is a terminal).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

#: Size used when stderr is a terminal that reports none (a bare pseudo-terminal reports 0 x 0, and tqdm would
#: then draw nothing at all: it takes the height as -1 and hides every bar below it).
FALLBACK_COLUMNS, FALLBACK_ROWS = 100, 24


def _columns() -> int | None:
    """None (tqdm follows the terminal) unless stderr reports a width of 0 or none at all."""
    try:
        return None if os.get_terminal_size(sys.stderr.fileno()).columns > 0 else FALLBACK_COLUMNS
    except (OSError, ValueError, AttributeError):
        return FALLBACK_COLUMNS


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    enabled: bool,
    desc: str,
    total: float | None = None,
    unit: str = "it",
    leave: bool = False,
    **kwargs: Any,
) -> Any:
    """A ``tqdm`` bar on stderr named ``desc``, drawn only when ``enabled`` (also when stderr is a pipe: the caller
    asked for it). Use it as tqdm: iterate over it, or ``update`` / ``close`` it. ``leave``: keep the finished bar
    on screen (the outer bar of nested ones); inner bars vanish when done."""
    from tqdm import tqdm

    columns = _columns() if enabled else None
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=leave,
        disable=not enabled,
        file=sys.stderr,
        ncols=columns,
        nrows=None if columns is None else FALLBACK_ROWS,
        dynamic_ncols=enabled and columns is None,
        **kwargs,
    )
