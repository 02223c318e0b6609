"""The section of a fit run: keys, filter proportions by layer, cos² per key against a random reference,
real filters assigned to each key."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from masterkey.errors import MasterkeyError
from masterkey.plots.bars import cos2_boxplots
from masterkey.plots.filters import assigned_samples, filter_grid
from masterkey.plots.heatmaps import proportion_heatmap
from masterkey.plots.style import figure_png, key_colors
from masterkey.report.html import Section
from masterkey.report.runs import FitRun
from masterkey.report.sections.common import ReportOptions, new_section


def _n_keys(fit: FitRun) -> int:
    if fit.keysets:
        return len(next(iter(fit.keysets.values())))
    if fit.summary and isinstance(fit.summary.get("keys"), dict) and fit.summary["keys"]:
        return int(next(iter(fit.summary["keys"].values())).get("n_keys", 0))
    if fit.fits is not None and len(fit.fits):
        return int(fit.fits["key"].max()) + 1
    return 0


def _labels(fit: FitRun, n_keys: int) -> list[str]:
    if fit.keysets:
        return next(iter(fit.keysets.values())).key_labels()
    if fit.summary and isinstance(fit.summary.get("keys"), dict) and fit.summary["keys"]:
        labels = next(iter(fit.summary["keys"].values())).get("labels")
        if isinstance(labels, list) and len(labels) == n_keys:
            return [str(x) for x in labels]
    return [str(i + 1) for i in range(n_keys)]


def _bank_filters(bank: Any, kernel_size: int, indices: np.ndarray) -> np.ndarray:
    """Raw filters of ``bank`` with the given tensor ``index`` values, in the order of ``indices``."""
    meta = bank.metadata
    mask = (meta["kernel_size"].to_numpy() == kernel_size) & meta["index"].isin(indices).to_numpy()
    view = bank.select(mask)
    filters = view.filters(kernel_size).double().numpy()
    position = {int(v): i for i, v in enumerate(view.metadata["index"].to_numpy())}
    return filters[[position[int(i)] for i in indices]]


def _open_bank(fit: FitRun, options: ReportOptions) -> Any:
    from masterkey.bank import open_bank

    spec = options.bank or fit.run.config.get("bank")
    if not spec:
        fit.run.notes.append("real-filter samples and the per-filter random reference: run.json names no bank")
        return None
    try:
        return open_bank(spec)
    except MasterkeyError as exc:
        fit.run.notes.append(f"real-filter samples and the per-filter random reference: bank unavailable ({exc})")
        return None


def _unit(filters: np.ndarray) -> np.ndarray:
    flat = filters.reshape(len(filters), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.where(norm > 0, norm, 1)).reshape(filters.shape)


_SUMMARY_STATS = ("n", "mean_cos2", "q05_cos2", "q50_cos2", "q95_cos2", "ref_mean_cos2")


def _fit_summary(section: Section, summary: dict[str, Any], n_keys: int) -> None:
    overall = summary["overall"]
    n_fitted = summary.get("n_fitted", overall.get("n", 0))
    line = f"{n_fitted:,} filters fitted; mean cos² {overall.get('mean_cos2', math.nan):.3f}"
    if "ref_mean_cos2" in overall:
        line += f" against {overall['ref_mean_cos2']:.3f} for a random key set of the same size"
    excluded = {k: v for k, v in (summary.get("excluded") or {}).items() if v}
    if excluded:
        line += "; excluded: " + ", ".join(f"{v:,} {k}" for k, v in excluded.items())
    section.text(line + ". cos² is the fraction of a centred filter's energy that its best key (a·key + b) explains.")
    groups: list[tuple[str, dict[str, Any]]] = [("all", overall)]
    groups += [(f"{r['kernel_size']}x{r['kernel_size']}", r) for r in summary.get("by_kernel") or []]
    groups += [(str(r["source"]), r) for r in summary.get("by_source") or []]
    pcols = {f"key {i + 1} %": f"p_{i + 1}" for i in range(n_keys)}
    rows = [
        {"group": name}
        | {k: r.get(k) for k in _SUMMARY_STATS}
        | {c: 100 * r.get(p, math.nan) for c, p in pcols.items()}
        for name, r in groups
    ]
    table = pd.DataFrame(rows).dropna(axis=1, how="all")
    section.table("Summary: cos² statistics and % of filters per key", table, digits=dict.fromkeys(pcols, 1))


def _random_reference(
    fit: FitRun, bank: Any, kernel_size: int, part: pd.DataFrame, n_keys: int, options: ReportOptions
) -> np.ndarray | None:
    """cos² of (a sample of) the fitted filters against the run's random reference key set."""
    import torch

    from masterkey.fit import fit_affine
    from masterkey.keys import load_keys

    pick = part["index"].to_numpy()
    if len(pick) > options.max_reference:
        pick = np.sort(np.random.default_rng(options.seed).choice(pick, options.max_reference, replace=False))
    seed = int(fit.run.config.get("reference_seed", 0) or 0)
    try:
        filters = _bank_filters(bank, kernel_size, pick)
        keys = load_keys(f"random:{n_keys}:{seed}", kernel_size=kernel_size)
        return fit_affine(torch.from_numpy(filters).float(), keys).cos2.numpy()
    except (MasterkeyError, KeyError) as exc:
        fit.run.notes.append(f"{kernel_size}x{kernel_size} random reference: {exc}")
        return None


