"""Eigen-patches of natural images and patch-by-patch reconstruction from keys (docs/design.md, pipeline step 7).

The authors' argument (OpenReview discussion, after Romeny's *Front-End Vision*, p. 204): the principal components
of Gaussian-windowed k x k patches of natural images ("eigen-patches") look like Gaussian derivatives, and so like the
master keys; and keys used as a basis reconstruct images patch by patch. This module measures both:

* :func:`eigen_patches` — PCA (scikit-learn) of Gaussian-windowed patches of grayscale images;
* :func:`compare_with_keys` — for every key the eigen-patch of largest |cos| (centred vectors, as in affine fits),
  and :func:`random_reference` — the same figure for random key sets of equal size;
* :func:`reconstruct` / :func:`reconstruction_table` — tile an image into k x k patches, fit each patch by least
  squares with the keys plus a constant (DC) as the basis, and compare the explained within-patch variance with
  random key sets of the same size and with the optimal (PCA) basis of that size.

Images come from :func:`load_gray_images`: the natural images that ship with scikit-image and scikit-learn
(offline), or any folder of images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view

from masterkey.data.decode import IMAGE_SUFFIXES, check_regular_file, is_image_name, open_rgb
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet, load_keys
from masterkey.normalize import unit_rows_array
from masterkey.progress import progress_bar
from masterkey.stats import mean_ci95

#: Natural images shipped with scikit-image (``skimage.data``) and scikit-learn (``load_sample_images``).
BUILTIN_IMAGES: tuple[str, ...] = ("camera", "astronaut", "coffee", "chelsea", "rocket", "china", "flower")


# ---------------------------------------------------------------------- images
def _to_gray(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    array = array.astype(np.float64) / scale
    if array.ndim == 3:
        if array.shape[2] == 4:
            array = array[..., :3]
        if array.shape[2] == 3:
            array = array @ np.array([0.2125, 0.7154, 0.0721])  # ITU-R 709 luma, as skimage.color.rgb2gray
        elif array.shape[2] == 1:
            array = array[..., 0]
    if array.ndim != 2:
        raise MasterkeyError(f"expected a grayscale or RGB image, got shape {np.shape(image)}")
    return array


#: Images of ``skimage.data`` that ship inside the scikit-image wheel (no download).
SKIMAGE_IMAGES: tuple[str, ...] = (
    "camera", "astronaut", "coffee", "chelsea", "rocket", "grass", "gravel", "brick", "moon", "coins", "text",
    "page", "clock", "hubble_deep_field", "immunohistochemistry", "retina",
)  # fmt: skip


def builtin_image(name: str) -> np.ndarray:
    """A built-in natural image as grayscale float64 in [0, 1]: :data:`SKIMAGE_IMAGES` or scikit-learn's
    ``china`` / ``flower``."""
    if name in ("china", "flower"):
        from importlib.util import find_spec

        # The file itself: sklearn's load_sample_image decodes every sample image to return one, and importing
        # sklearn.datasets takes seconds.
        spec = find_spec("sklearn")
        if spec is None or spec.origin is None:
            raise MasterkeyError(f"image '{name}': scikit-learn is not installed")
        return _read_image(Path(spec.origin).parent / "datasets" / "images" / f"{name}.jpg")
    if name not in SKIMAGE_IMAGES:
        known = ", ".join((*SKIMAGE_IMAGES, "china", "flower"))
        raise MasterkeyError(f"image '{name}': not a built-in image (built-ins: {known}; or give an image folder)")
    try:
        import skimage.data
    except ImportError:
        raise MasterkeyError(
            f"image '{name}': scikit-image is not installed (pip install scikit-image), or use 'china' / 'flower' / "
            "an image folder"
        ) from None
    return _to_gray(getattr(skimage.data, name)())


def load_gray_images(source: str | Path | Sequence[str] | None = None, max_images: int = 64) -> dict[str, np.ndarray]:
    """Grayscale float64 images in [0, 1], by name.

    ``source``: None or ``"builtin"`` (:data:`BUILTIN_IMAGES`), a comma-separated string or list of built-in names,
    one image file, or a folder (searched recursively; at most ``max_images`` files, evenly spaced over the sorted
    list).
    """
    if source is None or source == "builtin":
        names: Sequence[str] = BUILTIN_IMAGES
    elif isinstance(source, (str, Path)) and Path(source).is_dir():
        return _folder_images(Path(source), max_images)
    elif isinstance(source, (str, Path)) and Path(source).exists():
        return {Path(source).name: _read_image(Path(source))}
    elif isinstance(source, str):
        names = [n.strip() for n in source.split(",") if n.strip()]
        if len(names) == 1 and ("/" in names[0] or Path(names[0]).suffix):
            raise MasterkeyError(f"images '{source}': no such image file or folder")
    else:
        names = list(source)
    if not names:
        raise MasterkeyError("images: no image names given")
    return {name: builtin_image(name) for name in names}


def _read_image(path: Path) -> np.ndarray:
    """One image file as grayscale (decoded by :func:`masterkey.data.decode.open_rgb`: regular files only, PIL's
    decompression-bomb limit as a clean error)."""
    return _to_gray(np.asarray(open_rgb(path)))


def _folder_images(root: Path, max_images: int) -> dict[str, np.ndarray]:
    files = sorted(p for p in root.rglob("*") if is_image_name(p) and not p.is_dir())
    for f in files:
        check_regular_file(f)
    if not files:
        raise MasterkeyError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if len(files) > max_images:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_images).round().astype(int)]
    return {path.relative_to(root).as_posix(): _read_image(path) for path in files}


# ---------------------------------------------------------------------- patches and PCA
def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """``exp(-(x² + y²) / (2σ²))`` on a centred ``size x size`` grid, summing to 1."""
    d = np.arange(size) - (size - 1) / 2
    window = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma))
    return window / window.sum()


def extract_patches(image: np.ndarray, size: int, stride: int = 1) -> np.ndarray:
    """All ``size x size`` patches of a 2-D image at ``stride``, as ``[N, size, size]`` (a copy)."""
    if image.ndim != 2:
        raise MasterkeyError(f"patches: expected a 2-D grayscale image, got shape {image.shape}")
    if min(image.shape) < size:
        raise MasterkeyError(f"patches: image {image.shape} is smaller than the {size}x{size} patch")
    windows = sliding_window_view(image, (size, size))[::stride, ::stride]
    return windows.reshape(-1, size, size).copy()


@dataclass
class EigenPatches:
    """Principal components of windowed patches: ``components`` [n, k, k] (unit norm, largest-|value| entry
    positive), ``explained_variance_ratio`` [n], and how they were made."""

    components: np.ndarray
    explained_variance_ratio: np.ndarray
    patch_size: int
    window_sigma: float
    n_patches: int
    images: list[str]

    def __len__(self) -> int:
        return int(self.components.shape[0])

    def as_keyset(self, name: str = "eigenpatches") -> KeySet:
        """The eigen-patches as a key set (centred and unit-normed, like any key set)."""
        labels = tuple(f"PC{i + 1}" for i in range(len(self)))
        provenance = {
            "source": "eigenpatches",
            "window_sigma": self.window_sigma,
            "n_patches": self.n_patches,
            "images": self.images,
        }
        return KeySet(name, torch.from_numpy(self.components.copy()), provenance, labels)


def eigen_patches(
    images: dict[str, np.ndarray],
    patch_size: int = 7,
    n_components: int = 16,
    window_sigma: float = 1.0,
    stride: int = 2,
    max_patches: int = 200_000,
    seed: int = 0,
) -> EigenPatches:
    """PCA of Gaussian-windowed ``patch_size`` patches of ``images`` (at most ``max_patches``, drawn uniformly).

    Each patch is multiplied by :func:`gaussian_window` (σ = ``window_sigma`` pixels, 1.0 as in the authors'
    listing); the data set mean is removed by the PCA.
    """
    from sklearn.decomposition import PCA

    if not images:
        raise MasterkeyError("eigen-patches: no images")
    d = patch_size * patch_size
    if not 1 <= n_components <= d:
        raise MasterkeyError(f"eigen-patches: n_components must be in 1..{d} for {patch_size}x{patch_size}")
    window = gaussian_window(patch_size, window_sigma)
    rng = np.random.default_rng(seed)
    per_image = [extract_patches(img, patch_size, stride) for img in images.values()]
    total = sum(len(p) for p in per_image)
    if total > max_patches:
        per_image = [
            p[rng.choice(len(p), max(1, round(len(p) * max_patches / total)), replace=False)] for p in per_image
        ]
    patches = np.concatenate(per_image) * window
    if len(patches) <= n_components:
        raise MasterkeyError(f"eigen-patches: {len(patches)} patches are too few for {n_components} components")
    pca = PCA(n_components=n_components, svd_solver="full").fit(patches.reshape(len(patches), d))
    components = pca.components_.copy()
    peak = components[np.arange(len(components)), np.abs(components).argmax(axis=1)]
    components *= np.where(peak < 0, -1.0, 1.0)[:, None]
    return EigenPatches(
        components.reshape(-1, patch_size, patch_size),
        pca.explained_variance_ratio_.copy(),
        patch_size,
        window_sigma,
        len(patches),
        list(images),
    )


# ---------------------------------------------------------------------- comparison with keys
def abs_cos_matrix(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """|cos| between the centred rows of ``a`` [n, ...] and of ``b`` [m, ...] → [n, m] (constant rows give 0)."""

    def unit(x: np.ndarray | torch.Tensor) -> np.ndarray:
        x = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)
        return unit_rows_array(x, zero_below=1e-12)

    return np.abs(unit(a) @ unit(b).T)


def compare_with_keys(eigen: EigenPatches, keys: KeySet) -> pd.DataFrame:
    """One row per key: ``key`` (1-based), ``label``, ``best_component`` (1-based), ``abs_cos``,
    ``component_variance`` (explained-variance ratio of that eigen-patch)."""
    if keys.kernel_size != eigen.patch_size:
        raise MasterkeyError(
            f"keys '{keys.name}' are {keys.kernel_size}x{keys.kernel_size} but the eigen-patches are "
            f"{eigen.patch_size}x{eigen.patch_size}"
        )
    cos = abs_cos_matrix(keys.keys, eigen.components)
    best = cos.argmax(axis=1)
    return pd.DataFrame(
        {
            "key": np.arange(1, len(keys) + 1),
            "label": keys.key_labels(),
            "best_component": best + 1,
            "abs_cos": cos[np.arange(len(keys)), best],
            "component_variance": eigen.explained_variance_ratio[best],
        }
    )


def random_reference(eigen: EigenPatches, n_keys: int, seeds: Sequence[int] = range(10)) -> pd.DataFrame:
    """Per seed, the mean over ``n_keys`` random keys of each key's best |cos| with the eigen-patches."""
    rows = []
    for seed in seeds:
        keys = load_keys(f"random:{n_keys}:{seed}", kernel_size=eigen.patch_size)
        table = compare_with_keys(eigen, keys)
        rows.append({"seed": seed, "mean_best_abs_cos": float(table["abs_cos"].mean())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- reconstruction
def _tiles(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    rows, cols = image.shape[0] // size, image.shape[1] // size
    if rows == 0 or cols == 0:
        raise MasterkeyError(f"reconstruction: image {image.shape} is smaller than the {size}x{size} patch")
    cropped = image[: rows * size, : cols * size]
    tiles = cropped.reshape(rows, size, cols, size).transpose(0, 2, 1, 3).reshape(rows * cols, size * size)
    return tiles, (rows, cols)


def reconstruct(image: np.ndarray, basis: np.ndarray | torch.Tensor | KeySet, dc: bool = True) -> np.ndarray:
    """Approximate ``image`` patch by patch: non-overlapping k x k tiles, each fitted by least squares with the
    ``basis`` filters [K, k, k] (plus a constant when ``dc``) as the basis. The image is cropped to whole tiles."""
    if isinstance(basis, KeySet):
        basis = basis.keys
    b = basis.detach().cpu().double().numpy() if isinstance(basis, torch.Tensor) else np.asarray(basis, dtype=float)
    size = b.shape[-1]
    tiles, (rows, cols) = _tiles(image, size)
    columns = b.reshape(len(b), size * size).T
    if dc:
        columns = np.concatenate([np.ones((size * size, 1)), columns], axis=1)
    # The pseudo-inverse gives the least-squares coefficients of every tile at once (LAPACK's many-right-hand-side
    # lstsq is far slower for tens of thousands of tiles).
    approx = tiles @ (columns @ np.linalg.pinv(columns)).T
    return approx.reshape(rows, cols, size, size).transpose(0, 2, 1, 3).reshape(rows * size, cols * size)


#: An image whose within-patch deviation (RMS over its tiles, grey levels in [0, 1]) is below this is flat: a
#: quarter of one 8-bit grey level. Its within-patch variance is rounding noise, so the fraction of it that a
#: reconstruction keeps means nothing (it came out as -12.97 for a flat photograph).
FLAT_RMS = 1e-3


def within_patch_rms(image: np.ndarray, patch_size: int) -> float:
    """The RMS deviation of ``image``'s pixels from the mean of their ``patch_size`` tile."""
    tiles, _ = _tiles(image, patch_size)
    return math.sqrt(float(np.mean((tiles - tiles.mean(axis=1, keepdims=True)) ** 2)))


def flat_images(images: dict[str, np.ndarray], patch_size: int) -> list[str]:
    """The names of the images with no variation within ``patch_size`` tiles (see :data:`FLAT_RMS`)."""
    return [name for name, image in images.items() if within_patch_rms(image, patch_size) < FLAT_RMS]


def reconstruction_scores(image: np.ndarray, approx: np.ndarray, patch_size: int) -> dict[str, float]:
    """``rmse`` and ``psnr`` (dB, peak 1) of ``approx`` against ``image`` (cropped alike), and ``explained``: the
    fraction of the within-patch variance (energy of each tile minus its mean) the reconstruction keeps; NaN for a
    flat image (:data:`FLAT_RMS`), where it is undefined."""
    crop = image[: approx.shape[0], : approx.shape[1]]
    err = crop - approx
    mse = float(np.mean(err**2))
    tiles, _ = _tiles(crop, patch_size)
    within = float(np.sum((tiles - tiles.mean(axis=1, keepdims=True)) ** 2))
    flat = within < FLAT_RMS**2 * tiles.size
    return {
        "rmse": math.sqrt(mse),
        "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else math.inf,
        "explained": math.nan if flat else 1.0 - float(np.sum(err**2)) / within,
    }


def pca_basis(image: np.ndarray, size: int, n: int) -> np.ndarray:
    """The ``n`` leading principal directions of the mean-removed tiles of ``image``: the best ``n``-dimensional
    linear basis (with DC) for reconstructing exactly those tiles, an upper bound for any ``n`` keys."""
    tiles, _ = _tiles(image, size)
    centred = tiles - tiles.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:n].reshape(n, size, size)


def reconstruction_table(
    images: dict[str, np.ndarray], keys: KeySet, seeds: Sequence[int] = range(5), progress: bool = False
) -> pd.DataFrame:
    """Per image: scores of reconstructions from ``keys``, from random key sets of the same size (one row per
    seed) and from the image's own PCA basis of that size. Columns: image, basis, kind (keys / random / pca),
    seed, n_basis, rmse, psnr, explained. ``progress``: a bar per image."""
    rows = []
    size, n = keys.kernel_size, len(keys)
    desc = f"reconstruct from {keys.name}, random, PCA"
    for name, image in progress_bar(images.items(), total=len(images), desc=desc, unit="image", enabled=progress):
        bases: list[tuple[str, str, int | None, np.ndarray | torch.Tensor]] = [("keys", keys.name, None, keys.keys)]
        bases += [("random", f"random:{n}:{s}", s, load_keys(f"random:{n}:{s}", kernel_size=size).keys) for s in seeds]
        bases.append(("pca", f"pca:{n}", None, pca_basis(image, size, n)))
        for kind, basis_name, seed, basis in bases:
            scores = reconstruction_scores(image, reconstruct(image, basis), size)
            rows.append({"image": name, "basis": basis_name, "kind": kind, "seed": seed, "n_basis": n, **scores})
    return pd.DataFrame(rows)


def summarize_reconstruction(table: pd.DataFrame) -> pd.DataFrame:
    """Mean explained within-patch variance and PSNR per basis kind over images; random bases as mean ± 95% CI
    over seeds (each seed averaged over images first)."""
    rows = []
    for kind, group in table.groupby("kind", sort=False):
        per_seed = group.groupby(group["seed"].fillna(-1))[["explained", "psnr"]].mean()
        explained, explained_ci = mean_ci95(per_seed["explained"].tolist())
        psnr, psnr_ci = mean_ci95(per_seed["psnr"].tolist())
        rows.append(
            {
                "kind": kind,
                "basis": group["basis"].iloc[0] if kind != "random" else f"random:{group['n_basis'].iloc[0]} (seeds)",
                "n_seeds": len(per_seed) if kind == "random" else 1,
                "explained": explained,
                "explained_ci95": explained_ci,
                "psnr": psnr,
                "psnr_ci95": psnr_ci,
            }
        )
    return pd.DataFrame(rows)
