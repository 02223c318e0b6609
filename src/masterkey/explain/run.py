"""Explain a key set: scale-space models of its keys, eigen-patches of natural images, and patch-by-patch
reconstruction — tables, figures and an "explain" run directory that ``masterkey report`` renders.

    from masterkey.explain.run import explain_keys, write_explain_run
    explanation = explain_keys("paper8")
    write_explain_run(explanation, "runs/explain-paper8", config={"keys": "paper8"})
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from masterkey.errors import MasterkeyError
from masterkey.explain.eigenpatches import (
    EigenPatches,
    abs_cos_matrix,
    compare_with_keys,
    eigen_patches,
    flat_images,
    load_gray_images,
    pca_basis,
    random_reference,
    reconstruct,
    reconstruction_scores,
    reconstruction_table,
    summarize_reconstruction,
)
from masterkey.explain.scalespace import BOUND_NOTE, fit_keyset, scalespace_keyset
from masterkey.files import atomic_directory, write_json, write_text
from masterkey.jsonio import dumps
from masterkey.keys import KeySet, load_keys
from masterkey.plots.filters import filter_grid, image_panels, key_grid
from masterkey.plots.heatmaps import matrix_heatmap
from masterkey.plots.style import figure_png, key_colors
from masterkey.progress import progress_bar
from masterkey.runformats import write_table
from masterkey.runs import write_run_info
from masterkey.stats import mean_ci95
from masterkey.tables import markdown_table


@dataclass
class Explanation:
    """Everything ``explain`` measures for one key set."""

    keys: KeySet
    scalespace: pd.DataFrame  # fit_keyset table
    models: KeySet  # the fitted scale-space kernels
    eigen: EigenPatches
    eigen_table: pd.DataFrame  # compare_with_keys
    random_eigen: pd.DataFrame  # random_reference
    reconstruction: pd.DataFrame  # reconstruction_table (keys, random, pca, scale-space models)
    images: dict[str, np.ndarray]
    flat_images: list[str] = field(default_factory=list)  # left out: no variation within a patch

    def summary(self) -> dict[str, Any]:
        """Headline numbers (JSON-serialisable)."""
        random_mean, random_ci = mean_ci95(self.random_eigen["mean_best_abs_cos"].tolist())
        recon = summarize_reconstruction(self.reconstruction)
        return {
            "keys": self.keys.name,
            "n_keys": len(self.keys),
            "kernel_size": self.keys.kernel_size,
            "scalespace_mean_cosine": float(self.scalespace["cosine"].mean()),
            "scalespace_min_cosine": float(self.scalespace["cosine"].min()),
            "eigen_mean_best_abs_cos": float(self.eigen_table["abs_cos"].mean()),
            "random_mean_best_abs_cos": random_mean,
            "random_mean_best_abs_cos_ci95": random_ci,
            "n_patches": self.eigen.n_patches,
            "window_sigma": self.eigen.window_sigma,
            "images": list(self.images),
            "flat_images_left_out": self.flat_images,
            "reconstruction": recon.to_dict(orient="records"),
            "reconstruction_degenerate": degenerate_reconstruction(self.keys) is not None,
            "scalespace_at_bound": int((self.scalespace["at_bound"] != "").sum()),
        }


def degenerate_reconstruction(keys: KeySet) -> str | None:
    """Why the patch-by-patch reconstruction cannot tell key sets apart for ``keys``, or None when it can: K keys
    plus a constant span all k*k patch values once K + 1 >= k*k, so every basis of that size (keys, random, PCA)
    reconstructs every patch exactly, up to rounding."""
    k = keys.kernel_size
    if len(keys) + 1 < k * k:
        return None
    return (
        f"degenerate: any {len(keys)} independent keys + a constant span all {k * k} values of a {k}x{k} patch, so "
        "the keys, random keys and the PCA basis all reconstruct every patch exactly (explained 1.000, PSNR "
        "limited only by rounding); the reconstruction does not tell key sets apart here"
    )


def explain_keys(
    keys: str | KeySet = "paper8",
    images: str | Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    n_components: int = 16,
    window_sigma: float = 1.0,
    stride: int = 2,
    max_patches: int = 200_000,
    max_images: int = 64,
    seeds: Sequence[int] = range(10),
    seed: int = 0,
    progress: bool = False,
) -> Explanation:
    """Fit scale-space models to ``keys``, compute eigen-patches of ``images`` (default: the built-in natural
    images) at the keys' size, compare both with the keys, and reconstruct every image patch by patch from the keys,
    from their scale-space models, from random key sets (``seeds``) and from the optimal PCA basis. ``progress``:
    a bar for each stage."""
    keyset = load_keys(keys)
    scalespace = fit_keyset(keyset, families, progress=progress)
    models = scalespace_keyset(scalespace, keyset.kernel_size, name=f"scalespace({keyset.name})")
    gray = load_gray_images(images, max_images=max_images)
    flat = flat_images(gray, keyset.kernel_size)
    if len(flat) == len(gray):
        raise MasterkeyError(
            f"images: {_image_list(flat)} {'is' if len(flat) == 1 else 'are'} flat (no variation within "
            f"{keyset.kernel_size}x{keyset.kernel_size} patches): eigen-patches and reconstructions would be "
            "rounding noise; give images with texture"
        )
    if flat:
        logging.getLogger("masterkey").warning(
            "explain: left out %s: flat (no variation within %dx%d patches), nothing to explain",
            _image_list(flat),
            keyset.kernel_size,
            keyset.kernel_size,
        )
        gray = {name: image for name, image in gray.items() if name not in flat}
    with progress_bar(total=1, desc=f"eigen-patches of {len(gray)} images", unit="PCA", enabled=progress) as bar:
        eigen = eigen_patches(gray, keyset.kernel_size, n_components, window_sigma, stride, max_patches, seed)
        bar.update()
    recon = reconstruction_table(gray, keyset, seeds, progress=progress)
    model_rows = []
    desc = f"reconstruct from {models.name}"
    for name, image in progress_bar(gray.items(), total=len(gray), desc=desc, unit="image", enabled=progress):
        scores = reconstruction_scores(image, reconstruct(image, models), keyset.kernel_size)
        model_rows.append(
            {"image": name, "basis": models.name, "kind": "scalespace", "seed": None, "n_basis": len(models), **scores}
        )
    recon = pd.concat([recon, pd.DataFrame(model_rows)], ignore_index=True)
    recon["seed"] = recon["seed"].astype("Int64")
    return Explanation(
        keyset,
        scalespace,
        models,
        eigen,
        compare_with_keys(eigen, keyset),
        random_reference(eigen, len(keyset), seeds),
        recon,
        gray,
        flat,
    )


# ---------------------------------------------------------------------- figures
def _aligned(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``other`` with the sign that correlates it positively with ``reference`` (centred)."""
    a = reference.reshape(-1) - reference.mean()
    b = other.reshape(-1) - other.mean()
    return other if float(a @ b) >= 0 else -other


