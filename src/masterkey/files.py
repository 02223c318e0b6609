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
import fcntl
import glob
import hashlib
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from masterkey.atomic import atomic_write, describe_os_error, make_parents, remove_empty, umask
from masterkey.errors import MasterkeyError, option
from masterkey.jsonio import NONFINITE_FIELD, dumps, loads
from masterkey.reading import read_json


class OutputBusyError(MasterkeyError):
    """Another process holds the write lock of the output (see :func:`write_lock`)."""


#: The file that says what a run directory holds (see :mod:`masterkey.runs`).
RUN_INFO = "run.json"
#: The file that makes a directory a filter bank (see :mod:`masterkey.bank`).
BANK_MANIFEST = "manifest.json"
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


# ---------------------------------------------------------------------- the output rule
def _read_small_json(path: Path) -> Any:
    try:
        return read_json(path, limit=_MAX_INFO_BYTES)
    except MasterkeyError:
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
                header = loads(f.read(size), path)
                meta = loads(header.get("__metadata__", {}).get("masterkey", "{}"), path)
                kinds = {KEYSET_FORMAT: "keys", WEIGHTS_FORMAT: "weights"}
                return kinds.get(meta.get("format")) if isinstance(meta, dict) else None
            if path.suffix == ".onnx":  # a ModelProto starts with ir_version (field 1), then producer_name (2)
                data = head + f.read(64)
                name = ONNX_PRODUCER.encode()
                at = data.find(b"\x12" + bytes([len(name)]) + name)
                return "onnx" if data[:1] == b"\x08" and 0 < at <= 11 else None
            first = (head + f.read(len(KEYSET_TEXT_HEADER))).decode("utf-8", errors="replace")
            return "keys" if first.startswith(KEYSET_TEXT_HEADER) else None
    except (OSError, ValueError, AttributeError, MasterkeyError):
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


#: The entries every ``run.json`` has (see :func:`masterkey.runs.write_run_info`).
RUN_INFO_REQUIRED = frozenset({"kind", "config", "environment", "argv"})
#: The entries a ``run.json`` may have besides, with their types: a training run's resolved recipe and warnings.
RUN_INFO_OPTIONAL: dict[str, type | tuple[type, ...]] = {"recipe": (dict, type(None)), "warnings": list}


def _run_kind(path: Path) -> str | None:
    """The kind of the run folder ``path`` when its ``run.json`` has the whole declared shape (see
    :func:`masterkey.runs.write_run_info`): an object of ``kind`` (a declared run kind), ``config`` and
    ``environment`` (objects) and ``argv`` (a list of text), and otherwise only the optional entries of
    :data:`RUN_INFO_OPTIONAL`."""
    from masterkey.runformats import RUN_FORMATS

    info = _read_small_json(path / RUN_INFO)
    if not isinstance(info, dict) or not set(info) >= RUN_INFO_REQUIRED:
        return None
    optional = set(info) - RUN_INFO_REQUIRED - {NONFINITE_FIELD}
    if not optional <= set(RUN_INFO_OPTIONAL) or not all(isinstance(info[k], RUN_INFO_OPTIONAL[k]) for k in optional):
        return None
    kind, argv = info["kind"], info["argv"]
    if kind not in RUN_FORMATS or not isinstance(info["config"], dict) or not isinstance(info["environment"], dict):
        return None
    return kind if isinstance(argv, list) and all(isinstance(a, str) for a in argv) else None


def _bank_files(path: Path) -> list[str] | None:
    """The files of the bank folder ``path`` (its manifest and those the manifest lists) when its manifest passes
    the whole schema (:func:`masterkey.manifest.validate_manifest`), else None."""
    from masterkey.manifest import data_files, validate_manifest

    try:
        return data_files(validate_manifest(_read_small_json(path / BANK_MANIFEST)))
    except MasterkeyError:
        return None


