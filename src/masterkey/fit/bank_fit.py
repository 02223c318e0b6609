"""Fits of a whole bank (:func:`fit_bank`) and their summaries (:func:`summarize`, :func:`fit_report`), built on the
exact affine fit of :mod:`masterkey.fit.affine`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from masterkey.bank import FilterBank
from masterkey.errors import MasterkeyError, option
from masterkey.fit.affine import FitResult, fit_chunk_size, fit_chunks, fittable
from masterkey.keys import KeySet, load_keys, resolve_key_spec
from masterkey.progress import progress_bar

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class BankFit:
    """Fits of a bank's usable filters: ``table`` holds the metadata columns plus ``key``, ``key_label``, ``a``,
    ``b``, ``cos2``, ``residual``; ``keysets`` the key set used per kernel size."""

    table: pd.DataFrame
    keysets: dict[int, KeySet]
    excluded: dict[str, int]
    skipped_kernels: list[int] = field(default_factory=list)

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
    excluded = {**bank.excluded_counts(), "out_of_range": 0}
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
            continue
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
        fits["key_label"] = np.asarray(keyset.key_labels(), dtype=object)[fits["key"].to_numpy()]
        frames.append(pd.concat([frame, fits], axis=1))
    bar.close()
    if not keysets:
        sizes = ", ".join(f"{k}x{k}" for k in bank.kernel_sizes)
        raise MasterkeyError(
            f"{bank.path}: kernel-size mismatch: the bank holds {sizes} filters but keys '{base.name}' are "
            f"{base.kernel_size}x{base.kernel_size}; pass {option('resize', True, flag='--resize-keys')} to "
            "centre-crop / zero-pad the keys"
        )
    if not frames:
        counted = ", ".join(f"{n:,} {what.replace('_', ' ')}" for what, n in excluded.items() if n)
        fitted = ", ".join(f"{k}x{k}" for k in keysets)
        raise MasterkeyError(
            f"{bank.path}: no {fitted} filter can be fitted: every one is excluded ({counted or 'none usable'})"
        )
    return BankFit(pd.concat(frames, ignore_index=True), keysets, excluded, skipped)


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
        counts = np.bincount(group["key"].to_numpy(), minlength=n_keys)
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
        "skipped_kernel_sizes": fit.skipped_kernels,
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