def explain_figures(expl: Explanation, crop: int = 192) -> dict[str, Any]:
    """Figures by file stem: scalespace, eigenpatches, eigen_vs_keys, cos_matrix, reconstruction."""
    keys = expl.keys.keys.double().numpy()
    labels = expl.keys.key_labels()
    colors = key_colors(len(keys))
    figs: dict[str, Any] = {}

    models = expl.models.keys.double().numpy()
    captions = [
        f"{r.family}\nσ {r.sigma_x:.2f}, {r.sigma_y:.2f}"
        + (f", γ {r.gamma:.2f}" if not math.isnan(r.gamma) else "")
        + f"\ncos {r.cosine:.3f}"
        + (f"\nat bound: {r.at_bound}" if r.at_bound else "")
        for r in expl.scalespace.itertuples()
    ]
    figs["scalespace"] = filter_grid(
        [("key", keys, None), ("scale-space model", models, captions)],
        f"{expl.keys.name}: keys (top) and least-squares scale-space models (bottom)",
        labels,
        colors,
        cell=1.15,
    )

    eigen = expl.eigen
    figs["eigenpatches"] = key_grid(
        eigen.components,
        [f"PC{i + 1}" for i in range(len(eigen))],
        f"Eigen-patches: PCA of {eigen.n_patches:,} Gaussian-windowed (σ={eigen.window_sigma:g}) "
        f"{eigen.patch_size}x{eigen.patch_size} patches of {len(expl.images)} images",
        [f"{100 * v:.2f}% var" for v in eigen.explained_variance_ratio],
        colored=False,
    )

    best = expl.eigen_table["best_component"].to_numpy() - 1
    closest = [_aligned(keys[i], eigen.components[b]) for i, b in enumerate(best)]
    captions = [f"PC{b + 1}, |cos| {c:.2f}" for b, c in zip(best, expl.eigen_table["abs_cos"], strict=True)]
    figs["eigen_vs_keys"] = filter_grid(
        [("key", keys, None), ("closest eigen-patch", closest, captions)],
        f"{expl.keys.name}: each key and the eigen-patch of largest |cos|",
        labels,
        colors,
        cell=1.1,
    )

    matrix = abs_cos_matrix(keys, eigen.components)
    random_best = expl.summary()["random_mean_best_abs_cos"]
    figs["cos_matrix"] = matrix_heatmap(
        matrix,
        labels,
        [f"PC{i + 1}" for i in range(len(eigen))],
        f"|cos| between the keys and the eigen-patches (random keys: best |cos| {random_best:.2f} on average)",
        "eigen-patch (by explained variance)",
        "key",
        "|cos| (centred)",
        0.0,
        1.0,
        colors,
    )

    name, image = next(iter(expl.images.items()))
    size = expl.keys.kernel_size
    h, w = image.shape
    side = min(crop, h, w) // size * size
    y0, x0 = ((h - side) // 2) // size * size, ((w - side) // 2) // size * size
    window = image[y0 : y0 + side, x0 : x0 + side]
    n = len(expl.keys)
    bases = {
        f"{expl.keys.name} ({n} keys + DC)": expl.keys,
        f"scale-space models ({n} + DC)": expl.models,
        f"random:{n}:0 ({n} + DC)": load_keys(f"random:{n}:0", kernel_size=size),
        f"PCA of this image ({n} + DC)": pca_basis(image, size, n),
    }
    panels = {f"{name} ({side}x{side} crop)": window}
    for title, basis in bases.items():
        approx = reconstruct(window, basis)
        scores = reconstruction_scores(window, approx, size)
        panels[f"{title}\nexplains {100 * scores['explained']:.0f}% · PSNR {scores['psnr']:.1f} dB"] = approx
    figs["reconstruction"] = image_panels(
        panels, f"Patch-by-patch reconstruction ({size}x{size} tiles, least squares per tile)", columns=3
    )
    return figs


# ---------------------------------------------------------------------- run directory
def _image_list(names: Sequence[str], limit: int = 8) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return f"{len(names)} images ({', '.join(names[:3])}, …)"


def _markdown(expl: Explanation, command: str | None) -> str:
    s = expl.summary()
    recon = summarize_reconstruction(expl.reconstruction)
    scalespace = expl.scalespace[["key", "label", "family", "sigma_x", "sigma_y", "gamma", "cosine", "at_bound"]]
    bound = [BOUND_NOTE + ".", ""] if s["scalespace_at_bound"] else []
    degenerate = degenerate_reconstruction(expl.keys)
    lines = [
        f"# Explain {expl.keys.name} ({len(expl.keys)} keys, {expl.keys.kernel_size}x{expl.keys.kernel_size})",
        "",
        "## Scale-space models",
        "",
        "Least-squares fits of discrete scale-space kernels T(n; σ) = e^{-σ²} I_n(σ²) and their differences "
        f"(mean cosine {s['scalespace_mean_cosine']:.3f}, lowest {s['scalespace_min_cosine']:.3f}).",
        "",
        markdown_table(scalespace, {"sigma_x": 3, "sigma_y": 3, "gamma": 3, "cosine": 4}),
        "",
        *bound,
        "## Eigen-patches",
        "",
        f"PCA of {expl.eigen.n_patches:,} Gaussian-windowed (σ = {expl.eigen.window_sigma:g}) patches of "
        f"{_image_list(list(expl.images))}. Mean best |cos| of a key with an eigen-patch: "
        f"{s['eigen_mean_best_abs_cos']:.3f} "
        f"(random key sets of equal size: {s['random_mean_best_abs_cos']:.3f} ± "
        f"{s['random_mean_best_abs_cos_ci95']:.3f}, 95% CI over {len(expl.random_eigen)} seeds).",
        "",
        markdown_table(expl.eigen_table, {"abs_cos": 3, "component_variance": 4}),
        "",
        "## Patch-by-patch reconstruction",
        "",
        "Non-overlapping tiles, each fitted by least squares with the basis plus a constant; `explained` is the "
        "fraction of the within-tile variance kept (mean over images; random: mean ± 95% CI over seeds).",
        "",
        markdown_table(recon, {"explained": 3, "explained_ci95": 3, "psnr": 2, "psnr_ci95": 2}),
        "",
        *([f"**{degenerate[0].upper()}{degenerate[1:]}.**", ""] if degenerate else []),
    ]
    if command:
        lines += ["Made with:", "", "```", command, "```", ""]
    return "\n".join(lines)


def write_explain_run(
    expl: Explanation,
    out: str | Path,
    config: dict[str, Any] | None = None,
    overwrite: bool = False,
    command: str | None = None,
    progress: bool = False,
) -> Path:
    """An "explain" run directory: scalespace.csv, eigenpatches.csv, reconstruction.csv, keys.safetensors,
    scalespace_keys.safetensors, eigenpatches.json, figures (*.png), summary.json, summary.md and run.json.
    ``command`` (the command line that made it) is quoted in summary.md. ``progress``: a bar per figure drawn."""
    config = dict(config or {})
    figures = explain_figures(expl)
    drawing = progress_bar(figures.items(), total=len(figures), desc="draw figures", unit="figure", enabled=progress)
    figs = {name: figure_png(fig) for name, fig in drawing}
    out = Path(out)
    with atomic_directory(out, "explain", overwrite=overwrite) as tmp:
        write_table(tmp, "explain", "scalespace.csv", expl.scalespace)
        write_table(tmp, "explain", "eigenpatches.csv", expl.eigen_table)
        write_table(tmp, "explain", "reconstruction.csv", expl.reconstruction)
        write_table(tmp, "explain", "eigenpatches_random.csv", expl.random_eigen)
        expl.keys.save(tmp / "keys.safetensors")
        expl.models.save(tmp / "scalespace_keys.safetensors")
        eigen = expl.eigen
        write_text(
            tmp / "eigenpatches.json",
            dumps(
                {
                    "patch_size": eigen.patch_size,
                    "window_sigma": eigen.window_sigma,
                    "n_patches": eigen.n_patches,
                    "images": eigen.images,
                    "explained_variance_ratio": eigen.explained_variance_ratio.tolist(),
                    "components": eigen.components.tolist(),
                },
                indent=None,
            ),
        )
        for name, png in figs.items():
            (tmp / f"{name}.png").write_bytes(png)
        write_json(tmp / "summary.json", expl.summary())
        write_text(tmp / "summary.md", _markdown(expl, command))
        write_run_info(tmp, "explain", config)
    return out
