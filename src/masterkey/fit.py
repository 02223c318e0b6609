"""Exact affine fit of filters to keys (docs/design.md, pipeline step 4).

For a centred unit-norm key x̂ the least-squares fit of a filter y by ``a * x̂ + b`` is closed form:
``a = <y - ȳ, x̂>``, ``b = ȳ``, and residual² = ||y - ȳ||² - a². One matrix product scores every filter against
every key; each filter takes the key of largest |a| (the smallest residual). The sign of ``a`` is free.
Filters are processed in chunks, so memory stays bounded however large the bank. :func:`write_fit_run` writes the
fit run directory (its files are declared in :mod:`masterkey.runformats`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from masterkey.bank import FilterBank
from masterkey.errors import MasterkeyError, option
from masterkey.files import atomic_directory, write_json, write_text
from masterkey.keys import KeySet, load_keys, resolve_key_spec
from masterkey.progress import progress_bar
from masterkey.runformats import write_table
from masterkey.runs import write_run_info
from masterkey.tables import format_table

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Filters with a weight larger than this in magnitude are excluded from fits as out of range: their squares,
#: summed over up to 63 x 63 weights, would overflow float32 (3.4e38) and give NaN fits; no trained network has
#: weights within many orders of magnitude of it.
MAX_ABS_WEIGHT = 1e15
#: Filters per kernel call: large enough for efficient matrix products, small enough to stay in CPU cache.
FIT_CHUNK = 8192
#: Filters per kernel call on a GPU, where launches cost more than cache misses: 1M 7x7 filters x 50 keys took
#: 0.039 s in chunks of 65,536 vs 0.107 s in chunks of 8,192 on an H200 (bench/results/gpu), 96 MiB of GPU memory.
FIT_CHUNK_CUDA = 65536


def fit_chunk_size(device: str | torch.device | None) -> int:
    """Filters per kernel call on ``device``: :data:`FIT_CHUNK` on the CPU, :data:`FIT_CHUNK_CUDA` on a GPU."""
    return FIT_CHUNK_CUDA if device is not None and torch.device(device).type == "cuda" else FIT_CHUNK


#: Above this cos², residuals are computed directly rather than as sqrt(energy - a²) (float cancellation); below
#: it the shortcut agrees with a direct computation to better than 1e-5 of the filter's scale in float32.
EXACT_RESIDUAL_COS2 = 0.2
FIT_COLUMNS = ("key", "a", "b", "cos2", "residual")


@dataclass
class FitResult:
    """Per-filter best fits: key index, ``a``, ``b``, ``cos2`` (explained fraction of the centred energy; 1 for
    a constant filter, which is fitted exactly by ``b``) and ``residual`` (L2 norm of ``y - a*key - b``)."""

    key: Tensor
    a: Tensor
    b: Tensor
    cos2: Tensor
    residual: Tensor

    def __len__(self) -> int:
        return int(self.key.shape[0])

    def to_frame(self) -> pd.DataFrame:
        """One row per filter: ``key_index`` (0-based), ``key_number`` (1-based), ``a``, ``b``, ``cos2``,
        ``residual`` (:data:`masterkey.runformats.KEY_COLUMNS`)."""
        key = self.key.numpy()
        columns = {"key_index": key, "key_number": key + 1}
        return pd.DataFrame({**columns, **{name: getattr(self, name).numpy() for name in FIT_COLUMNS[1:]}})

    @classmethod
    def cat(cls, parts: Iterable[FitResult]) -> FitResult:
        parts = list(parts)
        return cls(*(torch.cat([getattr(p, n) for p in parts]) for n in FIT_COLUMNS))


def _key_matrix(keys: KeySet | Tensor) -> Tensor:
    """Centred unit-norm keys as a float64 [K, d] matrix."""
    if isinstance(keys, KeySet):
        return keys.keys.reshape(len(keys), -1).to(torch.float64)
    mat = torch.as_tensor(keys).reshape(len(keys), -1).to(torch.float64)
    mat = mat - mat.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(mat, dim=1, keepdim=True)
    if bool((norms == 0).any()) or not bool(torch.isfinite(mat).all()):
        raise MasterkeyError("keys must be finite and non-constant")
    return mat / norms


class _Fitter:
    """The per-chunk kernel. Work is laid out key-major ([K, n], [d, n]) so that every reduction runs across
    the long filter axis, where it vectorises; reductions along the short key / pixel axes are an order of
    magnitude slower on CPU."""

    def __init__(self, keys: KeySet | Tensor, device: torch.device | None, dtype: torch.dtype) -> None:
        kmat = _key_matrix(keys)
        n_keys, self.d = kmat.shape
        # One matrix product gives every score and the mean: the last row of the augmented key matrix is 1/d.
        aug = torch.cat([kmat, torch.full((1, self.d), 1.0 / self.d, dtype=torch.float64)])
        self.aug = aug.to(device=device, dtype=dtype)
        self.key_sum = kmat.sum(dim=1).to(device=device, dtype=dtype)  # ~0; corrects scores for rounding
        self.keys_t = kmat.T.contiguous().to(device=device, dtype=dtype)  # [d, K]
        rank_dtype = torch.int8 if n_keys < 128 else torch.int16 if n_keys < 32768 else torch.int32
        self.rank = (n_keys - torch.arange(n_keys, device=device)).to(rank_dtype)[:, None]
        self.n_keys = n_keys
        self.device, self.dtype = device, dtype

    def _direct_residual2(self, centred: Tensor, best: Tensor, a: Tensor) -> Tensor:
        """||centred - a * key_best||² per column, computed directly: each filter's own key gathered (one [d, n]
        table look-up), not a product with every key."""
        fitted = self.keys_t.index_select(1, best)  # [d, n]: the chosen key of every filter
        return torch.linalg.vector_norm(torch.addcmul(centred, fitted, a, value=-1), dim=0).square_()

    def __call__(self, chunk: Tensor) -> FitResult:
        y = chunk.reshape(chunk.shape[0], -1)
        if y.shape[1] != self.d:
            side = round(self.d**0.5)
            raise MasterkeyError(f"filters have {y.shape[1]} weights each but the keys are {side}x{side} ({self.d})")
        y = y.to(device=self.device, dtype=self.dtype, non_blocking=True)
        scores = torch.mm(self.aug, y.T)  # [K + 1, n]
        mean = scores[-1].clone()
        scores = scores[:-1]
        scores.addr_(self.key_sum, mean, alpha=-1)  # = <y - mean, key>
        # NaN scores (a non-finite filter) would match no maximum; they count as 0 so the index stays valid.
        magnitude = scores.abs()
        top = magnitude.amax(dim=0)
        # First index reaching the maximum (ties go to the lower key) as the highest rank = K - index among the
        # maximal entries: an integer multiply and max, far faster than argmax over dim 0 on CPU. A NaN filter
        # matches nothing and is clamped to a valid index (its a, cos² and residual stay NaN).
        chosen = (torch.ge(magnitude, top).to(self.rank.dtype) * self.rank).amax(dim=0)
        best = (self.n_keys - chosen.long()).clamp_(max=self.n_keys - 1)
        a = scores.gather(0, best[None])[0]
        centred = y.T - mean  # [d, n]
        # vector_norm reduces without materialising the squares: ~10x faster on CPU than square().sum(0).
        energy = torch.linalg.vector_norm(centred, dim=0).square_()
        # residual² = energy - a² is exact in theory but cancels in floating point when the fit is good; where
        # more than EXACT_RESIDUAL_COS2 of the energy is explained, the residual is computed directly instead.
        residual = (energy - a.square()).clamp_min_(0)
        exact = ~(residual > (1 - EXACT_RESIDUAL_COS2) * energy)
        n_exact = int(exact.sum())
        if n_exact == len(exact):  # every filter well explained (the banks people fit): no indexing at all
            residual = self._direct_residual2(centred, best, a)
        elif n_exact:
            # Column indexing of [d, n] costs more than the arithmetic: index_select, never boolean masks.
            where = torch.nonzero(exact)[:, 0]
            residual.index_copy_(
                0, where, self._direct_residual2(centred.index_select(1, where), best[where], a[where])
            )
        residual.sqrt_()
        cos2 = torch.where(energy > 0, a.square() / energy.clamp_min(torch.finfo(self.dtype).tiny), 1.0)
        return FitResult(best.cpu(), a.cpu(), mean.cpu(), cos2.clamp_(0, 1).cpu(), residual.cpu())


def fit_chunks(
    chunks: Iterable[Tensor],
    keys: KeySet | Tensor,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[FitResult]:
    """Fit each chunk of filters ([n, k, k] or [n, d]) to ``keys``; yields one CPU :class:`FitResult` per chunk."""
    fitter = _Fitter(keys, torch.device(device) if device is not None else None, dtype)
    for chunk in chunks:
        yield fitter(chunk)


def fit_affine(
    filters: Tensor,
    keys: KeySet | Tensor,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> FitResult:
    """Best affine fit ``a * key + b`` of every filter of ``filters`` ([N, k, k] or [N, d]) to ``keys``.

    Keys are centred and unit-normed first (a :class:`KeySet` already is). Ties in |a| go to the lower key index.
    Works on CPU and CUDA (``device``); results are on the CPU. ``chunk_size``: filters per kernel call (default
    :func:`fit_chunk_size`).
    """
    chunk_size = chunk_size or fit_chunk_size(device)
    if filters.shape[0] == 0:
        empty = torch.empty(0)
        return FitResult(torch.empty(0, dtype=torch.int64), empty, empty, empty, empty)
    chunks = (filters[i : i + chunk_size] for i in range(0, filters.shape[0], chunk_size))
    return FitResult.cat(fit_chunks(chunks, keys, device=device, dtype=dtype))


def fittable(filters: Tensor) -> Tensor:
    """A boolean mask of the filters ([n, k, k] or [n, d]) that can be fitted: every weight finite and at most
    :data:`MAX_ABS_WEIGHT` in magnitude. One pass over the data (a NaN makes the row's maximum NaN)."""
    peak = filters.reshape(filters.shape[0], -1).abs().amax(dim=1) if filters.shape[0] else filters.new_zeros(0)
    return peak <= MAX_ABS_WEIGHT


@dataclass
class BankFit:
    """Fits of a bank's usable filters: ``table`` holds the metadata columns plus ``key_index`` (0-based),
    ``key_number`` (1-based), ``key_label``, ``a``,
    ``b``, ``cos2``, ``residual``; ``keysets`` the key set used per kernel size."""

    table: pd.DataFrame
    keysets: dict[int, KeySet]
    #: Filters of the fitted kernel sizes left out, by reason, per kernel size (:attr:`excluded`: their total).
    excluded_by_kernel: dict[int, dict[str, int]]
    skipped_kernels: list[int] = field(default_factory=list)
    #: Filters of the kernel sizes not fitted (no keys of that size, no ``resize``), per kernel size: not excluded.
    not_fitted: dict[int, int] = field(default_factory=dict)

    @property
    def excluded(self) -> dict[str, int]:
        """Filters of the fitted kernel sizes left out, by reason (non-finite, zero, constant, out of range)."""
        total: dict[str, int] = {}
        for counts in self.excluded_by_kernel.values():
            for why, n in counts.items():
                total[why] = total.get(why, 0) + n
        return total

    @property
    def n_keys(self) -> int:
        return len(next(iter(self.keysets.values())))


def fit_bank(
    bank: FilterBank,
    keys: KeySet | str,
    resize: bool = False,
    chunk_size: int = 65536,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> BankFit:
    """Fit every usable filter of ``bank`` to ``keys``.

    Kernel sizes the keys do not have are fitted with resized keys when ``resize`` is true (centre crop / zero
    pad, see :meth:`KeySet.resized`) and skipped otherwise; if no kernel size can be fitted the error says so.
    Non-finite, all-zero and constant filters are excluded and counted in ``BankFit.excluded``; so are filters
    whose data is non-finite although the bank's flags say otherwise (an altered bank), and filters with weights
    beyond :data:`MAX_ABS_WEIGHT` (``"out_of_range"``), found as they are read. If no filter is left to fit, the
    error says why. ``progress``: a bar counting the filters fitted, chunk by chunk.
    """
    if len(bank) == 0:
        raise MasterkeyError(f"{bank.path}: the bank (or query) holds no filters")
    from masterkey.normalize import excluded_counts

    kernels, flags = bank.metadata["kernel_size"].to_numpy(), bank.metadata["filter_flags"].to_numpy()
    by_kernel = {k: {**excluded_counts(flags[kernels == k]), "out_of_range": 0} for k in bank.kernel_sizes}
    usable = bank.usable()
    base = load_keys(keys)
    resolved = resolve_key_spec(keys) if isinstance(keys, str) else None
    own_sizes = set(resolved) if isinstance(resolved, dict) else {base.kernel_size}  # a discover run: per size
    keysets: dict[int, KeySet] = {}
    skipped: list[int] = []
    frames = []
    kernel_of = usable.metadata["kernel_size"]
    total = sum(int((kernel_of == k).sum()) for k in bank.kernel_sizes if k == base.kernel_size or resize)
    bar = progress_bar(total=total, desc=f"fit {base.name}", unit="filter", unit_scale=True, enabled=progress)
    for k in bank.kernel_sizes:
        view = usable.select((usable.metadata["kernel_size"] == k).to_numpy())
        if k not in own_sizes and not resize:
            skipped.append(k)
            by_kernel.pop(k)
            continue
        excluded = by_kernel[k]
        keyset = load_keys(keys if isinstance(keys, str) else base, kernel_size=k, resize=resize)
        keysets[k] = keyset
        if len(view) == 0:
            continue
        parts, metas = [], []
        for meta, block in view.iter_filters(k, chunk_size=chunk_size):
            bar.update(len(block))
            keep = fittable(block)
            if not bool(keep.all()):  # the bank's flags missed them: count them, never fit them
                nonfinite = ~torch.isfinite(block.flatten(1)).all(dim=1)
                excluded["nonfinite"] += int(nonfinite.sum())
                excluded["out_of_range"] += int((~keep & ~nonfinite).sum())
                meta, block = meta[keep.numpy()], block[keep]
            if len(block):
                parts.extend(fit_chunks(block.split(fit_chunk_size(device)), keyset, device=device))
                metas.append(meta)
        if not metas or not sum(len(m) for m in metas):
            continue
        result = FitResult.cat(parts)
        frame = pd.concat(metas).reset_index(drop=True)
        fits = result.to_frame()
        fits.insert(2, "key_label", np.asarray(keyset.key_labels(), dtype=object)[fits["key_index"].to_numpy()])
        frames.append(pd.concat([frame, fits], axis=1))
    bar.close()
    if not keysets:
        sizes = ", ".join(f"{k}x{k}" for k in bank.kernel_sizes)
        raise MasterkeyError(
            f"{bank.path}: kernel-size mismatch: the bank holds {sizes} filters but keys '{base.name}' are "
            f"{base.kernel_size}x{base.kernel_size}; pass {option('resize', True, flag='--resize-keys')} to "
            "centre-crop / zero-pad the keys"
        )
    not_fitted = {k: int((kernels == k).sum()) for k in skipped}
    if not frames:
        totals = BankFit(pd.DataFrame(), keysets, by_kernel).excluded
        counted = ", ".join(f"{n:,} {what.replace('_', ' ')}" for what, n in totals.items() if n)
        fitted = ", ".join(f"{k}x{k}" for k in keysets)
        raise MasterkeyError(
            f"{bank.path}: no {fitted} filter can be fitted: every one is excluded ({counted or 'none usable'})"
        )
    return BankFit(pd.concat(frames, ignore_index=True), keysets, by_kernel, skipped, not_fitted)


def summarize(table: pd.DataFrame, n_keys: int, by: list[str] | None = None) -> pd.DataFrame:
    """One row per group (or one row overall): ``n``, mean and quantiles of cos², mean residual, and the
    proportion of filters assigned to each key (``p_1`` .. ``p_K``)."""
    groups: Iterable[tuple[Any, pd.DataFrame]] = table.groupby(by, sort=False) if by else [((), table)]
    rows = []
    for name, group in groups:
        name = name if isinstance(name, tuple) else (name,)
        row: dict[str, Any] = dict(zip(by or [], name, strict=True))
        cos2 = group["cos2"].to_numpy()
        row["n"] = len(group)
        row["mean_cos2"] = float(cos2.mean()) if len(cos2) else float("nan")
        for q, v in zip(QUANTILES, np.quantile(cos2, QUANTILES) if len(cos2) else [np.nan] * 5, strict=True):
            row[f"q{int(q * 100):02d}_cos2"] = float(v)
        row["mean_residual"] = float(group["residual"].mean()) if len(group) else float("nan")
        counts = np.bincount(group["key_index"].to_numpy(), minlength=n_keys)
        for i, c in enumerate(counts):
            row[f"p_{i + 1}"] = float(c / max(1, len(group)))
        rows.append(row)
    return pd.DataFrame(rows)


def fit_report(fit: BankFit, reference: BankFit | None = None) -> dict[str, Any]:
    """Summaries overall and per kernel size / source / stage / layer, with a reference fit's figures beside."""
    n_keys = fit.n_keys
    out: dict[str, Any] = {
        "keys": {
            str(k): {
                "name": ks.name,
                "n_keys": len(ks),
                "labels": ks.key_labels(),
                "provenance": ks.provenance,
            }
            for k, ks in fit.keysets.items()
        },
        "n_fitted": len(fit.table),
        "excluded": fit.excluded,
        "excluded_by_kernel": {str(k): counts for k, counts in fit.excluded_by_kernel.items()},
        "skipped_kernel_sizes": fit.skipped_kernels,
        "not_fitted": {str(k): n for k, n in fit.not_fitted.items()},
    }
    groupings = {
        "overall": None,
        "by_kernel": ["kernel_size"],
        "by_source": ["source"],
        "by_stage": ["stage"],
        "by_layer": ["source", "layer"],
    }
    for name, by in groupings.items():
        table = summarize(fit.table, n_keys, by)
        if reference is not None:
            ref = summarize(reference.table, reference.n_keys, by)
            cols = ["mean_cos2", "q50_cos2"]
            ref = ref[(by or []) + cols].rename(columns={c: f"ref_{c}" for c in cols})
            table = table.merge(ref, on=by, how="left") if by else pd.concat([table, ref], axis=1)
        out[name] = table.to_dict(orient="records") if by else table.to_dict(orient="records")[0]
    if reference is not None:
        out["reference"] = {str(k): ks.name for k, ks in reference.keysets.items()}
    return out


# ---------------------------------------------------------------------- the fit run directory
def fit_kernel(fit: BankFit) -> int:
    """The kernel size of the key set the fit was asked for."""
    return next(iter(fit.keysets.values())).kernel_size


def write_fit_run(
    out: str | Path,
    fit: BankFit,
    report: dict[str, Any],
    config: dict[str, Any],
    overwrite: bool,
    inputs: list[Any] | None = None,
) -> None:
    """A fit run directory: fits.parquet, summary.json, summary.md, keys_k*.safetensors, run.json."""
    with atomic_directory(out, "fit", overwrite=overwrite, inputs=inputs or []) as tmp:
        write_table(tmp, "fit", "fits.parquet", fit.table)
        for k, keyset in fit.keysets.items():
            keyset.save(tmp / f"keys_k{k}.safetensors")
        write_json(tmp / "summary.json", report)
        write_text(tmp / "summary.md", render_markdown(report))
        write_run_info(tmp, "fit", {k: v for k, v in config.items() if not k.startswith("_")})


_SHORT = ["n", "mean_cos2", "q05_cos2", "q50_cos2", "q95_cos2", "ref_mean_cos2", "ref_q50_cos2"]


def _columns(rows: list[dict[str, Any]], first: list[str]) -> list[str]:
    present = rows[0].keys() if rows else []
    return first + [c for c in _SHORT if c in present] + [c for c in present if c.startswith("p_")]


def render_text(report: dict[str, Any]) -> str:
    """The fit report (:func:`fit_report`) as the plain-text tables ``masterkey fit`` prints."""
    from masterkey.depthwise import UNKNOWN_STAGE_NOTE, stage_name

    keys = "; ".join(f"{k}x{k}: {v['name']}" for k, v in report["keys"].items())
    lines = [f"fit of {keys}", f"bank {report['bank']}: {report['n_fitted']:,} filters fitted"]
    by_kernel = report.get("excluded_by_kernel") or {"": report["excluded"]}
    for k, counts in by_kernel.items():
        what = ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in counts.items() if n) or "none"
        lines.append(f"  {k}x{k} excluded: {what}" if k else f"  excluded: {what}")
    not_fitted = report.get("not_fitted") or {}
    if not_fitted:
        sizes = ", ".join(f"{n:,} {k}x{k}" for k, n in not_fitted.items())
        lines.append(f"  not fitted (no keys of that size; --resize-keys fits them): {sizes}")
    if "reference" in report:
        lines.append("reference: " + "; ".join(f"{k}x{k}: {v}" for k, v in report["reference"].items()))
    for title, name, first in (
        ("overall", "overall", []),
        ("by kernel size", "by_kernel", ["kernel_size"]),
        ("by source", "by_source", ["source"]),
        ("by stage", "by_stage", ["stage"]),
    ):
        rows = report[name] if isinstance(report[name], list) else [report[name]]
        if name == "by_stage":
            rows = [{**row, "stage": stage_name(row["stage"])} for row in rows]
        lines += ["", f"{title}:", format_table(rows, _columns(rows, first))]
    if any(str(row.get("stage")) == "-1" for row in report["by_stage"]):
        lines.append(UNKNOWN_STAGE_NOTE)
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The fit report as ``summary.md``: the printed tables, then one row per layer."""
    lines = ["# Fit summary", "", "```", render_text(report), "```", ""]
    rows = report["by_layer"]
    lines += ["## By layer", "", "```", format_table(rows, _columns(rows, ["source", "layer"])), "```", ""]
    return "\n".join(lines)
