"""Discrete scale-space kernels (Lindeberg): the discrete Gaussian and small difference operators applied to it.

The discrete analogue of the Gaussian kernel is ``T(n; σ) = e^{-σ²} I_n(σ²)`` (``I_n`` the modified Bessel function
of integer order, computed exponentially scaled by :func:`scipy.special.ive`); it sums to 1 over the integers and is
the kernel of the semi-discrete diffusion equation ``∂T/∂(σ²) = ½ δ_nn T``. Two-dimensional kernels are separable:
``T(x, y) = T(x; σx) T(y; σy)``. The model families are listed in :data:`FAMILIES` (see
:mod:`masterkey.explain.scalespace` for fitting them to keys). This module is a basic one: it imports nothing of
the package but errors, so that :mod:`masterkey.keys` can build the ``scalespace8`` built-in from it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ive

from masterkey.errors import MasterkeyError

#: Families with a description; ``gaussian-laplacian`` also has γ.
FAMILIES: dict[str, str] = {
    "gaussian": "discrete Gaussian T",
    "dx": "centred x-difference of T (first-order derivative)",
    "dy": "centred y-difference of T (first-order derivative)",
    "dx+": "forward x-difference T(x+1) - T(x)",
    "dx-": "backward x-difference T(x) - T(x-1)",
    "dy+": "forward y-difference T(y+1) - T(y)",
    "dy-": "backward y-difference T(y) - T(y-1)",
    "laplacian": "five-point Laplacian of T",
    "gaussian-laplacian": "T - γ ∇²T",
}


def discrete_gaussian(sigma: float, radius: int) -> np.ndarray:
    """``T(n; σ) = e^{-σ²} I_n(σ²)`` for ``n = -radius .. radius`` (float64). ``σ = 0`` gives the unit impulse."""
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise MasterkeyError(f"scale-space: σ must be finite and >= 0, got {sigma}")
    if radius < 0:
        raise MasterkeyError(f"scale-space: radius must be >= 0, got {radius}")
    n = np.arange(-radius, radius + 1)
    return ive(n, sigma * sigma)


def forward_difference(values: np.ndarray) -> np.ndarray:
    """``f(n+1) - f(n)`` of a 1-D array over ``n = -r .. r``, returned over ``n = -(r-1) .. r-1``."""
    return values[2:] - values[1:-1]


def backward_difference(values: np.ndarray) -> np.ndarray:
    """``f(n) - f(n-1)`` of a 1-D array over ``n = -r .. r``, returned over ``n = -(r-1) .. r-1``."""
    return values[1:-1] - values[:-2]


def central_difference(values: np.ndarray) -> np.ndarray:
    """``(f(n+1) - f(n-1)) / 2`` of a 1-D array over ``n = -r .. r``, returned over ``n = -(r-1) .. r-1``."""
    return (values[2:] - values[:-2]) / 2


def second_difference(values: np.ndarray) -> np.ndarray:
    """``f(n+1) - 2 f(n) + f(n-1)`` of a 1-D array over ``n = -r .. r``, returned over ``n = -(r-1) .. r-1``."""
    return values[2:] - 2 * values[1:-1] + values[:-2]


def gaussian_kernel_2d(sigma_x: float, sigma_y: float, size: int) -> np.ndarray:
    """The separable kernel ``T(y; σy) T(x; σx)`` on a ``size x size`` grid (rows = y, columns = x)."""
    radius = kernel_radius(size)
    return np.outer(discrete_gaussian(sigma_y, radius), discrete_gaussian(sigma_x, radius))


def laplacian_kernel(sigma_x: float, sigma_y: float, size: int) -> np.ndarray:
    """Five-point discrete Laplacian of the separable kernel: ``δxx T ⊗ T + T ⊗ δyy T`` (exact, no wrap-around)."""
    radius = kernel_radius(size)
    tx, ty = discrete_gaussian(sigma_x, radius + 1), discrete_gaussian(sigma_y, radius + 1)
    return np.outer(ty[1:-1], second_difference(tx)) + np.outer(second_difference(ty), tx[1:-1])


def scalespace_kernel(
    family: str, sigma_x: float, sigma_y: float | None = None, gamma: float = 0.0, size: int = 7
) -> np.ndarray:
    """The raw (not normalised) model kernel of ``family`` at scales (σx, σy) on a ``size x size`` grid.

    ``sigma_y`` defaults to ``sigma_x``; ``gamma`` is used by ``gaussian-laplacian`` only.
    """
    if family not in FAMILIES:
        raise MasterkeyError(f"scale-space family '{family}' is unknown; choose one of {', '.join(FAMILIES)}")
    sigma_y = sigma_x if sigma_y is None else sigma_y
    radius = kernel_radius(size)
    if family == "laplacian":
        return laplacian_kernel(sigma_x, sigma_y, size)
    if family == "gaussian-laplacian":
        return gaussian_kernel_2d(sigma_x, sigma_y, size) - gamma * laplacian_kernel(sigma_x, sigma_y, size)
    tx, ty = discrete_gaussian(sigma_x, radius + 1), discrete_gaussian(sigma_y, radius + 1)
    operators = {"": lambda v: v[1:-1], "+": forward_difference, "-": backward_difference, "c": central_difference}
    if family == "gaussian":
        x_op, y_op = "", ""
    elif family[:2] == "dx":
        x_op, y_op = (family[2:] or "c"), ""
    else:
        x_op, y_op = "", (family[2:] or "c")
    return np.outer(operators[y_op](ty), operators[x_op](tx))


def kernel_radius(size: int) -> int:
    if size < 3 or size % 2 == 0:
        raise MasterkeyError(f"scale-space kernels need an odd size >= 3, got {size}")
    return size // 2


#: Parameters of the ``scalespace8`` built-in, obtained once offline by ``fit_keyset(load_keys("paper8"))``
#: (7x7 keys; least squares as in :func:`fit_scalespace`) and rounded to 4 decimals; ``tests/test_scalespace.py``
#: refits ``paper8`` and checks these values. Columns: label, family, σx, σy, γ (NaN: none), sign, cosine.
PAPER8_SCALESPACE: tuple[tuple[str, str, float, float, float, int, float], ...] = (
    ("1 shift-down", "dy-", 0.4166, 0.6097, math.nan, -1, 0.8479),
    ("2 shift-right", "dx-", 0.5194, 0.4922, math.nan, -1, 0.9458),
    ("3 shift-up", "dy+", 0.5485, 0.6546, math.nan, 1, 0.9162),
    ("4 shift-left", "dx+", 0.7386, 0.3412, math.nan, 1, 0.9077),
    ("5 d/dx", "dx", 1.0972, 0.9151, math.nan, 1, 0.9461),
    ("6 d/dy", "dy", 0.8847, 0.8360, math.nan, -1, 0.9549),
    ("7 centre-surround", "gaussian-laplacian", 0.6309, 0.5511, 0.7572, 1, 0.9989),
    ("8 gaussian", "gaussian", 0.6272, 0.6200, math.nan, 1, 0.9972),
)


def scalespace8_kernels(size: int = 7) -> tuple[np.ndarray, tuple[str, ...]]:
    """The raw ``scalespace8`` model kernels ``[8, size, size]`` (sign-aligned with ``paper8``) and their labels."""
    kernels = [
        sign * scalespace_kernel(family, sx, sy, 0.0 if math.isnan(gamma) else gamma, size)
        for _, family, sx, sy, gamma, sign, _ in PAPER8_SCALESPACE
    ]
    return np.stack(kernels), tuple(row[0] for row in PAPER8_SCALESPACE)
