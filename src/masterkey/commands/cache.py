"""masterkey cache info|clear"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

NAME = "cache"
ORDER = 12
HELP = "see or clear masterkey's caches (decoded images)"
DESCRIPTION = """masterkey decodes an image folder once and keeps the decoded uint8 tensors in a cache, so that
training and evaluation do not decode JPEGs every epoch (CIFAR-10 train: about 150 MB; the 1,000 ImageNet samples
at 224 px: about 150 MB). Each entry is keyed by the folder, its files' names, sizes and modification times, and
the resize / crop; it records which data set it holds and the sha256 of its tensors, checked on every read (an
entry changed on disk is rebuilt, never used). The cache lives in $MASTERKEY_CACHE, or ~/.cache/masterkey when that
is not set. Entries are rebuilt on demand, so clearing the cache is always safe; clear deletes only the entries
masterkey wrote (marked in their header), never other files in the folder.

examples:
  masterkey cache info
  masterkey cache clear
  MASTERKEY_CACHE=/scratch/mk masterkey train ...     # keep the cache on a larger disk
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="where the cache is, its entries, the data set each holds, their sizes")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    clear = sub.add_parser("clear", help="delete masterkey's cache entries (they are rebuilt when needed)")
    clear.add_argument("--json", action="store_true", help="machine-readable output")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def run(args: argparse.Namespace) -> int:
    from masterkey.commands._common import print_json
    from masterkey.data.cache import cache_entries, default_cache_dir
    from masterkey.tables import format_table

    root = default_cache_dir()
    entries, foreign = cache_entries(root)
    total = sum(e["bytes"] for e in entries)
    others = (
        f"; {len(foreign)} other files in {root / 'images'} are not masterkey's and are left alone" if foreign else ""
    )
    if args.cache_command == "info":
        if args.json:
            print_json(
                {"cache": str(root), "entries": entries, "bytes": total, "other_files": [str(p) for p in foreign]}
            )
            return 0
        print(f"cache: {root}{'' if root.is_dir() else ' (not created yet)'}")
        print(f"{len(entries)} entries, {_size(total)}{others}")
        if entries:
            rows = [
                {"data set": e["data"], "images": e["shape"], "size": _size(e["bytes"]), "modified": e["modified"],
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
        print_json({"cache": str(root), "removed": removed, "bytes": freed, "left": [str(p) for p in foreign]})
    else:
        print(f"removed {removed} cache entries ({_size(freed)}) from {root}{others}")
    return 0
