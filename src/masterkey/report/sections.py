"""One report section per run: the figures and tables that make each kind of run legible at a glance."""

from __future__ import annotations

import json
import math
import multiprocessing
import re
import shlex
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from masterkey.errors import MasterkeyError
from masterkey.nn.modes import REFERENCE
from masterkey.report import figures as F
from masterkey.report.html import Folded, Section
from masterkey.report.runs import (
    DiscoverPart,
    DiscoverRun,
    ExperimentRun,
    ExplainRun,
    FitRun,
    LoadedRun,
    Run,
    SwapRun,
    TrainRun,
)


@dataclass
class ReportOptions:
    """``samples``: real filters shown per key; ``bank``: a bank to read filters from instead of the one a fit
    run names (None: the run's own); ``max_reference``: filters per kernel size fitted to the random reference;
    ``jobs``: processes drawing the runs' sections side by side (figures are most of a report's time)."""

    samples: int = 8
    bank: str | None = None
    max_reference: int = 50_000
    seed: int = 0
    jobs: int = 1


# ---------------------------------------------------------------------- common header
_HIDDEN_CONFIG = {"out", "overwrite", "json", "command"}


def _facts(run: Run) -> list[tuple[str, str]]:
    facts = [("directory", str(run.path))]
    if run.argv:
        argv = [Path(run.argv[0]).name, *run.argv[1:]]
        facts.append(("command", shlex.join(argv)))
    config = {
        k: v for k, v in run.config.items() if k not in _HIDDEN_CONFIG and not k.startswith("_") and v is not None
    }
    if config:
        facts.append(("config", _folded_config(config)))
    env = run.environment
    if env:
        device = ", ".join(env.get("gpus") or []) or (
            "CUDA" if env.get("cuda") else f"CPU ({env.get('cpu_count', '?')} cores)"
        )
        versions = " · ".join(f"{k} {env[k]}" for k in ("masterkey", "torch", "timm", "python") if k in env)
        facts.append(("environment", f"{device}; {versions}"))
    return facts


def _folded_config(config: dict[str, Any]) -> Folded:
    """The whole config, one ``name = JSON value`` line per setting, folded under a one-line summary naming its
    settings."""
    plain = [k for k, v in config.items() if not isinstance(v, (dict, list))]
    nested = [k for k in config if k not in plain]
    summary = ", ".join(f"{k}={config[k]}" for k in plain[:6])
    more = nested + plain[6:]
    if more:
        summary += f"{'; ' if summary else ''}{len(more)} more: {', '.join(more)}"
    return Folded(summary, "\n".join(f"{k} = {json.dumps(v, default=str)}" for k, v in config.items()))


def _scalars(data: dict[str, Any] | None) -> pd.DataFrame | None:
    """The scalar entries of a JSON object (nested one level: ``a.b``) as a two-column table; accuracies (already
    in %, as the trainer writes them) say so in their name."""
    if not isinstance(data, dict):
        return None
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += [
                {"name": f"{key}.{k}", "value": v} for k, v in value.items() if isinstance(v, (int, float, str, bool))
            ]
        elif isinstance(value, (int, float, str, bool)):
            rows.append({"name": key, "value": value})
    if not rows:
        return None
    table = pd.DataFrame(rows)
    table["name"] = table["name"].map(lambda n: f"{n} %" if is_accuracy(n.rsplit(".", 1)[-1]) else n)
    table["value"] = table["value"].map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    return table


def is_accuracy(name: str) -> bool:
    """Whether a column or summary entry is an accuracy: ``top1``, ``top5``, anything ending in ``_top1``,
    ``_top5`` or ``_acc`` (``test_top1``, ``best_test_top1``, ``delta_top1``, ``train_acc``), and a swap's
    sensitivity ``drop``."""
    return name in ("top1", "top5", "drop") or name.endswith(("_top1", "_top5", "_acc"))


def percent_digits(table: pd.DataFrame) -> dict[str, int]:
    """Two decimals for the percent columns of :func:`percent_columns` (3 for the others)."""
    return {str(c): 2 for c in table.columns if str(c).endswith(" %")}


