"""Safe file output: atomic writes, atomic directories, write locks, checksums.

Nothing half-written is ever left at a final path: files are written to a temporary sibling and renamed;
directories are built under a temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from masterkey.errors import MasterkeyError


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _describe_os_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"cannot write {path}: no space left on device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied (is the location writable?)"
    return f"cannot write {path}: {exc.strerror or exc}"


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing and rename it over ``path`` on success.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are ordinary files
    except OSError as exc:
        raise MasterkeyError(_describe_os_error(path, exc)) from exc
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise MasterkeyError(_describe_os_error(path, exc)) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)


def write_text(path: str | Path, text: str) -> None:
    """Write text, atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it to ``path`` when the block succeeds.

    With ``overwrite`` an existing ``path`` is replaced only after the new one is complete. A second process
    building the same ``path`` at the same time is refused (see :func:`write_lock`). Leftovers of a writer that
    was killed (temporary directories, a replaced directory not yet deleted) are cleaned up first.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise MasterkeyError(f"{path} already exists (pass --overwrite to replace it)")
    with write_lock(path):
        _recover_leftovers(path)
        if path.exists() and not overwrite:  # another process may have finished it while we waited
            raise MasterkeyError(f"{path} already exists (pass --overwrite to replace it)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            os.chmod(tmp, 0o777 & ~_umask())
        except OSError as exc:
            raise MasterkeyError(_describe_os_error(path, exc)) from exc
        try:
            yield tmp
            _fsync_tree(tmp)
            replace_directory(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise MasterkeyError(_describe_os_error(path, exc)) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def replace_directory(src: Path, dst: Path) -> None:
    """Move the complete directory ``src`` to ``dst``; an existing ``dst`` is moved aside first and deleted only
    once ``src`` is in place (a writer killed in between is repaired by the next :func:`atomic_directory`)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _recover_leftovers(path: Path) -> None:
    """Called with the write lock held, so any temporary sibling belongs to a writer that died."""
    if not path.parent.is_dir():
        return
    olds = sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"))
    if olds and not path.exists():
        # Killed between moving the previous version aside and moving the new one in: restore the previous one.
        os.replace(olds.pop(), path)
    for stale in [*olds, *path.parent.glob(f".{glob.escape(path.name)}.*.tmp")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                stale.unlink()


def _fsync_tree(path: Path) -> None:
    mode = 0o666 & ~_umask()
    for root, _dirs, files in os.walk(path):
        for name in files:
            child = Path(root) / name
            os.chmod(child, mode)
            with open(child, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def write_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock for writing ``path``; refuse if another process holds it.

    The lock is a ``flock`` on ``.<name>.lock`` beside ``path``; the kernel releases it when the holder dies,
    so a killed writer never leaves a stale lock behind.
    """
    path = Path(path)
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise MasterkeyError(_describe_os_error(path, exc)) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MasterkeyError(
                f"{path} is being written by another process; wait for it to finish or choose another output"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        # The lock file stays: unlinking it would let a third process lock a fresh inode while a second
        # still waits on the old one.
        os.close(fd)
