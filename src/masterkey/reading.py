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
import re
import stat
from pathlib import Path
from typing import Any

from masterkey.errors import MasterkeyError

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_TEXT_BYTES",
    "describe_torch_error",
    "kind_of",
    "read_bytes",
    "read_json",
    "read_text",
    "regular_file",
    "torch_load",
]

#: Size limits of files read whole: a JSON document (manifest, run.json, summary) and a text file.
MAX_JSON_BYTES = 64 << 20
MAX_TEXT_BYTES = 64 << 20


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


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
            raise MasterkeyError(f"{path}: a loop of symbolic links, not {_a(what)}") from None
        if exc.errno == errno.ENOTDIR:
            raise MasterkeyError(f"{path}: no such {what} (a part of the path is a file, not a folder)") from None
        from masterkey.atomic import describe_os_error

        raise MasterkeyError(describe_os_error(exc, path, "read")) from None
    if not stat.S_ISREG(st.st_mode):
        raise MasterkeyError(f"{path}: {kind_of(st.st_mode)}, not {_a(what)}")
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
            raise MasterkeyError(f"{path}: {kind_of(st.st_mode)}, not {_a(what)}")
        if st.st_size > limit:
            raise MasterkeyError(f"{path}: {st.st_size:,} bytes is too large for {_a(what)} (at most {limit:,})")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise MasterkeyError(f"{path}: more than {limit:,} bytes is too large for {_a(what)}")
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
        raise MasterkeyError(f"{path}: not UTF-8 text (byte {exc.start:,}); not {_a(what)}") from None


def read_json(path: str | Path, what: str = "JSON file", limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON document read with :func:`read_bytes` and parsed with :func:`masterkey.jsonio.loads` (depth limit,
    non-finite values restored): one clear error naming ``path`` for anything that is not such a document."""
    from masterkey.jsonio import loads

    return loads(read_bytes(path, limit, what), path)


def torch_load(path: str | Path, what: str = "PyTorch checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` of a regular file, on the CPU; a file it cannot read is one
    :class:`MasterkeyError` whose cause comes from :func:`describe_torch_error` (never torch's advice to load
    with ``weights_only=False``, which would let the file run code)."""
    import torch

    regular_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MasterkeyError(f"{path}: not a readable {what} ({describe_torch_error(path, exc)})") from None


_MAGIC = {
    b"\x93NUMPY": "a NumPy .npy array, not a PyTorch file",
    b"\x1f\x8b": "a gzip archive, not a PyTorch file",
    b"\x89HDF": "an HDF5 file (Keras?), not a PyTorch file",
    b"\x08": "perhaps an ONNX or protobuf file, not a PyTorch file",
}


def describe_torch_error(path: str | Path, exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed on ``path``, in a few words: what the file is when it is not a
    PyTorch file at all, the Python object it would need when it is a pickle of more than tensors. torch's own
    advice (``weights_only=False``) is never repeated: masterkey does not run code from checkpoints."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        head = b""
    text = str(exc)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            return (
                f"it holds Python objects besides tensors ({found.group(1)}), which masterkey never unpickles because "
                "they could run code; save the state_dict of tensors only, or a .safetensors file"
            )
        if "inline_container" in text:
            return "a zip archive that is not a PyTorch checkpoint"
        first = text.strip().splitlines()[0][:150] if text.strip() else type(exc).__name__
        if "weights_only" not in text and len(first) >= 8:
            return first
        return "a damaged checkpoint, or a pickle of objects other than tensors"
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "a JSON text, not a PyTorch file"
    try:
        head.decode("utf-8")
        return "a text file, not a PyTorch file"
    except UnicodeDecodeError:
        return "an unknown binary format, not a PyTorch file"
