"""Bounded reads that never block: every file masterkey reads by name (bank manifests and metadata, ``run.json``,
run tables, key files, checkpoints, weights) is checked to be a regular file first, and files read whole are
read with a size limit.

A named pipe (FIFO) would block the reader until some other process writes to it, a device such as
``/dev/zero`` never ends, and a link may lead to either: :func:`regular_file` refuses them all with one line
saying what the path is (never "no such file" for a path that exists). :func:`read_bytes` opens without
blocking, checks the opened file again (the path may have changed in between) and reads at most ``limit``
bytes. :func:`read_json` adds the JSON depth limit of :func:`masterkey.jsonio.loads`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from masterkey.errors import MasterkeyError

__all__ = ["MAX_JSON_BYTES", "MAX_TEXT_BYTES", "kind_of", "read_bytes", "read_json", "read_text", "regular_file"]

#: Size limits of files read whole: a JSON document (manifest, run.json, summary) and a text file.
MAX_JSON_BYTES = 64 << 20
MAX_TEXT_BYTES = 64 << 20


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` is, in words: 'a folder', 'a named pipe (FIFO)', 'a device' ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _describe_missing(path: Path, what: str) -> str:
    if path.is_symlink():
        return f"{path}: a link to {os.readlink(path)}, which does not exist"
    return f"{path}: no such {what}"


def regular_file(path: str | Path, what: str = "file") -> os.stat_result:
    """The ``stat`` of ``path`` when it is (or links to) a regular file; otherwise :class:`MasterkeyError` with one
    line saying what it is instead: missing, a dangling link, a link loop, a folder, a FIFO, a device, or not
    accessible. ``what`` names the expected file in messages (``"key file"``, ``"bank manifest"`` ...)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MasterkeyError(_describe_missing(path, what)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MasterkeyError(f"{path}: a loop of symbolic links, not a {what}") from None
        if exc.errno == errno.ENOTDIR:
            raise MasterkeyError(f"{path}: no such {what} (a part of the path is a file, not a folder)") from None
        from masterkey.atomic import describe_os_error

        raise MasterkeyError(describe_os_error(exc, path, "read")) from None
    if not stat.S_ISREG(st.st_mode):
        raise MasterkeyError(f"{path}: {kind_of(st.st_mode)}, not a {what}")
    return st


def read_bytes(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them: a larger file, a FIFO or a device is one
    clear error, and the read never blocks."""
    from masterkey.atomic import describe_os_error

    path = Path(path)
    regular_file(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise MasterkeyError(describe_os_error(exc, path, "read")) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped for something else since regular_file looked
            raise MasterkeyError(f"{path}: {kind_of(st.st_mode)}, not a {what}")
        if st.st_size > limit:
            raise MasterkeyError(f"{path}: {st.st_size:,} bytes, more than a {what} may hold ({limit:,}; corrupt?)")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise MasterkeyError(f"{path}: more than {limit:,} bytes, more than a {what} may hold (corrupt?)")
        return b"".join(chunks)
    except OSError as exc:
        raise MasterkeyError(describe_os_error(exc, path, "read")) from None
    finally:
        os.close(fd)


def read_text(path: str | Path, limit: int = MAX_TEXT_BYTES, what: str = "file") -> str:
    """:func:`read_bytes` decoded as UTF-8 (a file that is not UTF-8 text is one clear error)."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MasterkeyError(f"{path}: not UTF-8 text (byte {exc.start:,}); not a {what}") from None


def read_json(path: str | Path, what: str = "JSON file", limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON document read with :func:`read_bytes` and parsed with :func:`masterkey.jsonio.loads` (depth limit,
    non-finite values restored): one clear error naming ``path`` for anything that is not such a document."""
    from masterkey.jsonio import loads

    return loads(read_bytes(path, limit, what), path)
