"""Safe file output: the one output rule, atomic writes, atomic directories, write locks, checksums.

Every output a command writes goes through :func:`check_output`, the one rule for outputs:

- an output never replaces an input of the same command (resolved paths are compared, so ``-o`` may name neither
  an input, nor a folder inside an input, nor a folder that holds an input);
- an existing path is replaced only with ``overwrite`` (the CLI's ``--overwrite``), and then only when it is a
  masterkey output of the same kind, recognised by :func:`output_kind` (a run's ``run.json``, a bank's
  ``manifest.json``, a key-set file's own metadata) or an empty folder; anything else is refused.

Nothing half-written is ever left at a final path: files are written to a temporary sibling and renamed;
directories are built under a temporary name and renamed into place only when complete. A second process writing
the same output is refused (:func:`write_lock`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from masterkey.errors import MasterkeyError, option


class OutputBusyError(MasterkeyError):
    """Another process holds the write lock of the output (see :func:`write_lock`)."""


#: The file that says what a run directory holds (see :mod:`masterkey.runs`).
RUN_INFO = "run.json"
#: The file that makes a directory a filter bank (see :mod:`masterkey.bank`).
BANK_MANIFEST = "manifest.json"
BANK_FORMAT = "masterkey-bank"
#: The ``format`` in a key-set file's metadata (see :mod:`masterkey.keys`).
KEYSET_FORMAT = "masterkey-keyset"
#: The ``format`` in the metadata of a network's weights written by masterkey (see :mod:`masterkey.nn.export`).
WEIGHTS_FORMAT = "masterkey-weights"
#: The ``producer_name`` of ONNX graphs masterkey writes.
ONNX_PRODUCER = "masterkey"
#: The first line of a key set saved as text.
KEYSET_TEXT_HEADER = "# key set "

#: Output kinds that may replace each other: the train command writes single runs and experiments.
_REPLACEABLE = {"train": {"train", "experiment"}, "experiment": {"train", "experiment"}}
#: A run.json or manifest larger than this is not one masterkey wrote.
_MAX_INFO_BYTES = 64 << 20


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


# ---------------------------------------------------------------------- the output rule
def _read_small_json(path: Path) -> Any:
    try:
        if path.stat().st_size > _MAX_INFO_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _keyset_file_kind(path: Path) -> str | None:
    """``"keys"`` for a key-set file written by masterkey (safetensors metadata or the text header), ``"weights"``
    for a network's weights it wrote, ``"onnx"`` for an ONNX graph it wrote (``producer_name``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if path.suffix == ".safetensors":
                if len(head) < 8:
                    return None
                (size,) = struct.unpack("<Q", head)
                if size > _MAX_INFO_BYTES:
                    return None
                header = json.loads(f.read(size))
                meta = json.loads(header.get("__metadata__", {}).get("masterkey", "{}"))
                kinds = {KEYSET_FORMAT: "keys", WEIGHTS_FORMAT: "weights"}
                return kinds.get(meta.get("format")) if isinstance(meta, dict) else None
            if path.suffix == ".onnx":  # a ModelProto starts with ir_version (field 1), then producer_name (2)
                data = head + f.read(64)
                name = ONNX_PRODUCER.encode()
                at = data.find(b"\x12" + bytes([len(name)]) + name)
                return "onnx" if data[:1] == b"\x08" and 0 < at <= 11 else None
            first = (head + f.read(len(KEYSET_TEXT_HEADER))).decode("utf-8", errors="replace")
            return "keys" if first.startswith(KEYSET_TEXT_HEADER) else None
    except (OSError, ValueError, AttributeError):
        return None


#: The PNG ``Software`` text of figures masterkey writes as outputs of their own (``keys show --png``).
FIGURE_SOFTWARE = "masterkey"