def percent_columns(table: pd.DataFrame, fractions: bool, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Accuracy columns (:func:`is_accuracy`, their ``_ci95`` and the ``extra`` columns) named with a ``%``;
    with ``fractions`` (discover's accuracy objective writes top-1 as 0.823; swap and train runs write percent, and
    the reader converts older swap runs) scaled by 100 first."""
    names = [c for c in table.columns if is_accuracy(str(c)) or c in extra]
    names += [c for c in table.columns if c.endswith("_ci95") and c.removesuffix("_ci95") in names]
    if not names:
        return table
    out = table.copy()
    if fractions:
        out[names] = table[names].apply(pd.to_numeric, errors="coerce") * 100
    return out.rename(columns={c: f"{c} %" for c in names})


def new_section(run: Run, index: int, title_extra: str = "") -> Section:
    title = run.name + (f" — {title_extra}" if title_extra else "")
    return Section(title, f"r{index}-{run.kind}", _facts(run), kind=run.kind)


# ---------------------------------------------------------------------- fit
def _n_keys(fit: FitRun) -> int:
    if fit.keysets:
        return len(next(iter(fit.keysets.values())))
    if fit.summary and isinstance(fit.summary.get("keys"), dict) and fit.summary["keys"]:
        return int(next(iter(fit.summary["keys"].values())).get("n_keys", 0))
    if fit.fits is not None and len(fit.fits):
        return int(fit.fits["key_index"].max()) + 1
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
    not_fitted = summary.get("not_fitted") or {}
    if not_fitted:
        line += "; not fitted (no keys of that size): " + ", ".join(f"{n:,} {k}x{k}" for k, n in not_fitted.items())
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
        assigned = part[part["key_index"] == i]
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
    return F.figure_png(F.assigned_samples(keyset.keys, labels, samples, cos2, counts, title))


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
        png = F.figure_png(F.filter_grid(rows, "Keys used for the fit", labels, F.key_colors(n_keys), cell=1.05))
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
            F.figure_png(F.proportion_heatmap(layers, labels)),
            "Share of each layer's filters whose best key is key i (columns); layers in network order (rows); "
            "one panel per model.",
        )
        bank = _open_bank(fit, options)
        sizes = sorted(table["kernel_size"].unique(), reverse=True)
        groups: dict[str, tuple[list[np.ndarray], np.ndarray | None]] = {}
        for k in sizes:
            part = table[table["kernel_size"] == k]
            per_key = [part.loc[part["key_index"] == i, "cos2"].to_numpy(dtype=float) for i in range(n_keys)]
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
        png = F.figure_png(F.cos2_boxplots(groups, labels, reference_label=f"random:{n_keys}"))
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


# ---------------------------------------------------------------------- discover
KEY_SCALE = (
    "Each key on its own symmetric colour scale: red +max|value|, white 0, blue −max|value| (keys are centred and "
    "unit-norm)."
)
SHARED_KEY_SCALE = (
    "One symmetric colour scale for all keys (the colour bar): red positive, white 0, blue negative (keys are "
    "centred and unit-norm)."
)


def discovered_key_labels(keys: Any) -> list[str]:
    """Labels of discovered keys: number and share of the bank's filters whose best key it is (from the key set's
    provenance), else the key set's own labels."""
    shares = keys.provenance.get("shares") if isinstance(keys.provenance, dict) else None
    if isinstance(shares, list) and len(shares) == len(keys):
        return [f"{i + 1}: {100 * float(share):.1f}% of filters" for i, share in enumerate(shares)]
    return keys.key_labels()