def output_kind(path: str | Path) -> str | None:
    """What masterkey output ``path`` is, or None when it is not one.

    A kind is recognised by its whole declared format, never by one field: a directory is a run of the kind its
    ``run.json`` names only when that ``run.json`` has the declared shape (``kind``, ``config``, ``environment``,
    ``argv``); it is a ``"bank"`` only when its ``manifest.json`` passes the bank schema as a whole. A folder
    holding only ``report.html``, ``report.md`` and PNGs is a ``"report"`` written before reports had a
    ``run.json``; an empty folder is ``"empty"``. A file is ``"keys"`` when it is a key set masterkey wrote,
    ``"figure"`` when it is a PNG masterkey wrote. Links, FIFOs and devices are never masterkey outputs. Files
    masterkey did not write inside an output are found by :func:`foreign_files`.
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
            return _run_kind(path)
        if BANK_MANIFEST in names:
            return "bank" if _bank_files(path) is not None else None
        if {"report.html", "report.md"} <= names and all(
            n in ("report.html", "report.md") or n.endswith(".png") for n in names
        ):
            return "report"
        return None
    if path.is_file():
        return _png_file_kind(path) if path.suffix.lower() == ".png" else _keyset_file_kind(path)
    return None


def foreign_files(path: str | Path, kind: str | None = None) -> list[str]:
    """The files inside the output folder ``path`` (of ``kind``, by default :func:`output_kind`) that masterkey
    did not write, relative to ``path``: for a bank, all but its manifest and the files the manifest lists; for a
    run, all that its declared format (:mod:`masterkey.runformats`) does not declare, hidden files included.
    ``--overwrite`` refuses to replace a folder that holds any."""
    from masterkey.runformats import RUN_FORMATS, run_files

    path = Path(path)
    kind = kind or output_kind(path)
    if not path.is_dir() or path.is_symlink() or kind in (None, "empty", "keys", "figure"):
        return []
    if kind == "bank":
        own = set(_bank_files(path) or ())
        return [
            str(Path(root, name).relative_to(path))
            for root, dirs, files in os.walk(path)
            for name in sorted(files + [d for d in dirs if Path(root, d).is_symlink()])
            if str(Path(root, name).relative_to(path)) not in own
        ]
    if kind in RUN_FORMATS and (path / RUN_INFO).exists():
        return run_files(path, kind)[1]
    return []


def _named_paths(spec: str | Path) -> list[Path]:
    """The existing files a command-line value names: itself, ``FILE`` of ``NAME@FILE``, ``DIR`` of
    ``DIR:METHOD``."""
    text = str(spec)
    candidates = [text, text.partition("@")[2], text.rpartition(":")[0]]
    return [Path(c) for c in dict.fromkeys(candidates) if c and os.path.lexists(c)]


def _resolve(path: Path) -> Path:
    """``path.resolve()``; a loop of symbolic links is one clear error (Python raises RuntimeError for it)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        raise MasterkeyError(f"{path}: a loop of symbolic links") from None


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
    target = _resolve(path)
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
            resolved = _resolve(source)
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
        foreign = foreign_files(path, found)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5:,} more" if len(foreign) > 5 else "")
            raise MasterkeyError(
                f"{path} holds files masterkey did not write ({shown}); {option('overwrite', True)} replaces only "
                "masterkey's own files, so it is left alone: move them out or choose another output"
            )
    return path


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


# ---------------------------------------------------------------------- writing
def missing_parents(path: str | Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first (to remove again after a failure)."""
    return [p for p in Path(path).absolute().parents if not p.exists()]


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove each folder that is empty (deepest first, as :func:`missing_parents` lists them); others stay."""
    remove_empty(folders)


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
    """Write ``obj`` as indented, strict JSON (:func:`masterkey.jsonio.dumps`: non-finite numbers become ``null``
    and are recorded), atomically."""
    text = dumps(obj) + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)


def write_text(path: str | Path, text: str) -> None:
    """Write text, atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save`` with its header in a fixed order, so identical tensors and metadata give
    identical bytes (safetensors writes the metadata entries in hash order, which changes from run to run)."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    (size,) = struct.unpack("<Q", data[:8])
    header = loads(data[8 : 8 + size], "safetensors header")
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = dumps(header, indent=None, ensure_ascii=False, separators=(",", ":")).encode()
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
            os.chmod(tmp, 0o777 & ~umask())
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
    mode = 0o666 & ~umask()
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
        created = make_parents(path.parent)
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
            remove_empty(created)


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
