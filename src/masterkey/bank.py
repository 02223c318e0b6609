"""FilterBank: depthwise filters on disk — write, read lazily, query, merge.

A bank is a directory::

    BANK/
      manifest.json              format, schema version, package version, sources (with sha256), counts, file checksums
      metadata.parquet           one row per filter (see METADATA_SCHEMA)
      filters_k3.safetensors     tensor "filters" [N3, 3, 3] float32, raw weights as harvested
      filters_k7.safetensors     ...

Metadata row ``i`` with ``kernel_size == k`` and ``index == j`` describes row ``j`` of ``filters_k{k}``. Within one
kernel size, metadata rows are in increasing ``index`` order; queries keep that order.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from masterkey.depthwise import stage_block
from masterkey.errors import MasterkeyError
from masterkey.files import atomic_directory, sha256_file
from masterkey.normalize import EXCLUDED, FilterFlag, center_norm, excluded_counts, filter_flags
from masterkey.sources.base import HarvestedSource

FORMAT = "masterkey-bank"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
METADATA = "metadata.parquet"
TENSOR_NAME = "filters"

METADATA_SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # source name, unique within the bank
        ("model", pa.string()),  # architecture when known ("" otherwise)
        ("layer", pa.string()),  # layer name inside the source
        ("layer_index", pa.int32()),  # order of the layer among the source's depthwise layers
        ("stage", pa.int16()),  # stage index parsed from the layer name, -1 if not derivable
        ("block", pa.int16()),  # block index parsed from the layer name, -1 if not derivable
        ("depth", pa.float32()),  # relative depth of the layer in the source, 0 (first) .. 1 (last)
        ("channel", pa.int32()),  # output channel of the filter in its layer
        ("group", pa.int32()),  # input channel the filter reads (channel // multiplier)
        ("multiplier", pa.int16()),  # channel multiplier of the layer (out = m * in)
        ("stride", pa.int16()),
        ("dilation", pa.int16()),
        ("kernel_size", pa.int16()),
        ("index", pa.int64()),  # row in filters_k{kernel_size}.safetensors
        ("raw_norm", pa.float32()),  # L2 norm of the raw filter
        ("raw_mean", pa.float32()),  # mean of the raw filter
        ("flags", pa.int32()),  # FilterFlag bits
    ]
)


def tensor_file(kernel_size: int) -> str:
    return f"filters_k{kernel_size}.safetensors"


def default_bank_path() -> Path:
    """The small real bank shipped inside the package (see ``masterkey/data/default_bank/LICENSES.md``)."""
    return Path(str(resources.files("masterkey") / "data" / "default_bank"))


def open_bank(spec: str | Path | None) -> FilterBank:
    """A bank from a path, or the embedded default bank for ``None`` / ``"default"``."""
    if spec is None or str(spec) == "default":
        return FilterBank.open(default_bank_path())
    return FilterBank.open(spec)


class FilterBank:
    """A filter bank, or a view of one (after :meth:`query` / :meth:`select`).

    Tensors are read lazily from memory-mapped safetensors files; only the metadata table is held in memory.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], metadata: pd.DataFrame) -> None:
        self.path = path
        self.manifest = manifest
        self.metadata = metadata

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> FilterBank:
        """Open the bank at ``path``; with ``verify`` every file's size and sha256 is checked against the manifest.

        Raises :class:`MasterkeyError` naming the file for a missing, truncated, corrupt or inconsistent bank.
        """
        path = Path(path)
        if not path.is_dir():
            raise MasterkeyError(f"{path}: no such bank directory")
        mpath = path / MANIFEST
        try:
            manifest = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise MasterkeyError(f"{mpath}: missing; {path} is not a filter bank") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MasterkeyError(f"{mpath}: corrupt manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise MasterkeyError(f"{mpath}: not a masterkey bank manifest")
        version = manifest.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise MasterkeyError(
                f"{mpath}: schema version {version!r} is newer than this masterkey supports ({SCHEMA_VERSION})"
            )
        files = manifest.get("files", {})
        for fname, info in files.items():
            fpath = path / fname
            if not fpath.is_file():
                raise MasterkeyError(f"{fpath}: missing from the bank (listed in the manifest)")
            size = fpath.stat().st_size
            if size != info["bytes"]:
                raise MasterkeyError(
                    f"{fpath}: {size} bytes, the manifest says {info['bytes']} (truncated or modified)"
                )
            if verify and sha256_file(fpath) != info["sha256"]:
                raise MasterkeyError(f"{fpath}: checksum mismatch with the manifest (corrupt or modified)")
        try:
            table = pq.read_table(path / METADATA)
        except Exception as exc:
            raise MasterkeyError(f"{path / METADATA}: unreadable metadata ({str(exc).splitlines()[0]})") from None
        missing = [c for c in METADATA_SCHEMA.names if c not in table.column_names]
        if missing:
            raise MasterkeyError(f"{path / METADATA}: missing columns {missing}")
        metadata = table.to_pandas()
        if len(metadata) != manifest.get("n_filters"):
            raise MasterkeyError(
                f"{path / METADATA}: {len(metadata)} rows, the manifest says {manifest.get('n_filters')} filters"
            )
        bank = cls(path, manifest, metadata)
        for k, n in metadata["kernel_size"].value_counts().items():
            shape = bank._tensor_shape(int(k))
            if shape[0] != n or tuple(shape[1:]) != (k, k):
                raise MasterkeyError(
                    f"{path / tensor_file(int(k))}: holds {shape[0]} filters of {shape[1:]} "
                    f"but the metadata lists {n} {k}x{k} filters"
                )
        return bank

    def _tensor_shape(self, k: int) -> tuple[int, ...]:
        from safetensors import safe_open

        fpath = self.path / tensor_file(k)
        try:
            with safe_open(str(fpath), framework="pt") as f:
                return tuple(f.get_slice(TENSOR_NAME).get_shape())
        except Exception as exc:
            raise MasterkeyError(f"{fpath}: unreadable filter tensor ({str(exc).splitlines()[0]})") from None

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.metadata)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}x{k}: {n}" for k, n in self.counts_by_kernel().items())
        return f"FilterBank({str(self.path)!r}, {len(self)} filters; {counts})"

    @property
    def kernel_sizes(self) -> list[int]:
        return sorted(int(k) for k in self.metadata["kernel_size"].unique())

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(self.metadata["source"]))

    def counts_by_kernel(self) -> dict[int, int]:
        counts = self.metadata["kernel_size"].value_counts()
        return {int(k): int(counts[k]) for k in sorted(counts.index)}

    def excluded_counts(self) -> dict[str, int]:
        return excluded_counts(self.metadata["flags"].to_numpy())

    def select(self, mask: np.ndarray | pd.Series | Sequence[bool]) -> FilterBank:
        """A view of the rows where ``mask`` is true."""
        return FilterBank(self.path, self.manifest, self.metadata[np.asarray(mask, dtype=bool)])

    def query(self, expr: str) -> FilterBank:
        """A view of the rows matching a pandas query over the metadata columns.

        Example: ``bank.query("kernel_size == 7 and stage >= 2 and source.str.startswith('convnext')")``.
        """
        try:
            rows = self.metadata.query(expr, engine="python")
        except Exception as exc:
            raise MasterkeyError(f"invalid bank query {expr!r}: {exc}") from None
        return FilterBank(self.path, self.manifest, rows)

    def usable(self) -> FilterBank:
        """A view without non-finite, all-zero and constant filters."""
        return self.select((self.metadata["flags"].to_numpy() & int(EXCLUDED)) == 0)

    # ------------------------------------------------------------------ tensors
    def _single_kernel(self, kernel_size: int | None) -> int:
        sizes = self.kernel_sizes
        if kernel_size is None:
            if len(sizes) != 1:
                raise MasterkeyError(f"{self.path}: holds kernel sizes {sizes}; choose one (kernel_size=...)")
            return sizes[0]
        # An empty view of a bank that holds this size reads as zero filters, not as a missing size.
        held = {int(k) for k in self.manifest.get("counts_by_kernel", {})}
        if kernel_size not in sizes and kernel_size not in held:
            raise MasterkeyError(
                f"{self.path}: has no {kernel_size}x{kernel_size} filters (kernel sizes: {sizes or 'none'})"
            )
        return kernel_size

    def iter_filters(
        self, kernel_size: int | None = None, chunk_size: int = 65536
    ) -> Iterator[tuple[pd.DataFrame, Tensor]]:
        """Yield ``(metadata rows, raw filters [n, k, k])`` in chunks of at most ``chunk_size`` filters.

        Reads contiguous slices of the memory-mapped tensor file, so memory stays bounded for any bank size.
        """
        from safetensors import safe_open

        k = self._single_kernel(kernel_size)
        rows = self.metadata[self.metadata["kernel_size"] == k]
        index = rows["index"].to_numpy()
        fpath = self.path / tensor_file(k)
        try:
            with safe_open(str(fpath), framework="pt") as f:
                tensor = f.get_slice(TENSOR_NAME)
                start = 0
                while start < len(index):
                    stop = start + 1
                    # Grow the chunk while the span it reads stays within 4x its size (sparse views read less).
                    while (
                        stop < len(index) and stop - start < chunk_size and index[stop] - index[start] < 4 * chunk_size
                    ):
                        stop += 1
                    lo, hi = int(index[start]), int(index[stop - 1]) + 1
                    block = tensor[lo:hi]
                    yield rows.iloc[start:stop], block[torch.from_numpy(index[start:stop] - lo)]
                    start = stop
        except MasterkeyError:
            raise
        except Exception as exc:
            raise MasterkeyError(f"{fpath}: unreadable filter tensor ({str(exc).splitlines()[0]})") from None

    def filters(self, kernel_size: int | None = None, normalized: bool = False) -> Tensor:
        """All filters of one kernel size in view order, [n, k, k] float32.

        With ``normalized`` the filters are centre-normed (:func:`masterkey.normalize.center_norm`); then the view
        must not hold excluded filters (use :meth:`usable`).
        """
        k = self._single_kernel(kernel_size)
        chunks = [block for _, block in self.iter_filters(k)]
        out = torch.cat(chunks) if chunks else torch.empty(0, k, k)
        return center_norm(out) if normalized and len(out) else out

    # ------------------------------------------------------------------ writing
    def save(self, path: str | Path, overwrite: bool = False) -> FilterBank:
        """Write this view as a new, self-contained bank."""
        tensors = {k: self.filters(k) for k in self.kernel_sizes}
        sources = [s for s in self.manifest["sources"] if s["name"] in set(self.metadata["source"])]
        return _write(path, tensors, self.metadata.copy(), sources, overwrite=overwrite)

    @staticmethod
    def merge(banks: Sequence[FilterBank], path: str | Path, overwrite: bool = False) -> FilterBank:
        """Write the union of ``banks`` (views allowed) as a new bank.

        The same source (same sha256) in two banks is refused, as it would count its filters twice; two different
        sources with one name are renamed ``name#2``, ``name#3``, ...
        """
        if not banks:
            raise MasterkeyError("merge: no banks given")
        sizes = sorted({k for b in banks for k in b.kernel_sizes})
        seen_names: set[str] = set()
        seen_sha: dict[str, str] = {}
        tensors: dict[int, list[Tensor]] = {k: [] for k in sizes}
        tables: list[pd.DataFrame] = []
        sources: list[dict[str, Any]] = []
        for bank in banks:
            present = set(bank.metadata["source"])
            rename: dict[str, str] = {}
            for src in bank.manifest["sources"]:
                if src["name"] not in present:
                    continue
                sha = src.get("sha256")
                if sha and sha in seen_sha:
                    raise MasterkeyError(
                        f"merge: source '{src['name']}' of {bank.path} is the same file as '{seen_sha[sha]}' "
                        "(same sha256); merging would count its filters twice"
                    )
                new = src["name"]
                n = 2
                while new in seen_names:
                    new, n = f"{src['name']}#{n}", n + 1
                seen_names.add(new)
                if sha:
                    seen_sha[sha] = new
                rename[src["name"]] = new
                sources.append({**src, "name": new})
            meta = bank.metadata.copy()
            meta["source"] = meta["source"].map(rename)
            for k in bank.kernel_sizes:
                tensors[k].append(bank.filters(k))
            tables.append(meta)
        merged = {k: torch.cat(ts) for k, ts in tensors.items()}
        return _write(path, merged, pd.concat(tables, ignore_index=True), sources, overwrite=overwrite)

    # ------------------------------------------------------------------ summaries
    def info(self) -> dict[str, Any]:
        """What ``masterkey bank info --json`` prints."""
        meta = self.metadata
        per_source = []
        for src in self.manifest["sources"]:
            rows = meta[meta["source"] == src["name"]]
            if rows.empty:
                continue
            counts = rows["kernel_size"].value_counts()
            per_source.append(
                {
                    "name": src["name"],
                    "kind": src.get("kind"),
                    "model": src.get("model"),
                    "path": src.get("path"),
                    "sha256": src.get("sha256"),
                    "n_layers": int(rows["layer"].nunique()),
                    "n_filters": len(rows),
                    "counts_by_kernel": {str(int(k)): int(counts[k]) for k in sorted(counts.index)},
                    "skipped": src.get("skipped", []),
                }
            )
        return {
            "path": str(self.path),
            "format": FORMAT,
            "schema_version": self.manifest["schema_version"],
            "package_version": self.manifest.get("package_version"),
            "n_filters": len(meta),
            "counts_by_kernel": {str(k): n for k, n in self.counts_by_kernel().items()},
            "excluded": self.excluded_counts(),
            "n_layers": int(meta.groupby(["source", "layer"]).ngroups) if len(meta) else 0,
            "sources": per_source,
        }