def _discover_part(section: Section, part: DiscoverPart) -> None:
    from masterkey.discover.plots import path_figure

    tag = f"-{part.prefix}" if part.prefix else ""
    size = ""
    keys = part.keys
    summary = part.summary or {}
    accuracy = summary.get("objective") == "accuracy"
    if keys is not None:
        size = f"{keys.kernel_size}x{keys.kernel_size} "
        png = F.figure_png(F.keyset_figure(keys, f"Discovered {size}keys ({keys.name})"))
        shares = (
            "Under each key: the share of the bank's filters whose best key it is. "
            if keys.provenance.get("shares")
            else ""
        )
        section.figure(f"keys{tag}", f"Discovered {size}keys", png, shares + SHARED_KEY_SCALE)
    if part.path is not None and len(part.path):
        objective = summary.get("objective")
        ylabel = "held-out top-1" if accuracy else "objective (mean cos²)" if objective else "objective"
        elbows = {int(r): int(e) for r, e in (summary.get("elbows") or {}).items()}
        chosen = len(keys) if keys is not None else None
        fig = path_figure(part.path, part.baselines, elbows, f"Greedy path {size}".strip(), ylabel, chosen, accuracy)
        section.figure(
            f"path{tag}",
            f"Greedy path {size}".strip(),
            F.figure_png(fig),
            "Objective of the remaining key set after each removal (read right to left: keys are removed one by "
            "one); x: each round's elbow; circle: the chosen number of keys; markers: baselines (k-means, PCA, "
            "random ...) at their key counts, error bars: 95% CI over seeds where given.",
        )
    if part.baselines is not None and len(part.baselines):
        # percent already (the reader converts older runs' fractions)
        baselines = part.baselines.drop(columns="objective_unit", errors="ignore")  # said by the column names
        baselines = percent_columns(baselines, False, ("objective", "ci95")) if accuracy else baselines
        digits = percent_digits(baselines)
        section.table(f"Baselines {size}".strip(), baselines, digits=digits, collapsed=len(baselines) > 12)
    if part.universality is not None and len(part.universality):
        pivot = part.universality.pivot_table(
            index="keys_from", columns="fitted_to", values="objective", aggfunc="mean"
        )
        png = F.figure_png(
            F.matrix_heatmap(
                pivot.to_numpy(),
                [str(x) for x in pivot.index],
                [str(x) for x in pivot.columns],
                "Universality: keys discovered on some sources, fitted to another",
                "fitted to",
                "keys from",
                "objective",
            )
        )
        section.figure(f"universality{tag}", f"Universality {size}".strip(), png)
        section.table(f"Universality {size}".strip(), part.universality)
    if part.candidates is not None:
        cand = part.candidates
        png = F.figure_png(F.key_grid(cand.keys, cand.key_labels(), f"All {len(cand)} candidates", colored=False))
        caption = "Label: the autoencoder latent z each candidate was decoded from. " + KEY_SCALE
        section.figure(f"candidates{tag}", f"Candidates {size}".strip(), png, caption)
    scalars = _scalars(part.summary)
    if scalars is not None:
        section.table(f"Summary {size}".strip(), scalars, collapsed=len(scalars) > 12)


def discover_section(disc: DiscoverRun, index: int, options: ReportOptions) -> Section:
    run = disc.run
    parts = list(disc.parts.values())
    sizes = [f"{p.keys.kernel_size}x{p.keys.kernel_size}" for p in parts if p.keys is not None]
    n_keys = sorted({len(p.keys) for p in parts if p.keys is not None})
    extra = f"{'/'.join(map(str, n_keys))} keys {', '.join(sizes)}" if sizes else ""
    section = new_section(run, index, extra)
    for part in parts:
        _discover_part(section, part)
    return section


# ---------------------------------------------------------------------- swap
def swap_section(swap: SwapRun, index: int, options: ReportOptions) -> Section:
    run = swap.run
    model = run.config.get("model") or run.config.get("weights") or ""
    section = new_section(run, index, str(model))
    table = swap.summary if swap.summary is not None and len(swap.summary) else swap.results
    if table is not None and len(table):
        png = F.figure_png(F.swap_bars(table))
        section.figure(
            "accuracy",
            "Accuracy after the swap",
            png,
            "Every depthwise filter replaced by a·key + b of its best key; 'recalibrated': normalisation "
            "statistics re-estimated after the swap; error bars: 95% CI over key-set seeds where given.",
        )
    if swap.summary is not None and len(swap.summary):
        summary = percent_columns(swap.summary, False)
        section.table("Summary (seeded key sets pooled: mean and 95% CI)", summary, digits=percent_digits(summary))
    if swap.results is not None and len(swap.results):
        results = percent_columns(swap.results, False)
        section.table("Results per key set", results, digits=percent_digits(results), collapsed=len(results) > 12)
    if swap.per_stage is not None and len(swap.per_stage):
        section.table("Per stage", swap.per_stage)
    if swap.sensitivity is not None and len(swap.sensitivity):
        png = F.figure_png(F.sensitivity_bars(swap.sensitivity))
        section.figure("sensitivity", "Sensitivity", png)
        sensitivity = percent_columns(swap.sensitivity, False)
        section.table("Sensitivity", sensitivity, digits=percent_digits(sensitivity), collapsed=len(sensitivity) > 12)
    return section