def _samples_figure(bank: Any, part: pd.DataFrame, keyset: Any, labels: list[str], options: ReportOptions) -> bytes:
    k = keyset.kernel_size
    rng = np.random.default_rng(options.seed)
    samples, cos2, counts = [], [], []
    for i in range(len(keyset)):
        assigned = part[part["key"] == i]
        counts.append(len(assigned))
        take = min(options.samples, len(assigned))
        chosen = assigned.iloc[np.sort(rng.choice(len(assigned), take, replace=False))].sort_values(
            "cos2", ascending=False
        )
        filters = np.zeros((0, k, k))
        if len(chosen):
            filters = _unit(_bank_filters(bank, k, chosen["index"].to_numpy()))
            filters *= np.sign(chosen["a"].to_numpy(dtype=float))[:, None, None]
        samples.append(filters)
        cos2.append(chosen["cos2"].to_numpy(dtype=float))
    title = f"{k}x{k} filters assigned to each key"
    return figure_png(assigned_samples(keyset.keys, labels, samples, cos2, counts, title))


def fit_section(fit: FitRun, index: int, options: ReportOptions) -> Section:
    from masterkey.fit import summarize

    run = fit.run
    n_keys = _n_keys(fit)
    labels = _labels(fit, n_keys)
    names = sorted({ks.name.split("@")[0] for ks in fit.keysets.values()}) or [str(run.config.get("keys", ""))]
    section = new_section(run, index, f"{n_keys} keys ({', '.join(names)})" if n_keys else "")
    summary = fit.summary or {}
    if summary.get("overall"):
        _fit_summary(section, summary, n_keys)

    if fit.keysets:
        rows = [(f"{k}x{k}", ks.keys, None) for k, ks in sorted(fit.keysets.items(), reverse=True)]
        png = figure_png(filter_grid(rows, "Keys used for the fit", labels, key_colors(n_keys), cell=1.05))
        section.figure(
            "keys",
            "Keys",
            png,
            "One row per kernel size (other sizes are centre crops / zero pads unless the keys were made at that "
            "size). Red positive, blue negative.",
        )

    table = fit.fits
    if table is not None and len(table):
        layers = summarize(table, n_keys, by=["source", "layer", "layer_index"])
        section.figure(
            "proportions",
            "Filter-type proportions by layer",
            figure_png(proportion_heatmap(layers, labels)),
            "Share of each layer's filters whose best key is key i (columns); layers in network order (rows); "
            "one panel per model.",
        )
        bank = _open_bank(fit, options)
        sizes = sorted(table["kernel_size"].unique(), reverse=True)
        groups: dict[str, tuple[list[np.ndarray], np.ndarray | None]] = {}
        for k in sizes:
            part = table[table["kernel_size"] == k]
            per_key = [part.loc[part["key"] == i, "cos2"].to_numpy(dtype=float) for i in range(n_keys)]
            reference = None if bank is None else _random_reference(fit, bank, int(k), part, n_keys, options)
            groups[f"{k}x{k} ({len(part):,} filters)"] = (per_key, reference)
        seed = int(run.config.get("reference_seed", 0) or 0)
        caption = (
            f"cos² of each filter with its best key, grouped by that key; grey: the same filters fitted to "
            f"random:{n_keys}:{seed} keys (best of {n_keys}). Deviation √(1−cos²) is the residual norm of the "
            "normalised filter."
        )
        if bank is None and summary.get("by_kernel"):
            caption = "cos² of each filter with its best key, grouped by that key. Random reference (mean cos², " + (
                ", ".join(
                    f"{r['kernel_size']}x{r['kernel_size']}: {r.get('ref_mean_cos2', math.nan):.3f}"
                    for r in summary["by_kernel"]
                )
                + ")."
            )
        png = figure_png(cos2_boxplots(groups, labels, reference_label=f"random:{n_keys}"))
        section.figure("cos2", "Approximation quality per key", png, caption)
        if bank is not None and options.samples > 0:
            for k in sizes:
                if int(k) in fit.keysets:
                    png = _samples_figure(bank, table[table["kernel_size"] == k], fit.keysets[int(k)], labels, options)
                    section.figure(
                        f"samples-k{k}",
                        f"Real {k}x{k} filters assigned to each key",
                        png,
                        "A random sample per key, centred, unit-normed and multiplied by the sign of a (so each "
                        "should look like its key), sorted by cos².",
                    )

    if summary.get("by_layer"):
        by_layer = pd.DataFrame(summary["by_layer"])
        cols = [c for c in ("source", "layer", "n", "mean_cos2", "q50_cos2", "ref_mean_cos2") if c in by_layer]
        cols += [c for c in by_layer.columns if c.startswith("p_")]
        section.table("By layer", by_layer[cols], collapsed=True)
    return section
