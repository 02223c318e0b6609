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
import os
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from masterkey.errors import MasterkeyError
from masterkey.files import (
    atomic_directory,
    check_output,
    describe_os_error,
    safetensors_bytes,
    sha256_file,
)
from masterkey.jsonio import dumps
from masterkey.manifest import (
    FORMAT,
    MANIFEST,
    METADATA,
    SCHEMA_VERSION,
    read_manifest,
    renamed_columns,
    tensor_file,
    validate_manifest,
)
from masterkey.normalize import EXCLUDED, FilterFlag, center_norm, excluded_counts, filter_flags
from masterkey.query import Query
from masterkey.query import evaluate as evaluate_query
from masterkey.reading import regular_file

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor

    from masterkey.sources.base import HarvestedSource

TENSOR_NAME = "filters"

METADATA_SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # source name, unique within the bank
        ("model", pa.string()),  # architecture when known ("" otherwise)
        ("layer", pa.string()),  # layer name inside the source
        ("layer_index", pa.int32()),  # order of the layer among the source's depthwise layers
        ("stage", pa.int16()),  # stage index as swap infers it (layer name, else network strides), -1 if unknown
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
        ("filter_flags", pa.int32()),  # FilterFlag bits (banks written before: "flags", renamed on reading)
    ]
)


def default_bank_path() -> Path:
    """The small real bank shipped inside the package (see ``masterkey/assets/DEFAULT_BANK_LICENSES.md``)."""
    return Path(str(resources.files("masterkey") / "assets" / "default_bank"))


def open_bank(spec: str | Path | None) -> FilterBank:
    """A bank from a path, or the embedded default bank for ``None`` / ``"default"``."""
    if spec is None or str(spec) == "default":
        return FilterBank.open(default_bank_path())
    return FilterBank.open(spec)


