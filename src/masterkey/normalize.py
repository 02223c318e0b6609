"""Per-filter normalisation ("center_norm", docs/design.md, step 2) and the flags that exclude unusable filters.

The one home of "centre, then divide by the L2 norm": :func:`center_norm` (torch, any float dtype, flags checked),
:func:`centring` / :func:`unit_rows` (torch float64 rows, the form every objective and fit computes in) and
:func:`unit_rows_array` (numpy float64, for torch-free callers such as :mod:`masterkey.keys`). All four compute
``(x - mean) / ||x - mean||`` with the same operations in the same order."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import numpy as np

from masterkey.errors import MasterkeyError

if TYPE_CHECKING:
    from torch import Tensor

#: A filter whose every weight has ``|w| <= ZERO_TOL`` counts as all-zero (the paper's threshold).
ZERO_TOL = 1e-4


class FilterFlag(enum.IntFlag):
    """Bit flags stored per filter in a bank's metadata."""

    NONFINITE = 1  #: holds NaN or Inf
    ZERO = 2  #: every weight has |w| <= 1e-4
    CONSTANT = 4  #: finite, not zero, but all weights equal: nothing left after centring
    STRIDED = 8  #: from a strided depthwise conv
    DILATED = 16  #: from a dilated depthwise conv
    MULTIPLIER = 32  #: from a depthwise conv with a channel multiplier (out = m * in, m > 1)


#: Flags that make a filter unusable for fitting and discovery; such filters are counted, never silently dropped.
EXCLUDED = FilterFlag.NONFINITE | FilterFlag.ZERO | FilterFlag.CONSTANT

_FLAG_NAMES = {FilterFlag.NONFINITE: "nonfinite", FilterFlag.ZERO: "zero", FilterFlag.CONSTANT: "constant"}


def _flat(filters: Tensor) -> Tensor:
    if filters.ndim < 2:
        raise MasterkeyError(f"expected filters of shape [N, k, k] or [N, d], got {tuple(filters.shape)}")
    return filters.reshape(filters.shape[0], -1)


def filter_flags(filters: Tensor) -> Tensor:
    """Flags (``int32``, see :class:`FilterFlag`) for each filter of ``filters`` ([N, k, k] or [N, d]).

    Only the data-dependent flags (``NONFINITE``, ``ZERO``, ``CONSTANT``) are set here.
    """
    import torch

    return torch.from_numpy(filter_flags_array(_flat(filters).detach().cpu().double().numpy()))


def filter_flags_array(filters: np.ndarray) -> np.ndarray:
    """:func:`filter_flags` of a numpy array ([N, k, k] or [N, d]): ``int32`` flags, computed in float64."""
    filters = np.asarray(filters)
    if filters.ndim < 2:
        raise MasterkeyError(f"expected filters of shape [N, k, k] or [N, d], got {tuple(filters.shape)}")
    flat = filters.reshape(filters.shape[0], -1).astype(np.float64, copy=False)
    finite = np.isfinite(flat).all(axis=1)
    safe = np.where(np.isfinite(flat), flat, 0.0)
    zero = finite & (np.abs(safe) <= ZERO_TOL).all(axis=1)
    centred_sq = np.square(safe - safe.mean(axis=1, keepdims=True)).sum(axis=1)
    scale_sq = np.square(safe).sum(axis=1)
    # Constant relative to the filter's own scale, so that float rounding of a constant filter still counts.
    constant = finite & ~zero & (centred_sq <= 1e-12 * scale_sq)
    flags = np.zeros(flat.shape[0], dtype=np.int32)
    flags[~finite] |= int(FilterFlag.NONFINITE)
    flags[zero] |= int(FilterFlag.ZERO)
    flags[constant] |= int(FilterFlag.CONSTANT)
    return flags


def excluded_counts(flags: Tensor | np.ndarray) -> dict[str, int]:
    """How many filters each excluding flag removes (a filter counts under its first flag only)."""
    flags = np.asarray(flags)
    counts = {}
    remaining = np.ones(flags.shape, dtype=bool)
    for flag, name in _FLAG_NAMES.items():
        hit = remaining & ((flags & int(flag)) != 0)
        counts[name] = int(hit.sum())
        remaining &= ~hit
    return counts


def usable_mask(flags: Tensor) -> Tensor:
    """True where a filter carries none of the :data:`EXCLUDED` flags."""
    import torch

    return (torch.as_tensor(flags) & int(EXCLUDED)) == 0


def center_norm(filters: Tensor, check: bool = True) -> Tensor:
    """Subtract each filter's mean and divide by the L2 norm of what is left.

    ``filters`` is [N, k, k] (or [N, d]); the result has the same shape and dtype. Raises :class:`MasterkeyError` if
    any filter is non-finite, all-zero or constant: flag those with :func:`filter_flags` and exclude them first, so
    nothing is ever divided by zero. ``check=False`` skips that check (it costs 7x the arithmetic) for filters
    already known to be usable, such as a bank's unflagged filters.
    """
    flat = _flat(filters)
    bad = ~usable_mask(filter_flags(flat)) if check else None
    if bad is not None and bool(bad.any()):
        counts = excluded_counts(filter_flags(flat[bad]))
        detail = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
        raise MasterkeyError(
            f"center_norm: {int(bad.sum())} filters cannot be normalised ({detail}); exclude them first"
        )
    centred, norms = _centre(flat)
    return (centred / norms).reshape(filters.shape)


def _centre(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``flat`` [m, d] minus their means, and the L2 norms [m, 1] of what is left (the one arithmetic)."""
    import torch

    centred = flat - flat.mean(dim=1, keepdim=True)
    return centred, torch.linalg.vector_norm(centred, dim=1, keepdim=True)


def centring(filters: Tensor, what: str = "filters") -> tuple[Tensor, Tensor, Tensor]:
    """``filters`` ([m, k, k] or [m, d]) as float64 rows centred [m, d], with their means and centred norms
    [m, 1]. Raises :class:`MasterkeyError` (prefixed with ``what``) for non-finite or constant filters."""
    import torch

    flat = filters.reshape(filters.shape[0], -1).to(torch.float64)
    mean = flat.mean(dim=1, keepdim=True)
    centred, norms = _centre(flat)
    # A NaN or Inf anywhere in a row makes its norm NaN or Inf: checking the norms checks every weight.
    if bool((norms <= 0).any()) or not bool(torch.isfinite(norms).all()):
        raise MasterkeyError(f"{what} must be finite and non-constant (exclude flagged filters first)")
    return centred, mean, norms


def unit_rows(filters: Tensor, what: str = "filters") -> Tensor:
    """``filters`` ([m, k, k] or [m, d]) centred and unit-normed as float64 rows [m, d], on their device (see
    :func:`centring`; the same numbers as :func:`center_norm` of the float64 filters)."""
    centred, _, norms = centring(filters, what)
    return centred / norms


def unit_rows_array(values: np.ndarray, zero_below: float | None = None) -> np.ndarray:
    """:func:`unit_rows` in numpy (no torch): ``values`` [m, ...] as centred, unit-norm float64 rows [m, d].

    ``zero_below``: rows whose centred norm is at most this come out as zeros (a constant patch has no shape);
    without it the caller has excluded such rows already (:func:`filter_flags_array`)."""
    flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    if zero_below is None:
        return centred / norms
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > zero_below)
