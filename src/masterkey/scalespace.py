"""Scale-space models of keys (Lindeberg, Babaiee & Kiasari, JMIV 2026): fitted to key filters by least squares,
stored with a key set, and generated as keys. The one home of the concept: explain reports the fits, the
``scalespace`` training mode (:mod:`masterkey.nn.scalespace`) starts from them.

The discrete analogue of the Gaussian kernel is ``T(n; σ) = e^{-σ²} I_n(σ²)`` (``I_n`` the modified Bessel function
of integer order, computed exponentially scaled by :func:`scipy.special.ive`); it sums to 1 over the integers and is
the kernel of the semi-discrete diffusion equation ``∂T/∂(σ²) = ½ δ_nn T``. Two-dimensional kernels are separable:
``T(x, y) = T(x; σx) T(y; σy)``. Model families apply small difference operators to it:

================== ==============================================================================================
family             kernel (x = column, increasing to the right; y = row, increasing downwards as in key files)
================== ==============================================================================================
gaussian           ``T``
dx, dy             centred difference ``(T(n+1) - T(n-1)) / 2`` along x or y (first-order Gaussian derivatives)
dx+, dy+           forward difference ``T(n+1) - T(n)`` (a one-pixel-shifted difference: peak before the centre)
dx-, dy-           backward difference ``T(n) - T(n-1)`` (peak after the centre)
laplacian          five-point Laplacian ``∇²T = δxx T + δyy T``
gaussian-laplacian ``T - γ ∇²T`` (a sharp centre with a negative surround for γ > 0)
================== ==============================================================================================

The ``paper8`` keys map to families through their labels (key 1 "shift-down" = dy-, 2 "shift-right" = dx-,
3 "shift-up" = dy+, 4 "shift-left" = dx+, 5 = dx, 6 = dy, 7 = gaussian-laplacian, 8 = gaussian). A fit chooses
(σx, σy) and γ by least squares: for a centred unit key k̂ and a centred unit model m̂ the best affine fit
``a m̂ + b`` leaves residual² = 1 - cos²(k̂, m̂), so least squares maximises |cos|; the sign of ``a`` is free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import least_squares

from masterkey.errors import MasterkeyError
from masterkey.kernels import FAMILIES, PAPER8_SCALESPACE, kernel_radius, scalespace_kernel
from masterkey.keys import KeySet
from masterkey.progress import progress_bar

#: Upper bound of σ in fits; a 7x7 window cannot tell larger scales apart.
SIGMA_MAX = 4.0
#: Bound of |γ| in fits.
GAMMA_MAX = 20.0

_LABEL_FAMILIES: tuple[tuple[str, str], ...] = (
    ("shift-down", "dy-"),
    ("shift-right", "dx-"),
    ("shift-up", "dy+"),
    ("shift-left", "dx+"),
    ("d/dx", "dx"),
    ("d/dy", "dy"),
    ("centre-surround", "gaussian-laplacian"),
    ("center-surround", "gaussian-laplacian"),
    ("laplacian", "laplacian"),
    ("gaussian", "gaussian"),
)


def _unit(values: np.ndarray) -> np.ndarray | None:
    # One model kernel, not rows: a near-copy of normalize.unit_rows_array kept because its 1-D norm (a dot product)
    # need not equal the row-wise sum of squares bit for bit, and explain's scale-space fits must not change.
    flat = values.reshape(-1) - values.mean()
    norm = float(np.linalg.norm(flat))
    return flat / norm if norm > 1e-300 else None


# ---------------------------------------------------------------------- fits
@dataclass(frozen=True)
class ScaleSpaceFit:
    """A fitted model: family, scales, γ (NaN for families without it), the sign that aligns the model with the
    key, the |cosine| of the centred key and model, and the model kernel (centred, unit-norm, sign-aligned)."""

    family: str
    sigma_x: float
    sigma_y: float
    gamma: float
    sign: int
    cosine: float
    model: np.ndarray


def family_for_label(label: str) -> str | None:
    """The model family a key label names (``"1 shift-down"`` → ``"dy-"``), or None."""
    text = label.lower()
    for word, family in _LABEL_FAMILIES:
        if word in text:
            return family
    return None


def _as_array(key: np.ndarray | torch.Tensor) -> np.ndarray:
    array = key.detach().cpu().double().numpy() if isinstance(key, torch.Tensor) else np.asarray(key, dtype=float)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise MasterkeyError(f"scale-space fit: expected a square k x k key, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise MasterkeyError("scale-space fit: the key holds NaN or Inf values")
    return array


def _params(family: str, p: np.ndarray) -> tuple[float, float, float]:
    gamma = float(p[2]) if family == "gaussian-laplacian" else math.nan
    return float(p[0]), float(p[1]), gamma


def _fit_family(target: np.ndarray, family: str, size: int) -> ScaleSpaceFit:
    with_gamma = family == "gaussian-laplacian"

    def model(p: np.ndarray) -> np.ndarray:
        sx, sy, gamma = _params(family, p)
        unit = _unit(scalespace_kernel(family, sx, sy, 0.0 if math.isnan(gamma) else gamma, size))
        return np.zeros_like(target) if unit is None else unit

    def residual(p: np.ndarray) -> np.ndarray:
        m = model(p)
        return target - (target @ m) * m

    # Least squares from the best few points of a coarse grid: the cosine has local optima in σ (a blob can be
    # matched by a tiny or by a wide kernel), so a single start is not enough.
    grid_sigma = (0.2, 0.4, 0.7, 1.0, 1.5, 2.2)
    grid_gamma = (-1.0, 0.3, 1.0, 3.0) if with_gamma else (0.0,)
    starts = [
        np.array([sx, sy, g][: 3 if with_gamma else 2]) for sx in grid_sigma for sy in grid_sigma for g in grid_gamma
    ]
    scored = sorted(starts, key=lambda p: -abs(target @ model(p)))
    lower = [0.0, 0.0] + ([-GAMMA_MAX] if with_gamma else [])
    upper = [SIGMA_MAX, SIGMA_MAX] + ([GAMMA_MAX] if with_gamma else [])
    best: tuple[float, np.ndarray] | None = None
    for start in scored[:3]:
        result = least_squares(residual, start, bounds=(lower, upper), x_scale=1.0, xtol=1e-12, ftol=1e-12, gtol=1e-12)
        cos = abs(float(target @ model(result.x)))
        if best is None or cos > best[0] + 1e-12:
            best = (cos, result.x)
    assert best is not None
    cos, p = best
    m = model(p)
    sign = 1 if float(target @ m) >= 0 else -1
    sx, sy, gamma = _params(family, p)
    return ScaleSpaceFit(family, sx, sy, gamma, sign, cos, (sign * m).reshape(size, size))


def fit_scalespace(key: np.ndarray | torch.Tensor, family: str = "auto") -> ScaleSpaceFit:
    """Least-squares fit of a scale-space model of ``family`` (or the best of all families, ``"auto"``) to ``key``.

    Maximises the |cosine| between the centred key and the centred model over σx, σy ∈ [0, SIGMA_MAX] (and
    γ ∈ [-GAMMA_MAX, GAMMA_MAX]); the sign is free and reported in ``ScaleSpaceFit.sign``.
    """
    array = _as_array(key)
    size = array.shape[0]
    kernel_radius(size)
    target = _unit(array)
    if target is None:
        raise MasterkeyError("scale-space fit: the key is constant (nothing is left after centring)")
    if family == "auto":
        fits = [_fit_family(target, name, size) for name in FAMILIES]
        # Among near-equal fits prefer the earlier (simpler) family: a Gaussian before T - γ∇²T.
        best = max(fits, key=lambda f: f.cosine)
        return next(f for f in fits if f.cosine >= best.cosine - 1e-4)
    if family not in FAMILIES:
        raise MasterkeyError(f"scale-space family '{family}' is unknown; choose 'auto' or one of {', '.join(FAMILIES)}")
    return _fit_family(target, family, size)


SCALESPACE_COLUMNS = ("key", "label", "family", "sigma_x", "sigma_y", "gamma", "sign", "cosine", "at_bound")
#: What the ``at_bound`` column means, for the places that print it.
BOUND_NOTE = (
    f"at_bound: a parameter at the edge of its search range (σ in [0, {SIGMA_MAX:g}], |γ| <= {GAMMA_MAX:g}); the fit "
    "did not settle inside it (σ = 0: a single pixel; σ at its maximum: wider than the window can tell apart)"
)


def at_bound(sigma_x: float, sigma_y: float, gamma: float, tol: float = 0.01) -> str:
    """The fitted parameters within ``tol`` (a fraction of the range) of a bound of their search range, e.g.
    ``"σx=max, σy=0"`` ('' if none)."""
    marks = []
    for name, value in (("σx", sigma_x), ("σy", sigma_y)):
        if value <= tol * SIGMA_MAX:
            marks.append(f"{name}=0")
        elif value >= SIGMA_MAX * (1 - tol):
            marks.append(f"{name}=max")
    if not math.isnan(gamma) and abs(gamma) >= GAMMA_MAX * (1 - tol):
        marks.append("|γ|=max")
    return ", ".join(marks)


def fit_keyset(keyset: KeySet, families: Sequence[str] | None = None, progress: bool = False) -> pd.DataFrame:
    """One row per key: ``key`` (1-based), ``label``, ``family``, ``sigma_x``, ``sigma_y``, ``gamma``, ``sign``,
    ``cosine``, ``at_bound`` (:func:`at_bound`; :data:`BOUND_NOTE`). ``families`` defaults to the family each
    label names (:func:`family_for_label`), else ``auto``. ``progress``: a bar per key fitted."""
    labels = keyset.key_labels()
    if families is None:
        families = [family_for_label(label) or "auto" for label in labels]
    if len(families) != len(keyset):
        raise MasterkeyError(f"scale-space fit: {len(families)} families for {len(keyset)} keys of '{keyset.name}'")
    rows = []
    fits = progress_bar(
        zip(keyset.keys, labels, families, strict=True),
        total=len(keyset),
        desc=f"scale-space fits of {keyset.name}",
        unit="key",
        enabled=progress,
    )
    for i, (key, label, family) in enumerate(fits):
        fit = fit_scalespace(key, family)
        rows.append(
            {
                "key": i + 1,
                "label": label,
                "family": fit.family,
                "sigma_x": fit.sigma_x,
                "sigma_y": fit.sigma_y,
                "gamma": fit.gamma,
                "sign": fit.sign,
                "cosine": fit.cosine,
                "at_bound": at_bound(fit.sigma_x, fit.sigma_y, fit.gamma),
            }
        )
    return pd.DataFrame(rows, columns=list(SCALESPACE_COLUMNS))


@dataclass(frozen=True)
class ScaleSpaceKey:
    """The generative model of one key: a scale-space ``family`` (:data:`masterkey.kernels.FAMILIES`), its scales,
    γ (``gaussian-laplacian`` only; else 0) and the sign that aligns the model with the key."""

    family: str
    sigma_x: float
    sigma_y: float
    gamma: float = 0.0
    sign: int = 1


def models_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[ScaleSpaceKey]:
    """Models from parameter rows (``family``, ``sigma_x``, ``sigma_y``, optional ``gamma`` (NaN: none) and
    ``sign``), as a fit table or a key set's provenance holds them."""
    out = []
    for row in rows:
        gamma = row.get("gamma")
        gamma = 0.0 if gamma is None or (isinstance(gamma, float) and math.isnan(gamma)) else float(gamma)
        sign = int(row.get("sign", 1))
        out.append(ScaleSpaceKey(str(row["family"]), float(row["sigma_x"]), float(row["sigma_y"]), gamma, sign))
    return out