# ---------------------------------------------------------------------- train / experiment
def train_section(train: TrainRun, index: int, options: ReportOptions) -> Section:
    run = train.run
    summary = train.summary or {}
    mode = summary.get("mode") or run.config.get("mode") or ""
    section = new_section(run, index, " ".join(str(x) for x in (run.config.get("model") or "", mode) if x))
    if train.metrics is not None and len(train.metrics):
        label = str(mode or run.name)
        steps = {label: [train.steps]} if train.steps is not None else None
        png = F.figure_png(F.training_curves({label: [train.metrics]}, steps))
        section.figure("curves", "Training curves", png)
        cols = [
            c
            for c in (
                "epoch",
                "step",
                "lr",
                "train_loss",
                "train_acc",
                "test_loss",
                "test_top1",
                "test_top5",
                "seconds",
            )
            if c in train.metrics
        ]
        metrics = percent_columns(train.metrics[cols], False)
        section.table("Metrics per epoch", metrics, digits=percent_digits(metrics), collapsed=len(metrics) > 12)
    _learned_keys(section, {str(mode or run.name): [train]})
    scalars = _scalars(summary)
    if scalars is not None:
        section.table("Summary", scalars, collapsed=len(scalars) > 12)
    return section


def _key_labels(runs: Sequence[TrainRun]) -> list[str] | None:
    from masterkey.keys import load_keys

    name = next((r.summary.get("keys") for r in runs if r.summary and r.summary.get("keys")), None)
    try:
        return load_keys(str(name)).key_labels() if name else None
    except MasterkeyError:
        return None


def _layer_matrix(runs: Sequence[TrainRun], value: Any) -> tuple[list[str], np.ndarray] | None:
    """Layers x columns of ``value(layer entry) -> list`` from the ``depthwise_layers`` of each run's summary,
    averaged over the runs (seeds)."""
    stacks: list[np.ndarray] = []
    names: list[str] = []
    for train in runs:
        layers = (train.summary or {}).get("depthwise_layers") or []
        rows = [value(entry) for entry in layers]
        if rows and all(r is not None for r in rows):
            stacks.append(np.array([[math.nan if v is None else v for v in r] for r in rows], dtype=float))
            names = [str(entry["layer"]) for entry in layers]
    if not stacks or len({s.shape for s in stacks}) != 1:
        return None
    if len(stacks) == 1:
        return names, stacks[0]
    with warnings.catch_warnings():  # keys no channel of a layer holds are NaN in every run: NaN stays
        warnings.simplefilter("ignore", RuntimeWarning)
        return names, np.nanmean(np.stack(stacks), axis=0)


def _learned_keys(section: Section, runs: dict[str, list[TrainRun]]) -> None:
    """What span and scale-space arms learned: mean |alpha| per layer and key (which keys each layer uses); the σ
    trajectories per epoch and the final σ per layer and key."""
    trajectories = {
        arm: [
            t.metrics for t in trains if t.metrics is not None and any(str(c).startswith("dw_sigma") for c in t.metrics)
        ]
        for arm, trains in runs.items()
    }
    trajectories = {arm: tables for arm, tables in trajectories.items() if tables}
    if trajectories:
        labels = _key_labels([t for arm in trajectories for t in runs[arm]])
        section.figure(
            "sigma",
            "Learned scale-space parameters per epoch",
            F.figure_png(F.sigma_trajectories(trajectories, labels)),
            "Scale-space arms: σx, σy (and γ of the centre-surround key) of each key after every epoch, averaged "
            "over the layers (or channels) holding the key, then over seeds. Epoch 1 is after one epoch of training; "
            "training starts from the key set's scale-space models (for scalespace8: the fit of paper8).",
        )
    for arm, trains in runs.items():
        alpha = _layer_matrix(trains, lambda e: e.get("mean_abs_alpha"))
        if alpha is not None:
            names, matrix = alpha
            columns = [str(i + 1) for i in range(matrix.shape[1])]
            png = F.figure_png(F.layer_heatmap(matrix, names, columns, f"{arm}: mean |alpha| per layer and key", "key"))
            section.figure(
                f"alpha-{arm}",
                f"Mixing weights of {arm}",
                png,
                "Span mode: mean over the layer's channels of |alpha[c, j]| (kernel = Σ_j alpha[c, j] key_j + b), "
                f"averaged over {len(trains)} run(s). A one-hot start puts each channel's weight on its assigned key.",
            )
        sigma = _layer_matrix(trains, lambda e: _interleave(e.get("sigma_x"), e.get("sigma_y")))
        if sigma is not None:
            names, matrix = sigma
            columns = [f"{i // 2 + 1}{'xy'[i % 2]}" for i in range(matrix.shape[1])]
            png = F.figure_png(
                F.layer_heatmap(matrix, names, columns, f"{arm}: final σ per layer and key", "key, axis")
            )
            section.figure(
                f"sigma-layers-{arm}",
                f"Final σ of {arm} per layer",
                png,
                "σx and σy of each key (columns 1x, 1y, 2x ...) at the end of training, per layer (rows), averaged "
                "over seeds (and over channels with --sigma-scope channel); empty: no channel of the layer holds the "
                "key.",
            )


