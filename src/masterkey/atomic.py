"""Atomic single-file writes and the one wording of operating-system errors: the lowest layer of masterkey's
output, below :mod:`masterkey.files` (the output rule, atomic directories, locks) and
:mod:`masterkey.runformats` (run tables), which both build on it."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from masterkey.errors import MasterkeyError

__all__ = ["atomic_write", "describe_os_error", "make_parents", "remove_empty", "umask"]


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def describe_os_error(exc: OSError, path: str | Path | None = None, verb: str = "write") -> str:
    """One line for an OS error: the file it concerns (``path`` when given, else ``exc.filename``) and the cause."""
    where = path if path is not None else (exc.filename or None)
    prefix = f"cannot {verb} {where}" if where is not None else f"cannot {verb}"
    code = exc.errno
    if code is None:  # pyarrow and others put the errno only in the message: "... Detail: [errno 28] ..."
        found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
        code = int(found.group(1)) if found else None
    if code == errno.ENOSPC:
        return f"{prefix}: no space left on device"
    if code == errno.EDQUOT:
        return f"{prefix}: disk quota exceeded"
    if code in (errno.EACCES, errno.EPERM):
        return f"{prefix}: permission denied"
    if code == errno.EROFS:
        return f"{prefix}: read-only file system"
    # The system's wording for the code: libraries (pyarrow ...) put long messages in ``strerror``.
    reason = os.strerror(code) if code is not None else (str(exc) or type(exc).__name__).splitlines()[0]
    return f"{prefix}: {reason[:1].lower()}{reason[1:]}"


def make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created, deepest first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        created.append(folder)
    return created[::-1]


def remove_empty(folders: Iterable[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing and rename it over ``path`` on success.

    On any error the temporary file (and any parent folder this call created) is removed and ``path`` is left as
    it was. This is the low-level writer: outputs a user names go through :func:`output_file` or
    :func:`atomic_directory`, which apply the output rule first.
    """
    path = Path(path)
    try:
        created = make_parents(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files; results are ordinary files
    except OSError as exc:
        raise MasterkeyError(describe_os_error(exc, path)) from exc
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        remove_empty(created)
        if isinstance(exc, OSError):
            raise MasterkeyError(describe_os_error(exc, path)) from exc
        raise