def _source_rows(source: HarvestedSource, offsets: dict[int, int]) -> tuple[pd.DataFrame, dict[int, Tensor]]:
    """Metadata rows and per-kernel tensors of one harvested source; ``offsets`` is advanced."""
    frames = []
    tensors: dict[int, list[Tensor]] = {}
    n_layers = len(source.layers)
    for i, layer in enumerate(source.layers):
        w = layer.weight.reshape(layer.n_filters, layer.kernel_size, layer.kernel_size).to(torch.float32)
        k = layer.kernel_size
        c = layer.n_filters
        flags = filter_flags(w)
        extra = 0
        if layer.stride > 1:
            extra |= int(FilterFlag.STRIDED)
        if layer.dilation > 1:
            extra |= int(FilterFlag.DILATED)
        if layer.multiplier > 1:
            extra |= int(FilterFlag.MULTIPLIER)
        flat = torch.nan_to_num(w.reshape(c, -1).double(), nan=0.0, posinf=0.0, neginf=0.0)
        finite = torch.isfinite(w.reshape(c, -1)).all(1)
        norm = torch.where(finite, torch.linalg.vector_norm(flat, dim=1), torch.nan)
        mean = torch.where(finite, flat.mean(1), torch.nan)
        stage, block = stage_block(layer.name)
        start = offsets.get(k, 0)
        offsets[k] = start + c
        frames.append(
            pd.DataFrame(
                {
                    "source": source.name,
                    "model": source.model or "",
                    "layer": layer.name,
                    "layer_index": i,
                    "stage": stage,
                    "block": block,
                    "depth": i / (n_layers - 1) if n_layers > 1 else 0.0,
                    "channel": np.arange(c),
                    "group": np.arange(c) // max(1, layer.multiplier),
                    "multiplier": layer.multiplier,
                    "stride": layer.stride,
                    "dilation": layer.dilation,
                    "kernel_size": k,
                    "index": np.arange(start, start + c),
                    "raw_norm": norm.numpy(),
                    "raw_mean": mean.numpy(),
                    "flags": (flags | extra).numpy(),
                }
            )
        )
        tensors.setdefault(k, []).append(w)
    meta = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METADATA_SCHEMA.names)
    return meta, {k: torch.cat(v) for k, v in tensors.items()}