def stored_models(keyset: KeySet) -> list[ScaleSpaceKey] | None:
    """The scale-space models a key set carries (``scalespace8`` and key sets made from fitted models), or None."""
    rows = keyset.provenance.get("parameters") if keyset.provenance.get("source") == "scalespace" else None
    if not rows:
        return None
    if len(rows) != len(keyset):
        raise MasterkeyError(f"key set '{keyset.name}': {len(rows)} scale-space models for {len(keyset)} keys")
    return models_from_rows(rows)


def model_kernels(models: Sequence[ScaleSpaceKey], size: int) -> np.ndarray:
    """The models generated at ``size`` x ``size``, signed [G, size, size] (float64; a :class:`KeySet` normalises)."""
    return np.stack([m.sign * scalespace_kernel(m.family, m.sigma_x, m.sigma_y, m.gamma, size) for m in models])


def model_keyset(models: Sequence[ScaleSpaceKey], base: KeySet, size: int) -> KeySet:
    """The models generated at ``size`` x ``size`` (centred, unit-norm) as a key set named after ``base``."""
    return KeySet(f"{base.name}@scalespace", torch.from_numpy(model_kernels(models, size)), labels=base.labels)


def scalespace_keyset(params: pd.DataFrame, kernel_size: int, name: str = "scalespace") -> KeySet:
    """A :class:`KeySet` of model kernels generated at ``kernel_size`` from a :func:`fit_keyset` table."""
    missing = {"family", "sigma_x", "sigma_y"} - set(params.columns)
    if missing:
        raise MasterkeyError(f"scale-space parameters: missing columns {sorted(missing)}")
    rows = params.to_dict(orient="records")
    labels = tuple(str(row.get("label", i + 1)) for i, row in enumerate(rows))
    provenance = {
        "source": "scalespace",
        "parameters": params[[c for c in SCALESPACE_COLUMNS if c in params.columns]].to_dict(orient="records"),
    }
    return KeySet(name, torch.tensor(model_kernels(models_from_rows(rows), kernel_size)), provenance, labels)


def paper8_parameters() -> pd.DataFrame:
    """The stored ``scalespace8`` parameters as a :func:`fit_keyset`-style table."""
    rows = [
        {
            "key": i + 1,
            "label": label,
            "family": family,
            "sigma_x": sx,
            "sigma_y": sy,
            "gamma": g,
            "sign": s,
            "cosine": c,
        }
        for i, (label, family, sx, sy, g, s, c) in enumerate(PAPER8_SCALESPACE)
    ]
    return pd.DataFrame(rows, columns=list(SCALESPACE_COLUMNS))


def scalespace_models(keyset: KeySet) -> list[ScaleSpaceKey]:
    """The scale-space model of every key, for training with learnable scales (the ``scalespace`` mode of
    :mod:`masterkey.nn`): the stored parameters of ``scalespace8`` (and of any key set made by
    :func:`scalespace_keyset`), else a least-squares fit of each key (:func:`fit_keyset`: the family named by its
    label, else the best one)."""
    stored = stored_models(keyset)
    if stored is not None:
        return stored
    return models_from_rows(fit_keyset(keyset).to_dict(orient="records"))
