"""The decoded-image cache on disk: where it lives, how masterkey marks its entries, what each entry holds.

An entry is ``CACHE/images/<24 hex digits>.safetensors`` holding ``images`` (uint8 ``[N, 3, H, W]``) and ``labels``,
with metadata that marks it as masterkey's (``format``), names the data set it was decoded from (folder, resize,
crop, interpolation, number of classes) and holds the sha256 of its tensors, checked on every read
(:mod:`masterkey.data.memory` rebuilds an entry that does not match). Only files that carry the marker are
masterkey's: ``masterkey cache clear`` deletes those and nothing else, whatever else lies in the folder.

This module imports no torch: ``masterkey cache info`` reads the headers only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

#: The ``format`` metadata value that marks a cache entry as masterkey's.
CACHE_FORMAT = "masterkey-image-cache"
#: Bumped when the entry layout or its metadata change; entries of another version are rebuilt.
CACHE_VERSION = "2"
#: Sub-folder of the cache directory holding decoded image sets.
IMAGES = "images"
ENTRY_NAME = re.compile(r"^[0-9a-f]{24}\.safetensors$")
#: A safetensors header larger than this is not one masterkey wrote (its headers are a few hundred bytes).
MAX_HEADER_BYTES = 1 << 20


def default_cache_dir() -> Path:
    """``$MASTERKEY_CACHE`` or ``~/.cache/masterkey``."""
    return Path(os.environ.get("MASTERKEY_CACHE", Path.home() / ".cache" / "masterkey"))


def entry_path(cache_dir: str | Path | None, key: str) -> Path:
    """The file of the entry with hex ``key`` (its first 24 digits name it)."""
    return Path(cache_dir or default_cache_dir()) / IMAGES / f"{key[:24]}.safetensors"


def read_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a safetensors file (tensor shapes and ``__metadata__``), or None when ``path`` is not a
    regular file or not a safetensors file. Reads at most :data:`MAX_HEADER_BYTES`."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                return None
            (length,) = struct.unpack("<Q", raw)
            if length > MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return None
    return header if isinstance(header, dict) else None


def entry_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a masterkey cache entry, or None when ``path`` is not one (wrong name, no marker)."""
    if not ENTRY_NAME.match(path.name):
        return None
    header = read_header(path)
    meta = header.get("__metadata__") if header else None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        return None
    return meta


def describe_entry(meta: dict[str, str]) -> str:
    """The data set an entry holds, in words: ``../shared/data/cifar10/test (10 classes, as decoded)``."""
    geometry = []
    if meta.get("resize") not in (None, "", "null"):
        geometry.append(f"resize {meta['resize']}")
    if meta.get("crop") not in (None, "", "null"):
        geometry.append(f"crop {meta['crop']}")
    if geometry:
        geometry.append(meta.get("interpolation", "bilinear"))
    subset = f", first {meta['max_per_class']} a class" if meta.get("max_per_class") not in (None, "", "null") else ""
    how = ", ".join(geometry) if geometry else "as decoded"
    return f"{meta.get('root', '?')} ({meta.get('classes', '?')} classes{subset}, {how})"


def cache_entries(root: Path | None = None) -> tuple[list[dict[str, Any]], list[Path]]:
    """``(entries, foreign)``: every masterkey entry of the cache (path, bytes, modification time, tensor shape,
    the data set it holds, its version) and the other files found in its ``images/`` folder (never touched)."""
    root = root or default_cache_dir()
    folder = root / IMAGES
    entries: list[dict[str, Any]] = []
    foreign: list[Path] = []
    if not folder.is_dir():
        return entries, foreign
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue  # a write in progress (files.atomic_write)
        meta = entry_metadata(path)
        if meta is None:
            foreign.append(path)
            continue
        header = read_header(path) or {}
        shape = header.get("images", {}).get("shape") if isinstance(header.get("images"), dict) else None
        st = path.stat()
        entries.append(
            {
                "path": str(path),
                "kind": IMAGES,
                "bytes": st.st_size,
                "modified": dt.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds"),
                "shape": " x ".join(map(str, shape)) if isinstance(shape, list) else "?",
                "data": describe_entry(meta),
                "root": meta.get("root", ""),
                "current": meta.get("version") == CACHE_VERSION,
            }
        )
    return entries, foreign
