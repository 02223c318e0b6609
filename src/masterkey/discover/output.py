"""Discover run directories (kind ``discover``, see the run-directory contracts) and their text summaries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from masterkey import jsonio
from masterkey.discover.discovery import Discovery
from masterkey.discover.plots import figure_bytes, path_figure
from masterkey.files import atomic_directory, atomic_write, write_json, write_text
from masterkey.progress import progress_bar
from masterkey.runformats import write_table
from masterkey.runs import write_run_info


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _digits(disc: Discovery) -> int:
    """Decimals of an objective value: 2 for percent (accuracy), 4 for cos²."""
    return 2 if disc.objective_unit == "percent" else 4


def _value(disc: Discovery, value: float) -> str:
    """An objective value in its unit: ``23.33 %`` or ``0.2778``."""
    return f"{value:.{_digits(disc)}f}" + (" %" if disc.objective_unit == "percent" else "")


def comparison_text(disc: Discovery, digits: int | None = None) -> str:
    """Objective vs K as a plain-text table (random: mean ± 95% CI over seeds; accuracy in percent)."""
    digits = _digits(disc) if digits is None else digits
    table = disc.comparison()
    methods = [c for c in table.columns if c not in ("n_keys", "random_ci95")]
    header = ["K", *methods]
    body = []
    for _, row in table.iterrows():
        cells = [str(int(row["n_keys"]))]
        for m in methods:
            v = row[m]
            if m == "random" and "random_ci95" in table and not pd.isna(row.get("random_ci95")):
                cells.append(f"{_fmt(float(v), digits)}±{_fmt(float(row['random_ci95']), digits)}")
            else:
                cells.append(_fmt(float(v), digits) if not pd.isna(v) else "")
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(line.rstrip() for line in lines)


def _objective_label(disc: Discovery) -> str:
    if disc.objective == "accuracy":
        return (
            "top-1 accuracy (percent) on the held-out split of training data after swapping every filter for its "
            "best fit"
        )
    weighting = "each source weighted equally" if disc.config.weighting == "source" else "each filter weighted equally"
    return f"mean explained variance (cos²) of the bank's filters under their best single-key fits ({weighting})"


def excluded_text(disc: Discovery) -> str:
    """``"none"`` or e.g. ``"65 zero, 2 constant"``: the filters of this size the bank holds but discovery left out."""
    parts = [f"{n:,} {why}" for why, n in disc.excluded.items() if n]
    return ", ".join(parts) if parts else "none"


def autoencoder_text(disc: Discovery) -> str:
    """How the autoencoder trained: steps, why it stopped, final loss, seed."""
    ae = disc.autoencoder
    why = "its candidates stopped improving" if ae.stopped_early else "the step limit"
    loss = _fmt(ae.losses[-1][1]) if ae.losses else "-"
    together = [k for k in disc.trained_with if k != disc.kernel_size]
    shared = f"; trained in one batch with {', '.join(f'{k}x{k}' for k in together)}" if together else ""
    return f"{ae.steps} steps (stopped at {why}), final loss {loss}, seed {disc.config.seed}{shared}"


def discovery_markdown(disc: Discovery, level: int = 1) -> str:
    """``summary.md`` of one kernel size."""
    h = "#" * level
    k = disc.kernel_size
    dedupe = "after removing near-duplicates" if disc.config.dedupe is not None else "no de-duplication"
    lines = [
        f"{h} Discovered keys, {k}x{k}",
        "",
        f"- protocol: {disc.config.protocol}",
        f"- filters: {disc.n_filters:,} usable from {len(disc.sources)} source(s): {', '.join(disc.sources)}",
        f"- excluded {k}x{k} filters: {excluded_text(disc)}",
        f"- objective: {_objective_label(disc)}",
        f"- K = {len(disc.keys)}: objective {_value(disc, disc.objective_at_k)} (round {disc.final_round}"
        + (", the elbow" if disc.config.stop == "elbow" else "")
        + "); "
        + "; ".join(f"elbow of round {r} at {e} key{'s' if e != 1 else ''}" for r, e in disc.elbows.items()),
        f"- candidates per round: {', '.join(str(len(c)) for c in disc.candidates)} ({dedupe})",
        f"- autoencoder: {autoencoder_text(disc)}",
    ]
    if disc.accuracy is not None:
        lines.append(f"- the model without any swap: {disc.accuracy.unswapped_objective:.2f} %")
    timing = ", ".join(f"{name[:-2]} {sec:.1f} s" for name, sec in disc.timings.items())
    lines += [f"- time: {timing}", ""]
    lines += [f"{h}# Objective vs number of keys", "", "```", comparison_text(disc), "```", ""]
    lines.append(
        f"discovered: the greedy path's set of that size ({disc.config.keep_round} round); kmeans: spherical "
        "sign-invariant k-means; "
        "pca: top principal directions; random: mean ± 95% CI over seeds; paper8: the published keys"
        + (" centre-cropped" if k < 7 else " zero-padded" if k > 7 else "")
        + "; impulse: one centred impulse."
    )
    if not disc.baselines.empty and disc.baselines["span_objective"].notna().any():
        span = disc.baselines[disc.baselines["n_keys"] == len(disc.keys)][["method", "objective", "span_objective"]]
        lines += [
            "",
            f"{h}# One key per channel vs a least-squares mix of all {len(disc.keys)} keys",
            "",
        ]
        if disc.span_is_degenerate():
            lines += [
                f"**Degenerate:** {len(disc.keys)} keys plus a constant span every {k}x{k} filter ({k * k} "
                f"weights), so a mix of any {len(disc.keys)} independent keys scores 1.0, random ones included. "
                "This table says nothing at this kernel size.",
                "",
            ]
        lines += [
            "```",
            span.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
            "```",
            "",
            "span_objective: each filter fitted by a least-squares combination of all keys (plus a constant); "
            "PCA's span is the best any K keys can do that way.",
        ]
    if disc.universality is not None:
        lines += [
            "",
            f"{h}# Universality (keys from some sources fitted to another)",
            "",
            "```",
            disc.universality.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
            "```",
            "",
            "own_objective: keys discovered on the fitted source itself (in-sample, so optimistic).",
        ]
    if disc.notes:
        lines += ["", f"{h}# Notes", "", *(f"- {n}" for n in disc.notes)]
    return "\n".join(lines) + "\n"


def write_discovery(out: Path, disc: Discovery) -> None:
    """Write one kernel size's files into the existing directory ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    disc.keys.save(out / "keys.safetensors")
    for i, cands in enumerate(disc.candidates):
        name = "candidates.safetensors" if i == 0 else f"candidates_round{i + 1}.safetensors"
        cands.keyset(
            f"candidates-round{i + 1}-{disc.kernel_size}x{disc.kernel_size}",
            {**{k: v for k, v in disc.keys.provenance.items() if k not in ("latents", "shares", "round")}},
        ).save(out / name)
    (out / "baseline_keys").mkdir(exist_ok=True)
    for method, keyset in disc.baseline_keys.items():
        keyset.save(out / "baseline_keys" / f"{method}.safetensors")
    path = disc.path_frame()
    write_table(out, "discover", "path.csv", path)
    write_table(out, "discover", "baselines.csv", disc.baselines_frame())
    if disc.universality is not None:
        write_table(out, "discover", "universality.csv", disc.universality)
    write_json(out / "summary.json", disc.summary())
    write_text(out / "summary.md", discovery_markdown(disc))
    k = disc.kernel_size
    from masterkey.plots.filters import keyset_figure
    from masterkey.plots.style import figure_png

    title = f"{len(disc.keys)} discovered {k}x{k} keys (label: latent z; caption: share of filters; ordered by share)"
    _write_png(out / "keys.png", figure_png(keyset_figure(disc.keys, title)))
    weighted = "source-weighted" if disc.config.weighting == "source" else "filter-weighted"
    ylabel = "held-out top-1 (%)" if disc.objective == "accuracy" else f"mean cos² ({weighted})"
    title = f"{k}x{k}: greedy backward elimination"
    accuracy = disc.objective == "accuracy"
    fig = path_figure(path, disc.baselines, disc.elbows, title, ylabel, chosen=len(disc.keys), percent=accuracy)
    _write_png(out / "path.png", figure_bytes(fig))


