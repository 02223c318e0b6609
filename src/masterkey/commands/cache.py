"""masterkey cache info|clear"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path
from typing import Any

NAME = "cache"
ORDER = 12
HELP = "see or clear masterkey's caches (decoded images)"
DESCRIPTION = """masterkey decodes an image folder once and keeps the decoded uint8 tensors in a cache, so that
training and evaluation do not decode JPEGs every epoch (CIFAR-10: about 150 MB; each entry is keyed by the folder,
its files' names, sizes and modification times, and the resize / crop). The cache lives in $MASTERKEY_CACHE, or
~/.cache/masterkey when that is not set. Entries are rebuilt on demand, so clearing the cache is always safe.

examples:
  masterkey cache info
  masterkey cache clear
  MASTERKEY_CACHE=/scratch/mk masterkey train ...     # keep the cache on a larger disk
"""

#: Sub-folders of the cache directory that masterkey writes, and the files it writes there.
CACHE_ENTRIES = {"images": "*.safetensors"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="where the cache is, its entries and their sizes")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    clear = sub.add_parser("clear", help="delete every cache entry (they are rebuilt when needed)")
    clear.add_argument("--json", action="store_true", help="machine-readable output")


def cache_root() -> Path:
    """The cache directory (the same as :func:`masterkey.images.default_cache_dir`, without importing torch)."""
    return Path(os.environ.get("MASTERKEY_CACHE", Path.home() / ".cache" / "masterkey"))


def cache_entries(root: Path) -> list[dict[str, Any]]:
    """Every file masterkey wrote in the cache: path, kind, bytes, modification time and, for decoded image sets,
    the tensor shape read from the file's header."""
    entries = []
    for kind, pattern in CACHE_ENTRIES.items():
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(pattern)):
            if not path.is_file() or path.name.startswith("."):
                continue
            stat = path.stat()
            entries.append(
                {
                    "path": str(path),
                    "kind": kind,
                    "bytes": stat.st_size,
                    "modified": dt.datetime.fromtimestamp(stat.st_mtime).isoformat(timespec="seconds"),
                    "shape": _image_shape(path),
                }
            )
    return entries


def _image_shape(path: Path) -> str:
    """``N x 3 x H x W`` from a safetensors header (8-byte length + JSON), without reading the tensors."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 1 << 20:
                return "?"
            header = json.loads(f.read(length))
        return " x ".join(str(d) for d in header["images"]["shape"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return "unreadable (rebuilt when next needed)"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def run(args: argparse.Namespace) -> int:
    from masterkey.commands._common import print_json
    from masterkey.tables import format_table

    root = cache_root()
    entries = cache_entries(root)
    total = sum(e["bytes"] for e in entries)
    if args.cache_command == "info":
        if args.json:
            print_json({"cache": str(root), "entries": entries, "bytes": total})
            return 0
        print(f"cache: {root}{'' if root.is_dir() else ' (not created yet)'}")
        print(f"{len(entries)} entries, {_size(total)}")
        if entries:
            rows = [
                {"kind": e["kind"], "images": e["shape"], "size": _size(e["bytes"]), "modified": e["modified"],
                 "file": Path(e["path"]).name}
                for e in entries
            ]  # fmt: skip
            print(format_table(rows))
        return 0
    removed, freed = 0, 0
    for entry in entries:
        try:
            os.unlink(entry["path"])
        except FileNotFoundError:
            continue
        removed += 1
        freed += entry["bytes"]
    if args.json:
        print_json({"cache": str(root), "removed": removed, "bytes": freed})
    else:
        print(f"removed {removed} cache entries ({_size(freed)}) from {root}")
    return 0
