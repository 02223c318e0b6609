"""The bank manifest (``manifest.json``): its schema, its validation as a whole, its bounded read. A basic module
(it imports no other stage), so that :mod:`masterkey.files` can recognise a bank by its full declared format
before ``--overwrite`` replaces it, and :mod:`masterkey.bank` can open one."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from masterkey.errors import MasterkeyError
from masterkey.normalize import excluded_counts
from masterkey.reading import read_json

FORMAT = "masterkey-bank"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
METADATA = "metadata.parquet"


def tensor_file(kernel_size: int) -> str:
    """The name of the tensor file holding a bank's ``kernel_size`` x ``kernel_size`` filters."""
    return f"filters_k{kernel_size}.safetensors"


def data_files(manifest: dict[str, Any]) -> list[str]:
    """Every file of a bank with this (valid) manifest: the manifest, the metadata table, the tensor files."""
    return [MANIFEST, *manifest["files"]]


#: Fields of the manifest and of each of its sources, with the JSON types they may hold (None: null).
MANIFEST_FIELDS: dict[str, tuple[Any, ...]] = {
    "format": (str,),
    "schema_version": (int,),
    "package_version": (str,),
    "n_filters": (int,),
    "counts_by_kernel": (dict,),
    "excluded": (dict,),
    "sources": (list,),
    "files": (dict,),
}
SOURCE_FIELDS: dict[str, tuple[Any, ...]] = {
    "name": (str,),
    "kind": (str,),
    "model": (str, None),
    "path": (str, None),
    "sha256": (str, None),
    "n_layers": (int,),
    "n_filters": (int,),
    "skipped": (list,),
}
EXCLUDED_NAMES = tuple(excluded_counts(np.zeros(0, dtype=np.int64)))
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KERNEL = re.compile(r"[1-9][0-9]*")


def _has_type(value: Any, types: tuple[Any, ...]) -> bool:
    for t in types:
        if t is None and value is None:
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t not in (None, int) and isinstance(value, t):
            return True
    return False


def _check_fields(obj: Any, fields: dict[str, tuple[Any, ...]], where: str) -> None:
    if not isinstance(obj, dict):
        raise MasterkeyError(f"{where}: expected a JSON object")
    missing = [name for name in fields if name not in obj]
    if missing:
        raise MasterkeyError(f"{where}: missing field(s) {', '.join(map(repr, missing))} (corrupt or altered)")
    unknown = [name for name in obj if name not in fields]
    if unknown:
        raise MasterkeyError(f"{where}: unknown field(s) {', '.join(map(repr, unknown[:5]))}")
    for name, types in fields.items():
        if not _has_type(obj[name], types):
            expected = " or ".join(
                "null" if t is None else {int: "integer", str: "string"}.get(t, t.__name__) for t in types
            )
            raise MasterkeyError(f"{where}: '{name}' is {json.dumps(obj[name])[:40]}, expected {expected}")


def read_manifest(bank: str | Path) -> Any:
    """The parsed ``manifest.json`` of the bank folder ``bank`` (not yet validated: see :func:`validate_manifest`),
    read as a regular file of at most :data:`MAX_MANIFEST_BYTES` and :data:`masterkey.jsonio.MAX_DEPTH` levels."""
    mpath = Path(bank) / MANIFEST
    if not os.path.lexists(mpath):
        raise MasterkeyError(f"{mpath}: missing; {bank} is not a filter bank")
    return read_json(mpath, "bank manifest", MAX_MANIFEST_BYTES)