def _interleave(xs: list[Any] | None, ys: list[Any] | None) -> list[Any] | None:
    if xs is None or ys is None:
        return None
    return [v for pair in zip(xs, ys, strict=True) for v in pair]


def _efficiency(section: Section, exp: ExperimentRun) -> None:
    """The data-efficiency figure and table of a sweep (from ``efficiency.csv``, else from ``summary.csv``)."""
    from masterkey.train.summary import efficiency_table, summarize_sweep

    table = exp.efficiency
    if table is None and exp.table is not None and "train_size" in exp.table:
        needed = {"train_mode", "keys", "seed"}
        if needed <= set(exp.table.columns):
            reference = REFERENCE if REFERENCE in set(exp.table["mode"]) else None
            table = efficiency_table(summarize_sweep(exp.table, reference))
    if table is None or not len(table):
        return
    reference = REFERENCE if REFERENCE in set(table["arm"]) else None
    if "delta_n" not in table:
        table = table.assign(delta_top1=math.nan, delta_ci95=math.nan, delta_n=0)
    section.figure(
        "efficiency",
        "Data efficiency: accuracy vs training-set size",
        F.figure_png(F.efficiency_curves(table, reference)),
        "Test top-1 per arm at each training-set size (class-balanced nested subsets, the same for every arm and "
        "seed), mean ± 95% CI over seeds; right: the paired difference to the reference arm at the same size.",
    )
    section.table(
        "Data efficiency (test top-1 %, mean ± 95% CI half-width over seeds)",
        percent_columns(table, False, ("ci95", "delta_ci95")),
        digits=2,
    )


def _arm_of(train: TrainRun) -> str:
    """The experiment arm of a sub-run: its directory is ``runs/<arm>-s<seed>``; else the run's mode."""
    found = re.fullmatch(r"(.+)-s\d+", train.run.name)
    if found:
        return found.group(1)
    return str((train.summary or {}).get("mode") or train.run.config.get("mode") or train.run.name)


def experiment_section(exp: ExperimentRun, index: int, options: ReportOptions) -> Section:
    run = exp.run
    section = new_section(run, index, str(run.config.get("model") or ""))
    table = exp.table
    if table is not None and len(table):
        from masterkey.stats import mean_ci95

        rows = []
        labels = table["mode"].astype(str)
        if "train_size" in table:  # a sweep: one bar per arm and size
            labels = labels + "-n" + table["train_size"].astype(int).astype(str)
        for mode, group in table.groupby(labels, sort=False):
            mean, ci = mean_ci95(group["test_top1"].dropna().tolist())
            rows.append({"mode": mode, "n": int(group["test_top1"].notna().sum()), "test_top1": mean, "ci95": ci})
        per_mode = pd.DataFrame(rows)
        png = F.figure_png(
            F.mean_bars(
                per_mode,
                "test_top1",
                "ci95",
                "mode",
                "Final test top-1 per mode (mean ± 95% CI over seeds)",
                "test top-1 (%)",
            )
        )
        section.figure("top1", "Final accuracy per mode", png)
        section.table(
            "Per mode (mean ± 95% CI half-width over seeds)", percent_columns(per_mode, False, ("ci95",)), digits=2
        )
        section.table("Per run", percent_columns(table, False), digits=2, collapsed=len(table) > 12)
    _efficiency(section, exp)
    by_arm: dict[str, list[TrainRun]] = {}
    for train in exp.runs:
        by_arm.setdefault(_arm_of(train), []).append(train)
    _learned_keys(section, by_arm)
    curves: dict[str, list[pd.DataFrame]] = {}
    for train in exp.runs:
        if train.metrics is not None and len(train.metrics):
            curves.setdefault(_arm_of(train), []).append(train.metrics)
    if curves:
        png = F.figure_png(
            F.training_curves(curves, title="Training curves per mode (line: mean over seeds; band: min–max)")
        )
        section.figure("curves", "Training curves", png)
    if exp.summary_md and table is None:
        section.text(exp.summary_md, preformatted=True)
    return section