def _write_png(path: Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def run_text(discoveries: Mapping[int, Discovery]) -> str:
    """What ``masterkey discover`` prints: per kernel size, the filters used and excluded, the keys' objective and
    elbows, and the comparison table."""
    lines = []
    for k, disc in discoveries.items():
        what = "held-out top-1 (%)" if disc.objective == "accuracy" else "mean cos², sources weighted equally"
        if disc.objective != "accuracy" and disc.config.weighting == "filter":
            what = "mean cos², filters weighted equally"
        elbows = ", ".join(f"round {r}: {e}" for r, e in disc.elbows.items())
        at = " (the elbow)" if disc.config.stop == "elbow" else ""
        lines += [
            "",
            f"{k}x{k}: {disc.n_filters:,} filters from {len(disc.sources)} source(s), excluded: {excluded_text(disc)}; "
            f"objective = {what}"
            + ("" if disc.config.protocol == "masterkey" else f"; protocol {disc.config.protocol}"),
            f"K={len(disc.keys)}{at}: {_value(disc, disc.objective_at_k)} (round {disc.final_round}); "
            f"elbow at {elbows}",
        ]
        if disc.accuracy is not None:
            lines.append(f"unswapped model: {disc.accuracy.unswapped_objective:.2f} %")
        lines.append(comparison_text(disc))
    return "\n".join(lines)


def strict_summary(result: Any) -> dict[str, Any]:
    """``discover --json``: the output folder, the seconds, and each kernel size's summary (strict JSON)."""
    return jsonio.strict(
        {
            "out": str(result.out),
            "seconds": result.seconds,
            **{str(k): d.summary() for k, d in result.discoveries.items()},
        }
    )[0]


def run_markdown(discoveries: Mapping[int, Discovery], bank: str) -> str:
    """Top-level ``summary.md`` of a run covering several kernel sizes."""
    lines = [f"# Key discovery on {bank}", ""]
    for k, disc in discoveries.items():
        lines += [discovery_markdown(disc, level=2), f"(files: `k{k}/`)", ""]
    return "\n".join(lines)


def write_discover_run(
    out: str | Path,
    discoveries: Mapping[int, Discovery],
    config: dict[str, Any],
    bank: str,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a discover run directory atomically: flat for one kernel size, ``k3/``, ``k5/`` ... for several.
    ``progress``: a bar per kernel size written (figures take seconds)."""
    out = Path(out)
    bar = progress_bar(total=len(discoveries), desc=f"write {out}", unit="kernel size", enabled=progress)
    with bar, atomic_directory(out, "discover", overwrite=overwrite) as tmp:
        if len(discoveries) == 1:
            write_discovery(tmp, next(iter(discoveries.values())))
            bar.update()
        else:
            for k, disc in discoveries.items():
                write_discovery(tmp / f"k{k}", disc)
                bar.update()
            write_json(
                tmp / "summary.json",
                {
                    "bank": bank,
                    "kernel_sizes": list(discoveries),
                    "by_kernel": {str(k): d.summary() for k, d in discoveries.items()},
                },
            )
            write_text(tmp / "summary.md", run_markdown(discoveries, bank))
        write_run_info(tmp, "discover", config)
    return out
