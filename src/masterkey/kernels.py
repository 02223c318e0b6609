"""Discrete scale-space kernels (Lindeberg): the discrete Gaussian and small difference operators applied to it.

The discrete analogue of the Gaussian kernel is ``T(n; σ) = e^{-σ²} I_n(σ²)`` (``I_n`` the modified Bessel function
of integer order, computed exponentially scaled by :func:`scipy.special.ive`); it sums to 1 over the integers and is
the kernel of the semi-discrete diffusion equation ``∂T/∂(σ²) = ½ δ_nn T``. Two-dimensional kernels are separable:
``T(x, y) = T(x; σx) T(y; σy)``. The model families are listed in :data:`FAMILIES` (see
:mod:`masterkey.scalespace` for fitting them to keys). This module is a basic one: it imports nothing of
the package but errors, so that :mod:`masterkey.keys` can build the ``scalespace8`` built-in from it.
:func:`discrete_gaussian_torch` and :func:`scalespace_kernel_torch` are the same kernels as differentiable torch
functions of σ and γ (for training with learnable scales, :mod:`masterkey.nn.scalespace`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import ive

from masterkey.errors import MasterkeyError

if TYPE_CHECKING:
    import torch

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
    x_op, y_op = _difference_operators(family)
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


# ---------------------------------------------------------------------- differentiable (torch) versions
#: Nodes of the trapezoidal rule that :func:`discrete_gaussian_torch` integrates with. The rule on the full circle
#: gives ``Σ_j T(n + j N; σ)`` exactly (the aliased sum), so the error is below ``2 T(N - n; σ)``: about 1e-60 at
#: σ = 4 and n = 3, and still far below float64 rounding for σ up to ~20.
QUADRATURE_NODES = 128


def discrete_gaussian_torch(sigma: torch.Tensor, radius: int, nodes: int = QUADRATURE_NODES) -> torch.Tensor:
    """``T(n; σ)`` for ``n = -radius .. radius`` as a differentiable function of ``σ`` (any shape ``S``; result
    ``S + [2 radius + 1]``, in ``sigma``'s dtype; use float64 for 1e-15 agreement with :func:`discrete_gaussian`).

    torch has no integer-order Bessel ``I_n``, so the integral representation
    ``T(n; t) = (1/π) ∫_0^π e^{t (cos θ - 1)} cos(n θ) dθ`` (``t = σ²``) is evaluated by the trapezoidal rule on
    ``nodes`` equispaced points of the circle, which is spectrally exact for this periodic integrand (see
    :data:`QUADRATURE_NODES`). The exponent is never positive, so nothing overflows.
    """
    import torch

    if radius < 0:
        raise MasterkeyError(f"scale-space: radius must be >= 0, got {radius}")
    theta = torch.arange(nodes, dtype=sigma.dtype, device=sigma.device) * (2 * math.pi / nodes)
    n = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    weights = torch.exp(sigma[..., None].square() * (torch.cos(theta) - 1))  # S + [nodes]
    cosines = torch.cos(n[:, None] * theta[None, :]) / nodes  # [2r+1, nodes]
    return (weights[..., None, :] * cosines).sum(dim=-1)


def scalespace_kernel_torch(
    family: str, sigma_x: torch.Tensor, sigma_y: torch.Tensor, gamma: torch.Tensor | None = None, size: int = 7
) -> torch.Tensor:
    """:func:`scalespace_kernel` for a batch: ``sigma_x`` / ``sigma_y`` (and ``gamma`` for ``gaussian-laplacian``)
    of shape ``[B]`` give ``[B, size, size]`` raw model kernels, differentiable in every parameter."""
    if family not in FAMILIES:
        raise MasterkeyError(f"scale-space family '{family}' is unknown; choose one of {', '.join(FAMILIES)}")
    radius = kernel_radius(size)
    tx = discrete_gaussian_torch(sigma_x, radius + 1)  # [B, size + 2]
    ty = discrete_gaussian_torch(sigma_y, radius + 1)

    def outer(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return rows[:, :, None] * cols[:, None, :]

    def inner(v: torch.Tensor) -> torch.Tensor:
        return v[:, 1:-1]

    def second(v: torch.Tensor) -> torch.Tensor:
        return v[:, 2:] - 2 * v[:, 1:-1] + v[:, :-2]

    laplacian = outer(inner(ty), second(tx)) + outer(second(ty), inner(tx))
    if family == "laplacian":
        return laplacian
    if family == "gaussian-laplacian":
        if gamma is None:
            raise MasterkeyError("scale-space family 'gaussian-laplacian' needs gamma")
        return outer(inner(ty), inner(tx)) - gamma[:, None, None] * laplacian
    operators = {
        "": inner,
        "+": lambda v: v[:, 2:] - v[:, 1:-1],
        "-": lambda v: v[:, 1:-1] - v[:, :-2],
        "c": lambda v: (v[:, 2:] - v[:, :-2]) / 2,
    }
    x_op, y_op = _difference_operators(family)
    return outer(operators[y_op](ty), operators[x_op](tx))


def _difference_operators(family: str) -> tuple[str, str]:
    """The difference operators along x and y of a separable family: "" (none), "+" (forward), "-" (backward) or
    "c" (central); ``dx`` / ``dy`` alone mean central."""
    if family == "gaussian":
        return "", ""
    if family[:2] == "dx":
        return family[2:] or "c", ""
    return "", family[2:] or "c"
