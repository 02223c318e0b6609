"""The section of an explain run: scale-space models, eigen-patches, reconstruction, and the run's own figures."""

from __future__ import annotations

from masterkey.report.html import Section
from masterkey.report.runs import ExplainRun
from masterkey.report.sections.common import ReportOptions, new_section

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
        cols = [c for c in ("key", "label", "family", "sigma_x", "sigma_y", "gamma", "cosine") if c in exp.scalespace]
        section.table("Scale-space models (least-squares fits)", exp.scalespace[cols])
    if exp.eigenpatches is not None:
        table = exp.eigenpatches.copy()
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