def validate_manifest(manifest: Any, where: str | Path = MANIFEST) -> dict[str, Any]:
    """Check a bank manifest against the schema as a whole; raise :class:`MasterkeyError` naming ``where`` and the
    first problem. Every field is required and typed (:data:`MANIFEST_FIELDS`, :data:`SOURCE_FIELDS`); counts must
    be non-negative and add up; ``files`` must list exactly the metadata table and one tensor file per kernel size,
    each with its size and sha256, by plain names that stay inside the bank directory. Returns the manifest."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MasterkeyError(f"{where}: not a masterkey bank manifest (format {FORMAT!r})")
    version = manifest.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise MasterkeyError(
            f"{where}: schema version {version} is newer than this masterkey supports ({SCHEMA_VERSION})"
        )
    _check_fields(manifest, MANIFEST_FIELDS, str(where))
    if version != SCHEMA_VERSION:
        raise MasterkeyError(f"{where}: schema version {version}, expected {SCHEMA_VERSION}")
    n = manifest["n_filters"]
    if n < 1:
        raise MasterkeyError(f"{where}: n_filters is {n}; a bank holds at least one filter")
    counts = manifest["counts_by_kernel"]
    for k, c in counts.items():
        if not _KERNEL.fullmatch(k) or not 2 <= int(k) <= 1024 or not _has_type(c, (int,)) or c < 1:
            raise MasterkeyError(
                f"{where}: counts_by_kernel has {k!r}: {json.dumps(c)[:20]}; expected kernel sizes >= 2, counts >= 1"
            )
    if sum(counts.values()) != n:
        raise MasterkeyError(f"{where}: counts_by_kernel add up to {sum(counts.values())}, not n_filters {n}")
    excluded = manifest["excluded"]
    if set(excluded) != set(EXCLUDED_NAMES) or not all(_has_type(v, (int,)) and 0 <= v <= n for v in excluded.values()):
        raise MasterkeyError(f"{where}: excluded must count {', '.join(EXCLUDED_NAMES)} with integers in 0..{n}")
    if not manifest["sources"]:
        raise MasterkeyError(f"{where}: lists no sources")
    names: set[str] = set()
    for i, src in enumerate(manifest["sources"]):
        _check_fields(src, SOURCE_FIELDS, f"{where}: sources[{i}]")
        if not src["name"] or src["name"] in names:
            raise MasterkeyError(f"{where}: sources[{i}] has an empty or repeated name {src['name']!r}")
        names.add(src["name"])
        if src["n_filters"] < 0 or src["n_layers"] < 0:
            raise MasterkeyError(f"{where}: sources[{i}] has a negative count")
        if not all(isinstance(x, dict) and all(isinstance(v, str) for v in x.values()) for x in src["skipped"]):
            raise MasterkeyError(f"{where}: sources[{i}].skipped must be a list of {{layer, reason}} objects")
    if sum(s["n_filters"] for s in manifest["sources"]) != n:
        raise MasterkeyError(
            f"{where}: the sources' n_filters add up to {sum(s['n_filters'] for s in manifest['sources'])}, not {n}"
        )
    expected = {METADATA, *(tensor_file(int(k)) for k in counts)}
    files = manifest["files"]
    if set(files) != expected:
        extra, absent = sorted(set(files) - expected), sorted(expected - set(files))
        raise MasterkeyError(
            f"{where}: 'files' must list exactly {', '.join(sorted(expected))}"
            + (f"; it lacks {', '.join(absent)}" if absent else "")
            + (f"; it also names {', '.join(map(repr, extra[:3]))}" if extra else "")
        )
    for fname, info in files.items():
        _check_fields(info, {"bytes": (int,), "sha256": (str,)}, f"{where}: files[{fname!r}]")
        if info["bytes"] < 0 or not _SHA256.fullmatch(info["sha256"]):
            raise MasterkeyError(f"{where}: files[{fname!r}] needs a size >= 0 and a 64-digit hex sha256")
    return manifest


def renamed_columns(table: Any, path: Path) -> Any:
    """The metadata table (pyarrow) of the bank at ``path`` with the columns renamed since it was written, and a
    one-line note when there were: ``flags`` is ``filter_flags`` (``flags`` shadowed pandas' ``DataFrame.flags``)."""
    if "flags" not in table.column_names or "filter_flags" in table.column_names:
        return table
    import logging

    logging.getLogger("masterkey").info("%s: an older bank: its 'flags' column is read as filter_flags", path)
    return table.rename_columns(["filter_flags" if c == "flags" else c for c in table.column_names])