def write_bank(sources: Sequence[HarvestedSource], path: str | Path, overwrite: bool = False) -> FilterBank:
    """Write harvested sources as a bank at ``path`` (atomically: a complete bank or nothing)."""
    if not sources:
        raise MasterkeyError(f"{path}: no sources to write")
    seen_sha: dict[str, str] = {}
    for src in sources:
        if src.sha256 and src.sha256 in seen_sha:
            raise MasterkeyError(
                f"{path}: the same weights ({src.path or src.name}) are given twice, as '{seen_sha[src.sha256]}' and "
                f"'{src.name}'; a bank must not count filters twice"
            )
        if src.sha256:
            seen_sha[src.sha256] = src.name
    names: set[str] = set()
    renamed = []
    for src in sources:
        new, n = src.name, 2
        while new in names:
            new, n = f"{src.name}#{n}", n + 1
        names.add(new)
        renamed.append(src if new == src.name else dataclasses.replace(src, name=new))
    sources = renamed
    offsets: dict[int, int] = {}
    frames, tensors = [], {}
    for src in sources:
        meta, ts = _source_rows(src, offsets)
        frames.append(meta)
        for k, t in ts.items():
            tensors.setdefault(k, []).append(t)
    entries = [
        {
            "name": s.name,
            "kind": s.kind,
            "model": s.model,
            "path": s.path,
            "sha256": s.sha256,
            "n_layers": len(s.layers),
            "n_filters": s.n_filters,
            "skipped": s.skipped,
        }
        for s in sources
    ]
    merged = {k: torch.cat(v) for k, v in tensors.items()}
    return _write(path, merged, pd.concat(frames, ignore_index=True), entries, overwrite=overwrite)