# ---------------------------------------------------------------------- explain
EXPLAIN_FIGURES = {
    "scalespace": (
        "Keys and their scale-space models",
        "Top: the keys; bottom: the fitted discrete scale-space models (cosine below each).",
    ),
    "eigenpatches": (
        "Eigen-patches of natural images",
        "Principal components of Gaussian-windowed patches, with their share of the variance.",
    ),
    "eigen_vs_keys": (
        "Keys and their closest eigen-patches",
        "For each key, the eigen-patch with the largest |cos| (centred vectors).",
    ),
    "cos_matrix": ("|cos| between keys and eigen-patches", ""),
    "reconstruction": (
        "Patch-by-patch reconstruction",
        "Each non-overlapping patch fitted by least squares with the basis plus a constant.",
    ),
}


def explain_section(exp: ExplainRun, index: int, options: ReportOptions) -> Section:
    run = exp.run
    section = new_section(run, index, str(run.config.get("keys") or ""))
    if exp.scalespace is not None:
        cols = [
            c for c in ("key_number", "label", "family", "sigma_x", "sigma_y", "gamma", "cosine") if c in exp.scalespace
        ]
        section.table("Scale-space models (least-squares fits)", exp.scalespace[cols])
    if exp.eigenpatches is not None:
        table = exp.eigenpatches.drop(columns="key_index", errors="ignore")  # people read key_number
        if "component_variance" in table:
            table["component_variance"] = 100 * table["component_variance"]
            table = table.rename(columns={"component_variance": "variance of that eigen-patch %"})
        section.table(
            "Closest eigen-patch per key (|cos| of centred vectors)",
            table,
            digits={"abs_cos": 3, "variance of that eigen-patch %": 2},
        )
    if exp.reconstruction is not None:
        from masterkey.explain.eigenpatches import summarize_reconstruction

        section.table(
            "Reconstruction (mean over images; random: mean ± 95% CI over seeds)",
            summarize_reconstruction(exp.reconstruction),
        )
    known = {p.stem: p for p in exp.figures}
    ordered = [known.pop(name) for name in EXPLAIN_FIGURES if name in known] + sorted(known.values())
    for path in ordered:
        title, caption = EXPLAIN_FIGURES.get(path.stem, (path.stem.replace("_", " "), ""))
        section.figure(path.stem, title, path.read_bytes(), caption)
    if exp.summary_md and exp.scalespace is None:
        section.text(exp.summary_md, preformatted=True)
    return section


_BUILDERS = {
    FitRun: fit_section,
    DiscoverRun: discover_section,
    SwapRun: swap_section,
    TrainRun: train_section,
    ExperimentRun: experiment_section,
    ExplainRun: explain_section,
}


def build_section(loaded: LoadedRun, index: int, options: ReportOptions | None = None) -> Section:
    """The report section of one loaded run (see :func:`masterkey.report.runs.load_run`)."""
    options = options or ReportOptions()
    section = _BUILDERS[type(loaded)](loaded, index, options)  # type: ignore[operator]
    section.notes = list(dict.fromkeys(loaded.run.notes))
    return section


#: Rough cost of a section by kind: the heaviest are started first when sections are drawn side by side.
_COST = {FitRun: 8, DiscoverRun: 3, ExperimentRun: 2}


def build_sections(runs: Sequence[LoadedRun], options: ReportOptions | None = None) -> list[Section]:
    """The sections of ``runs``, in their order. With ``options.jobs`` > 1 they are drawn in that many forked
    processes (where the platform forks), the costliest kinds first; the sections are the same either way."""
    options = options or ReportOptions()
    jobs = min(options.jobs, len(runs))
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [build_section(run, i + 1, options) for i, run in enumerate(runs)]
    order = sorted(range(len(runs)), key=lambda i: _COST.get(type(runs[i]), 1), reverse=True)
    context = multiprocessing.get_context("fork")  # the children inherit the imports (seconds of start-up each)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_one_thread) as pool:
        futures = {i: pool.submit(build_section, runs[i], i + 1, options) for i in order}
        return [futures[i].result() for i in range(len(runs))]


def _one_thread() -> None:
    """Each drawing process computes on one thread: the processes already share the cores."""
    torch.set_num_threads(1)
