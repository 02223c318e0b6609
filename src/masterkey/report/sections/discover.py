"""The section of a discover run: discovered keys, the greedy path, baselines, universality, candidates."""

from __future__ import annotations

from typing import Any

from masterkey.plots.filters import key_grid, keyset_figure
from masterkey.plots.heatmaps import matrix_heatmap
from masterkey.plots.style import figure_png
from masterkey.report.html import Section
from masterkey.report.runs import DiscoverPart, DiscoverRun
from masterkey.report.sections.common import ReportOptions, new_section, percent_columns, percent_digits, scalar_table

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
        png = figure_png(keyset_figure(keys, f"Discovered {size}keys ({keys.name})"))
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
            figure_png(fig),
            "Objective of the remaining key set after each removal (read right to left: keys are removed one by "
            "one); x: each round's elbow; circle: the chosen number of keys; markers: baselines (k-means, PCA, "
            "random ...) at their key counts, error bars: 95% CI over seeds where given.",
        )
    if part.baselines is not None and len(part.baselines):
        baselines = percent_columns(part.baselines, True, ("objective", "ci95")) if accuracy else part.baselines
        digits = percent_digits(baselines)
        section.table(f"Baselines {size}".strip(), baselines, digits=digits, collapsed=len(baselines) > 12)
    if part.universality is not None and len(part.universality):
        pivot = part.universality.pivot_table(
            index="keys_from", columns="fitted_to", values="objective", aggfunc="mean"
        )
        png = figure_png(
            matrix_heatmap(
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
        png = figure_png(key_grid(cand.keys, cand.key_labels(), f"All {len(cand)} candidates", colored=False))
        caption = "Label: the autoencoder latent z each candidate was decoded from. " + KEY_SCALE
        section.figure(f"candidates{tag}", f"Candidates {size}".strip(), png, caption)
    scalars = scalar_table(part.summary)
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