def _write(
    path: str | Path,
    tensors: dict[int, Tensor],
    metadata: pd.DataFrame,
    sources: list[dict[str, Any]],
    overwrite: bool = False,
) -> FilterBank:
    from safetensors.torch import save_file

    from masterkey import __version__

    path = Path(path)
    if len(metadata) == 0:
        raise MasterkeyError(f"{path}: no filters to write")
    # Re-index rows so that each kernel's tensor file holds exactly this bank's rows, in metadata order.
    metadata = metadata.reset_index(drop=True).copy()
    for k, t in tensors.items():
        sel = (metadata["kernel_size"] == k).to_numpy()
        if int(sel.sum()) != len(t):
            raise MasterkeyError(f"{path}: internal error, {int(sel.sum())} rows vs {len(t)} {k}x{k} filters")
        metadata.loc[sel, "index"] = np.arange(len(t))
    table = pa.Table.from_pandas(metadata[METADATA_SCHEMA.names], schema=METADATA_SCHEMA, preserve_index=False)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        files = {}
        for k in sorted(tensors):
            fname = tensor_file(k)
            save_file({TENSOR_NAME: tensors[k].contiguous()}, str(tmp / fname), metadata={"format": FORMAT})
            files[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": sha256_file(tmp / fname)}
        pq.write_table(table, tmp / METADATA, compression="zstd")
        files[METADATA] = {"bytes": (tmp / METADATA).stat().st_size, "sha256": sha256_file(tmp / METADATA)}
        counts = metadata["kernel_size"].value_counts()
        for src in sources:
            src["n_filters"] = int((metadata["source"] == src["name"]).sum())
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "package_version": __version__,
            "n_filters": len(metadata),
            "counts_by_kernel": {str(int(k)): int(counts[k]) for k in sorted(counts.index)},
            "excluded": excluded_counts(metadata["flags"].to_numpy()),
            "sources": sources,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return FilterBank.open(path, verify=False)


def parse_kernel_list(text: str) -> list[int]:
    """Parse ``"3,5"`` / ``"7"`` into kernel sizes."""
    try:
        return [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError:
        raise MasterkeyError(f"bad kernel size list {text!r}: expected integers such as 3,5,7") from None