class FilterBank:
    """A filter bank, or a view of one (after :meth:`query` / :meth:`select`).

    Tensors are read lazily from memory-mapped safetensors files; only the metadata table is held in memory.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], metadata: pd.DataFrame | pa.Table) -> None:
        self.path = path
        self.manifest = manifest
        # An opened bank keeps its arrow table and makes the pandas frame on first use, so that opening a bank,
        # its counts and :meth:`info` need neither pandas nor torch (``masterkey bank info`` starts at once).
        self._table = metadata if isinstance(metadata, pa.Table) else None
        self._metadata = None if isinstance(metadata, pa.Table) else metadata

    @property
    def metadata(self) -> pd.DataFrame:
        """One row per filter (see :data:`METADATA_SCHEMA`)."""
        if self._metadata is None:
            self._metadata = self._table.to_pandas()
        return self._metadata

    def _column(self, name: str) -> np.ndarray:
        """A metadata column as a numpy array (from the arrow table while no pandas frame was made)."""
        if self._metadata is None:
            return _arrow_to_numpy(self._table.column(name), self.path / METADATA, name)
        return self._metadata[name].to_numpy()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> FilterBank:
        """Open the bank at ``path``, failing closed.

        The manifest is validated as a whole (:func:`validate_manifest`); every data file must be listed in it,
        stay inside the bank directory and have the listed size (and, with ``verify``, sha256); the metadata
        table must have the schema's columns and types, and every count of the manifest must agree with it and
        with the tensor files. Raises :class:`MasterkeyError` naming the file for a missing, truncated, corrupt,
        altered or inconsistent bank.
        """
        path = Path(path)
        if not path.exists():
            raise MasterkeyError(f"{path}: no such bank directory")
        if not path.is_dir():
            raise MasterkeyError(f"{path}: a file, not a bank directory")
        mpath = path / MANIFEST
        manifest = validate_manifest(read_manifest(path), mpath)
        try:
            return cls._open_checked(path, manifest, verify)
        except OSError as exc:
            raise MasterkeyError(describe_os_error(exc, verb="read")) from exc

    @classmethod
    def _open_checked(cls, path: Path, manifest: dict[str, Any], verify: bool) -> FilterBank:
        root = path.resolve()
        for fname, info in manifest["files"].items():
            fpath = path / fname
            if not os.path.lexists(fpath):
                raise MasterkeyError(f"{fpath}: missing from the bank (listed in the manifest)")
            size = regular_file(fpath, "bank file").st_size  # never a FIFO or a device, which would block or not end
            if root not in fpath.resolve().parents:
                raise MasterkeyError(f"{fpath}: a link that leads outside the bank directory")
            if size != info["bytes"]:
                raise MasterkeyError(
                    f"{fpath}: {size} bytes, the manifest says {info['bytes']} (truncated or modified)"
                )
            if verify and sha256_file(fpath) != info["sha256"]:
                raise MasterkeyError(f"{fpath}: checksum mismatch with the manifest (corrupt or modified)")
        try:
            parquet = pq.ParquetFile(path / METADATA)
            rows = parquet.metadata.num_rows
            # Bounded before decoding: a few bytes of run-length-encoded Parquet could decode to billions of rows.
            if rows != manifest["n_filters"]:
                raise MasterkeyError(f"{path / METADATA}: {rows:,} rows, the manifest says {manifest['n_filters']:,}")
            table = renamed_columns(parquet.read(), path)  # columns renamed since (with a note)
        except MasterkeyError:
            raise
        except Exception as exc:
            raise MasterkeyError(f"{path / METADATA}: unreadable metadata ({str(exc).splitlines()[0]})") from None
        missing = [c for c in METADATA_SCHEMA.names if c not in table.column_names]
        if missing:
            raise MasterkeyError(f"{path / METADATA}: missing columns {missing}")
        for field in METADATA_SCHEMA:
            if table.schema.field(field.name).type != field.type:
                raise MasterkeyError(
                    f"{path / METADATA}: column {field.name} is {table.schema.field(field.name).type}, "
                    f"expected {field.type}"
                )
        bank = cls(path, manifest, table)
        bank._check_counts()
        return bank

    def _check_counts(self) -> None:
        """Every count of the manifest agrees with the metadata, and the metadata with the tensor files."""
        manifest, where = self.manifest, self.path / METADATA
        kernel_size, source = self._column("kernel_size"), self._column("source")
        if len(kernel_size) != manifest["n_filters"]:
            raise MasterkeyError(f"{where}: {len(kernel_size)} rows, the manifest says {manifest['n_filters']} filters")
        counts = {str(k): n for k, n in _value_counts(kernel_size).items()}
        if counts != manifest["counts_by_kernel"]:
            raise MasterkeyError(
                f"{where}: filters per kernel size {counts}, the manifest says {manifest['counts_by_kernel']}"
            )
        per_source = _value_counts(source)
        listed = {s["name"]: s["n_filters"] for s in manifest["sources"]}
        unlisted = sorted(set(per_source) - set(listed))
        if unlisted:
            raise MasterkeyError(f"{where}: rows of source(s) {unlisted[:3]} that the manifest does not list")
        for name, n in listed.items():
            if int(per_source.get(name, 0)) != n:
                raise MasterkeyError(
                    f"{where}: {int(per_source.get(name, 0))} rows of source '{name}', the manifest says {n}"
                )
        excluded = excluded_counts(self._column("filter_flags"))
        if excluded != manifest["excluded"]:
            raise MasterkeyError(f"{where}: excluded filters {excluded}, the manifest says {manifest['excluded']}")
        for k, n in ((int(k), n) for k, n in counts.items()):
            index = self._column("index")[kernel_size == k]
            if not np.array_equal(index, np.arange(n)):
                raise MasterkeyError(f"{where}: the index column of the {k}x{k} filters is not 0..{n - 1} in order")
            shape, dtype = self._tensor_shape(k)
            if shape != (n, k, k) or dtype != "F32":
                raise MasterkeyError(
                    f"{self.path / tensor_file(k)}: holds {dtype} filters of shape {list(shape)} "
                    f"but the metadata lists {n} {k}x{k} float32 filters"
                )

    def _tensor_shape(self, k: int) -> tuple[tuple[int, ...], str]:
        from safetensors import safe_open

        fpath = self.path / tensor_file(k)
        try:
            with safe_open(str(fpath), framework="numpy") as f:
                tensor = f.get_slice(TENSOR_NAME)
                return tuple(tensor.get_shape()), tensor.get_dtype()
        except Exception as exc:
            raise MasterkeyError(f"{fpath}: unreadable filter tensor ({str(exc).splitlines()[0]})") from None

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self._column("kernel_size"))

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
        return dict(sorted(_value_counts(self._column("kernel_size")).items()))

    def excluded_counts(self) -> dict[str, int]:
        return excluded_counts(self._column("filter_flags"))

    def select(self, mask: np.ndarray | pd.Series | Sequence[bool]) -> FilterBank:
        """A view of the rows where ``mask`` is true."""
        return FilterBank(self.path, self.manifest, self.metadata[np.asarray(mask, dtype=bool)])

    def query(self, expr: str | Query) -> FilterBank:
        """A view of the rows matching a metadata query (the language of :mod:`masterkey.query`: columns,
        literals, comparisons, ``in`` lists, ``and`` / ``or`` / ``not``; it cannot run code).

        Example: ``bank.query("kernel_size == 7 and stage >= 2 and source in ['convnext_atto_s0_e20']")``.
        """
        return self.select(evaluate_query(expr, self.metadata))

    def usable(self) -> FilterBank:
        """A view without non-finite, all-zero and constant filters."""
        return self.select((self.metadata["filter_flags"].to_numpy() & int(EXCLUDED)) == 0)

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
        import torch
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
                    # Grow the chunk while the span it reads stays within 4x its size (sparse views read less):
                    # it ends before the first row (within chunk_size) that lies 4 * chunk_size or more ahead.
                    ahead = index[start + 1 : start + chunk_size] - index[start] >= 4 * chunk_size
                    stop = start + 1 + (int(ahead.argmax()) if ahead.any() else len(ahead))
                    lo, hi = int(index[start]), int(index[stop - 1]) + 1
                    block = tensor[lo:hi]
                    rel = index[start:stop] - lo
                    if hi - lo != stop - start or not (rel == np.arange(stop - start)).all():
                        block = block[torch.from_numpy(rel)]  # a sparse or reordered view: its rows of the span
                    yield rows.iloc[start:stop], block
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
        import torch

        k = self._single_kernel(kernel_size)
        chunks = [block for _, block in self.iter_filters(k)]
        out = torch.cat(chunks) if chunks else torch.empty(0, k, k)
        return center_norm(out) if normalized and len(out) else out

    # ------------------------------------------------------------------ writing
    def save(self, path: str | Path, overwrite: bool = False) -> FilterBank:
        """Write this view as a new, self-contained bank (never over the bank it is a view of)."""
        check_output(path, "bank", overwrite=overwrite, inputs=[self.path])
        if len(self) == 0:
            raise MasterkeyError(f"{path}: no filters to write (the selection of {self.path} is empty)")
        tensors = {k: self.filters(k) for k in self.kernel_sizes}
        sources = [dict(s) for s in self.manifest["sources"] if s["name"] in set(self.metadata["source"])]
        return _write(path, tensors, self.metadata.copy(), sources, overwrite=overwrite, inputs=[self.path])

    @staticmethod
    def merge(banks: Sequence[FilterBank], path: str | Path, overwrite: bool = False) -> FilterBank:
        """Write the union of ``banks`` (views allowed) as a new bank.

        The same source (same sha256) in two banks is refused, as it would count its filters twice; two different
        sources with one name are renamed ``name#2``, ``name#3``, ...
        """
        import pandas as pd
        import torch

        if not banks:
            raise MasterkeyError("merge: no banks given")
        inputs = [b.path for b in banks]
        check_output(path, "bank", overwrite=overwrite, inputs=inputs)
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
        return _write(path, merged, pd.concat(tables, ignore_index=True), sources, overwrite=overwrite, inputs=inputs)

    # ------------------------------------------------------------------ summaries
    def info(self) -> dict[str, Any]:
        """What ``masterkey bank info --json`` prints."""
        source, layer, kernel_size = self._column("source"), self._column("layer"), self._column("kernel_size")
        per_source = []
        for src in self.manifest["sources"]:
            rows = source == src["name"]
            if not rows.any():
                continue
            per_source.append(
                {
                    "name": src["name"],
                    "kind": src.get("kind"),
                    "model": src.get("model"),
                    "path": src.get("path"),
                    "sha256": src.get("sha256"),
                    "n_layers": len(set(layer[rows])),
                    "n_filters": int(rows.sum()),
                    "counts_by_kernel": {str(k): n for k, n in sorted(_value_counts(kernel_size[rows]).items())},
                    "skipped": src.get("skipped", []),
                }
            )
        return {
            "path": str(self.path),
            "format": FORMAT,
            "schema_version": self.manifest["schema_version"],
            "package_version": self.manifest.get("package_version"),
            "n_filters": len(kernel_size),
            "counts_by_kernel": {str(k): n for k, n in self.counts_by_kernel().items()},
            "excluded": self.excluded_counts(),
            "n_layers": len(set(zip(source, layer, strict=True))),
            "sources": per_source,
        }


def _arrow_to_numpy(column: pa.ChunkedArray, where: Path, name: str) -> np.ndarray:
    """A column of numbers (read from arrow's buffers) or strings (as objects) as a numpy array: ``pyarrow``'s
    own ``to_numpy`` imports pandas, and its compute functions pyarrow.compute; either would double the start-up
    of ``masterkey bank info``."""
    array = column.combine_chunks()
    if array.null_count:
        raise MasterkeyError(f"{where}: column {name} has {array.null_count} missing values (corrupt or altered)")
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        values = np.empty(len(array), dtype=object)  # strings as Python objects, as pandas holds them
        values[:] = array.to_pylist()
        return values
    dtype = np.dtype(array.type.to_pandas_dtype())
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _value_counts(values: np.ndarray) -> dict[Any, int]:
    """How often each value occurs (numbers as Python ints), in the order of first occurrence."""
    found, first, counts = np.unique(values, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return {
        (int(v) if isinstance(v, np.integer) else v): int(c) for v, c in zip(found[order], counts[order], strict=True)
    }


def _source_rows(source: HarvestedSource, offsets: dict[int, int]) -> tuple[pd.DataFrame, dict[int, Tensor]]:
    """Metadata rows and per-kernel tensors of one harvested source; ``offsets`` is advanced."""
    import pandas as pd
    import torch

    from masterkey.depthwise import stage_block

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
        stage, block = (layer.stage, layer.block) if layer.stage is not None else stage_block(layer.name)
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
                    "filter_flags": (flags | extra).numpy(),
                }
            )
        )
        tensors.setdefault(k, []).append(w)
    meta = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METADATA_SCHEMA.names)
    return meta, {k: torch.cat(v) for k, v in tensors.items()}


def write_bank(sources: Sequence[HarvestedSource], path: str | Path, overwrite: bool = False) -> FilterBank:
    """Write harvested sources as a bank at ``path`` (atomically: a complete bank or nothing)."""
    import pandas as pd
    import torch

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
    inputs = [s.path for s in sources]
    return _write(path, merged, pd.concat(frames, ignore_index=True), entries, overwrite=overwrite, inputs=inputs)


def _write(
    path: str | Path,
    tensors: dict[int, Tensor],
    metadata: pd.DataFrame,
    sources: list[dict[str, Any]],
    overwrite: bool = False,
    inputs: Sequence[str | Path | None] = (),
) -> FilterBank:
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
    with atomic_directory(path, "bank", overwrite=overwrite, inputs=inputs) as tmp:
        files = {}
        for k in sorted(tensors):
            fname = tensor_file(k)
            (tmp / fname).write_bytes(safetensors_bytes({TENSOR_NAME: tensors[k].contiguous()}, {"format": FORMAT}))
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
            "excluded": excluded_counts(metadata["filter_flags"].to_numpy()),
            "sources": sources,
            "files": files,
        }
        (tmp / MANIFEST).write_text(dumps(manifest) + "\n")
    return FilterBank.open(path, verify=False)