def _png_file_kind(path: Path) -> str | None:
    """``"figure"`` for a PNG whose ``Software`` text chunk (before the image data) says masterkey wrote it."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            for _ in range(64):
                head = f.read(8)
                if len(head) < 8:
                    return None
                size, name = struct.unpack(">I4s", head)
                if name in (b"IDAT", b"IEND") or size > _MAX_INFO_BYTES:
                    return None
                data = f.read(size)
                f.seek(4, os.SEEK_CUR)  # CRC
                key, _, value = data.partition(b"\0")
                if name == b"tEXt" and key == b"Software" and value.decode("latin-1").startswith(FIGURE_SOFTWARE):
                    return "figure"
    except OSError:
        return None
    return None


def output_kind(path: str | Path) -> str | None:
    """What masterkey output ``path`` is, or None when it is not one.

    A directory with a ``run.json`` is a run of the kind it names (``fit``, ``discover``, ``report`` ...); one
    with a bank ``manifest.json`` is a ``"bank"``; a folder holding only ``report.html``, ``report.md`` and PNGs
    is a ``"report"`` written before reports had a ``run.json``; an empty folder is ``"empty"``. A file is
    ``"keys"`` when it is a key set masterkey wrote, ``"figure"`` when it is a PNG masterkey wrote. Links are never
    masterkey outputs.
    """
    path = Path(path)
    if path.is_symlink():
        return None
    if path.is_dir():
        try:
            names = {p.name for p in path.iterdir()}
        except OSError:
            return None
        if not names:
            return "empty"
        if RUN_INFO in names:
            info = _read_small_json(path / RUN_INFO)
            kind = info.get("kind") if isinstance(info, dict) else None
            return kind if isinstance(kind, str) and kind else None
        if BANK_MANIFEST in names:
            manifest = _read_small_json(path / BANK_MANIFEST)
            return "bank" if isinstance(manifest, dict) and manifest.get("format") == BANK_FORMAT else None
        if {"report.html", "report.md"} <= names and all(
            n in ("report.html", "report.md") or n.endswith(".png") for n in names
        ):
            return "report"
        return None
    if path.is_file():
        return _png_file_kind(path) if path.suffix.lower() == ".png" else _keyset_file_kind(path)
    return None


def _named_paths(spec: str | Path) -> list[Path]:
    """The existing files a command-line value names: itself, ``FILE`` of ``NAME@FILE``, ``DIR`` of
    ``DIR:METHOD``."""
    text = str(spec)
    candidates = [text, text.partition("@")[2], text.rpartition(":")[0]]
    return [Path(c) for c in dict.fromkeys(candidates) if c and os.path.lexists(c)]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    path: str | Path, kind: str, *, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()
) -> Path:
    """Apply the output rule to ``path`` for an output of ``kind``; raise :class:`MasterkeyError` when it is broken.

    ``inputs`` are the command's inputs as given (files, folders, or specs such as ``NAME@FILE`` and
    ``DIR:METHOD``; values that name no existing path are ignored). Returns ``path`` as a :class:`Path`.
    """
    path = Path(path)
    target = path.resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise MasterkeyError(f"{path or '.'} is the current folder or holds it; write the output elsewhere")
    blocker = next((p for p in target.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise MasterkeyError(f"cannot write {path}: {blocker} is a file, not a folder")
    if blocker is not None and not os.access(blocker, os.W_OK | os.X_OK):  # found now, not after hours of work
        raise MasterkeyError(f"cannot write {path}: the folder {blocker} is not writable")
    for spec in inputs:
        if spec is None:
            continue
        for source in _named_paths(spec):
            resolved = source.resolve()
            if resolved == target or _same_file(source, path):
                raise MasterkeyError(f"{path} is an input of this command ({spec}); write the output elsewhere")
            if resolved in target.parents:
                raise MasterkeyError(f"{path} lies inside the input {spec}; write the output elsewhere")
            if target in resolved.parents:
                raise MasterkeyError(
                    f"{path} holds the input {spec}; replacing it would delete that input, write the output elsewhere"
                )
    if os.path.lexists(path):
        if not overwrite:
            raise MasterkeyError(f"{path} already exists (pass {option('overwrite', True)} to replace it)")
        found = output_kind(path)
        if found != "empty" and found not in _REPLACEABLE.get(kind, {kind}):
            what = "not a masterkey output" if found is None else f"{_a(found)} masterkey {found} output"
            raise MasterkeyError(
                f"{path} is {what}; {option('overwrite', True)} replaces only {_a(kind)} {kind} output written by "
                "masterkey, so it "
                "is left alone: choose another output"
            )
    return path


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


# ---------------------------------------------------------------------- writing
def _make_parents(folder: Path) -> list[Path]:
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


def _remove_empty(folders: Iterable[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def missing_parents(path: str | Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first (to remove again after a failure)."""
    return [p for p in Path(path).absolute().parents if not p.exists()]


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove each folder that is empty (deepest first, as :func:`missing_parents` lists them); others stay."""
    _remove_empty(folders)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing and rename it over ``path`` on success.

    On any error the temporary file (and any parent folder this call created) is removed and ``path`` is left as
    it was. This is the low-level writer: outputs a user names go through :func:`output_file` or
    :func:`atomic_directory`, which apply the output rule first.
    """
    path = Path(path)
    try:
        created = _make_parents(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are ordinary files
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
        _remove_empty(created)
        if isinstance(exc, OSError):
            raise MasterkeyError(describe_os_error(exc, path)) from exc
        raise


@contextlib.contextmanager
def output_file(
    path: str | Path,
    kind: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    mode: str = "wb",
) -> Iterator[Any]:
    """:func:`atomic_write` for a single-file output the user named: the output rule is applied first (and again
    under the write lock)."""
    inputs = list(inputs)
    check_output(path, kind, overwrite=overwrite, inputs=inputs)
    with write_lock(path):
        check_output(path, kind, overwrite=overwrite, inputs=inputs)
        with atomic_write(path, mode) as f:
            yield f


def describe_written(path: str | Path, limit: int = 12) -> str:
    """What ``path`` now holds, in one line for the closing list of a command: a file with its size
    (``keys.safetensors (1.2 kB)``) or a directory with its file count, total size and top-level entries
    (``runs/discover/ (14 files, 2.1 MB): keys.safetensors, report.html, figures/, ...``), at most ``limit``
    names. Hidden entries (locks, checkpoints of other runs) are left out."""
    path = Path(path)
    if not path.is_dir():
        size = path.stat().st_size if path.is_file() else None
        return f"{path}" if size is None else f"{path} ({_human_size(size)})"

    def visible(f: Path) -> bool:
        return not any(n.startswith(".") for n in f.relative_to(path).parts)

    files = [f for f in path.rglob("*") if f.is_file() and visible(f)]
    total = sum(f.stat().st_size for f in files)
    entries = sorted(path.iterdir(), key=lambda e: (e.is_dir(), e.name))
    names = [f"{e.name}/" if e.is_dir() else e.name for e in entries if not e.name.startswith(".")]
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    count = f"{len(files)} file{'' if len(files) == 1 else 's'}"
    return f"{str(path).rstrip('/')}/ ({count}, {_human_size(total)}): {shown}"


def _human_size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    size, unit = n / 1000, "kB"
    for bigger in ("MB", "GB"):
        if size < 1000:
            break
        size, unit = size / 1000, bigger
    return f"{size:.1f} {unit}"


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


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save`` with its header in a fixed order, so identical tensors and metadata give
    identical bytes (safetensors writes the metadata entries in hash order, which changes from run to run)."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data that follows to 8 bytes
    return struct.pack("<Q", len(text)) + text + data[8 + size :]


@contextlib.contextmanager
def atomic_directory(
    path: str | Path,
    kind: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> Iterator[Path]:
    """Build the output directory ``path`` (a ``kind`` output) under a temporary name; rename it into place when
    the block succeeds.

    The output rule (:func:`check_output`) is applied before and again under the write lock. With ``overwrite``
    an existing output is replaced only after the new one is complete. A second process building the same
    ``path`` at the same time is refused (see :func:`write_lock`). Leftovers of a writer that was killed
    (temporary directories, a replaced directory not yet deleted) are cleaned up first. The finished directory
    must be recognisable as ``kind`` (its ``run.json`` or bank manifest), so that a later ``--overwrite`` can tell
    it from user data.
    """
    path = Path(path)
    inputs = list(inputs)
    check_output(path, kind, overwrite=overwrite, inputs=inputs)
    with write_lock(path):
        _recover_leftovers(path)
        check_output(path, kind, overwrite=overwrite, inputs=inputs)  # it may have changed while we waited
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            os.chmod(tmp, 0o777 & ~_umask())
        except OSError as exc:
            raise MasterkeyError(describe_os_error(exc, path)) from exc
        try:
            yield tmp
            if output_kind(tmp) != kind:
                raise RuntimeError(f"internal error: the {kind} output {path} was built without its {kind} marker")
            _fsync_tree(tmp)
            replace_directory(tmp, path)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise MasterkeyError(describe_os_error(exc, path)) from exc
            if isinstance(exc, MasterkeyError) and str(tmp) in str(exc):  # name the output, not its build folder
                raise MasterkeyError(str(exc).replace(str(tmp), str(path))) from exc
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


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files ``.<name>.*.tmp`` that writers killed in :func:`atomic_write` left in ``folder``
    (e.g. a half-written ``.checkpoint.pt.*.tmp`` of a training run killed while saving). Call it only while
    holding the write lock of the output that ``folder`` belongs to, so that no live writer owns them."""
    for stale in Path(folder).glob(".*.tmp"):
        if stale.is_file():
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

    The lock is a ``flock`` on ``.<name>.lock`` beside ``path``, so every process that can write ``path`` (other
    users, other hosts of a shared file system) sees the same lock; the kernel releases it when the holder dies,
    so a killed writer never blocks the next one. The lock file exists only while the lock is held: the holder
    unlinks it before releasing, and a process that locked a file which was unlinked meanwhile (its inode no
    longer at the path) starts over, so two writers can never hold locks on different inodes. A lock file left by
    a writer killed with ``kill -9`` is reused and removed by the next writer of the same output. Parent folders
    created for the lock are removed again when the block fails.
    """
    path = Path(path)
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        created = _make_parents(path.parent)
    except OSError as exc:
        raise MasterkeyError(describe_os_error(exc, path)) from exc
    succeeded = False
    try:
        fd = _acquire(lock_path, path)
        try:
            yield
            succeeded = True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    finally:
        if not succeeded:
            _remove_empty(created)


def _acquire(lock_path: Path, path: Path) -> int:
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MasterkeyError(describe_os_error(exc, path)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(
                f"{path} is being written by another process; wait for it to finish or choose another output"
            ) from None
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # the previous holder unlinked this file after we opened it: lock the new one
