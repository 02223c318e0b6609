"""Exact affine fit of filters to keys (docs/design.md, pipeline step 4): the math.

For a centred unit-norm key x̂ the least-squares fit of a filter y by ``a * x̂ + b`` is closed form:
``a = <y - ȳ, x̂>``, ``b = ȳ``, and residual² = ||y - ȳ||² - a². One matrix product scores every filter against
every key; each filter takes the key of largest |a| (the smallest residual). The sign of ``a`` is free.
Filters are processed in chunks, so memory stays bounded however large the bank. Fitting a whole bank is
:mod:`masterkey.fit.bank_fit`; the fit run directory :mod:`masterkey.fit.run`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet
from masterkey.normalize import unit_rows

#: Filters with a weight larger than this in magnitude are excluded from fits as out of range: their squares,
#: summed over up to 63 x 63 weights, would overflow float32 (3.4e38) and give NaN fits; no trained network has
#: weights within many orders of magnitude of it.
MAX_ABS_WEIGHT = 1e15
#: Filters per kernel call: large enough for efficient matrix products, small enough to stay in CPU cache.
FIT_CHUNK = 8192
#: Filters per kernel call on a GPU, where launches cost more than cache misses (96 MiB of GPU memory for 7x7
#: filters and 50 keys; measured in bench/results/gpu).
FIT_CHUNK_CUDA = 65536


def fit_chunk_size(device: str | torch.device | None) -> int:
    """Filters per kernel call on ``device``: :data:`FIT_CHUNK` on the CPU, :data:`FIT_CHUNK_CUDA` on a GPU."""
    return FIT_CHUNK_CUDA if device is not None and torch.device(device).type == "cuda" else FIT_CHUNK


#: Above this cos², residuals are computed directly rather than as sqrt(energy - a²) (float cancellation); below
#: it the shortcut agrees with a direct computation to better than 1e-5 of the filter's scale in float32.
EXACT_RESIDUAL_COS2 = 0.2
FIT_COLUMNS = ("key", "a", "b", "cos2", "residual")


@dataclass
class FitResult:
    """Per-filter best fits: key index, ``a``, ``b``, ``cos2`` (explained fraction of the centred energy; 1 for
    a constant filter, which is fitted exactly by ``b``) and ``residual`` (L2 norm of ``y - a*key - b``)."""

    key: Tensor
    a: Tensor
    b: Tensor
    cos2: Tensor
    residual: Tensor

    def __len__(self) -> int:
        return int(self.key.shape[0])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({name: getattr(self, name).numpy() for name in FIT_COLUMNS})

    @classmethod
    def cat(cls, parts: Iterable[FitResult]) -> FitResult:
        parts = list(parts)
        return cls(*(torch.cat([getattr(p, n) for p in parts]) for n in FIT_COLUMNS))


def _key_matrix(keys: KeySet | Tensor) -> Tensor:
    """Centred unit-norm keys as a float64 [K, d] matrix."""
    if isinstance(keys, KeySet):
        return keys.keys.reshape(len(keys), -1).to(torch.float64)
    return unit_rows(torch.as_tensor(keys), "keys")


class _Fitter:
    """The per-chunk kernel. Work is laid out key-major ([K, n], [d, n]) so that every reduction runs across
    the long filter axis, where it vectorises; reductions along the short key / pixel axes are an order of
    magnitude slower on CPU."""

    def __init__(self, keys: KeySet | Tensor, device: torch.device | None, dtype: torch.dtype) -> None:
        kmat = _key_matrix(keys)
        n_keys, self.d = kmat.shape
        # One matrix product gives every score and the mean: the last row of the augmented key matrix is 1/d.
        aug = torch.cat([kmat, torch.full((1, self.d), 1.0 / self.d, dtype=torch.float64)])
        self.aug = aug.to(device=device, dtype=dtype)
        self.key_sum = kmat.sum(dim=1).to(device=device, dtype=dtype)  # ~0; corrects scores for rounding
        self.keys_t = kmat.T.contiguous().to(device=device, dtype=dtype)  # [d, K]
        rank_dtype = torch.int8 if n_keys < 128 else torch.int16 if n_keys < 32768 else torch.int32
        self.rank = (n_keys - torch.arange(n_keys, device=device)).to(rank_dtype)[:, None]
        self.n_keys = n_keys
        self.device, self.dtype = device, dtype

    def _direct_residual2(self, centred: Tensor, best: Tensor, a: Tensor) -> Tensor:
        """||centred - a * key_best||² per column, computed directly: each filter's own key gathered (one [d, n]
        table look-up), not a product with every key."""
        fitted = self.keys_t.index_select(1, best)  # [d, n]: the chosen key of every filter
        return torch.linalg.vector_norm(torch.addcmul(centred, fitted, a, value=-1), dim=0).square_()

    def __call__(self, chunk: Tensor) -> FitResult:
        y = chunk.reshape(chunk.shape[0], -1)
        if y.shape[1] != self.d:
            side = round(self.d**0.5)
            raise MasterkeyError(f"filters have {y.shape[1]} weights each but the keys are {side}x{side} ({self.d})")
        y = y.to(device=self.device, dtype=self.dtype, non_blocking=True)
        scores = torch.mm(self.aug, y.T)  # [K + 1, n]
        mean = scores[-1].clone()
        scores = scores[:-1]
        scores.addr_(self.key_sum, mean, alpha=-1)  # = <y - mean, key>
        magnitude = scores.abs()
        top = magnitude.amax(dim=0)
        # First index reaching the maximum (ties go to the lower key) as the highest rank = K - index among the
        # maximal entries: an integer multiply and max, far faster than argmax over dim 0 on CPU. A non-finite
        # filter's scores are NaN and match nothing: its index is clamped to the last key, and its a, cos² and
        # residual are NaN.
        chosen = (torch.ge(magnitude, top).to(self.rank.dtype) * self.rank).amax(dim=0)
        best = (self.n_keys - chosen.long()).clamp_(max=self.n_keys - 1)
        a = scores.gather(0, best[None])[0]
        centred = y.T - mean  # [d, n]
        # vector_norm reduces without materialising the squares, far faster on CPU than square().sum(0).
        energy = torch.linalg.vector_norm(centred, dim=0).square_()
        # residual² = energy - a² is exact in theory but cancels in floating point when the fit is good; where
        # more than EXACT_RESIDUAL_COS2 of the energy is explained, the residual is computed directly instead.
        residual = (energy - a.square()).clamp_min_(0)
        exact = ~(residual > (1 - EXACT_RESIDUAL_COS2) * energy)
        n_exact = int(exact.sum())
        if n_exact == len(exact):  # every filter well explained (the banks people fit): no indexing at all
            residual = self._direct_residual2(centred, best, a)
        elif n_exact:
            # Column indexing of [d, n] costs more than the arithmetic: index_select, never boolean masks.
            where = torch.nonzero(exact)[:, 0]
            residual.index_copy_(
                0, where, self._direct_residual2(centred.index_select(1, where), best[where], a[where])
            )
        residual.sqrt_()
        # A constant filter (energy 0) is explained fully; a non-finite one keeps its NaN.
        cos2 = torch.where(energy == 0, 1.0, a.square() / energy.clamp_min(torch.finfo(self.dtype).tiny))
        return FitResult(best.cpu(), a.cpu(), mean.cpu(), cos2.clamp_(0, 1).cpu(), residual.cpu())


def fit_chunks(
    chunks: Iterable[Tensor],
    keys: KeySet | Tensor,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[FitResult]:
    """Fit each chunk of filters ([n, k, k] or [n, d]) to ``keys``; yields one CPU :class:`FitResult` per chunk."""
    fitter = _Fitter(keys, torch.device(device) if device is not None else None, dtype)
    for chunk in chunks:
        yield fitter(chunk)


def fit_affine(
    filters: Tensor,
    keys: KeySet | Tensor,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> FitResult:
    """Best affine fit ``a * key + b`` of every filter of ``filters`` ([N, k, k] or [N, d]) to ``keys``.

    Keys are centred and unit-normed first (a :class:`KeySet` already is). Ties in |a| go to the lower key index.
    A filter with a NaN or Inf weight gets the last key, a non-finite ``a`` and NaN ``cos2`` and ``residual`` (check
    with :func:`fittable` first; :func:`fit_bank` excludes and counts such filters, it never fits them).
    Works on CPU and CUDA (``device``); results are on the CPU. ``chunk_size``: filters per kernel call (default
    :func:`fit_chunk_size`).
    """
    chunk_size = chunk_size or fit_chunk_size(device)
    if filters.shape[0] == 0:
        empty = torch.empty(0)
        return FitResult(torch.empty(0, dtype=torch.int64), empty, empty, empty, empty)
    chunks = (filters[i : i + chunk_size] for i in range(0, filters.shape[0], chunk_size))
    return FitResult.cat(fit_chunks(chunks, keys, device=device, dtype=dtype))


def fittable(filters: Tensor) -> Tensor:
    """A boolean mask of the filters ([n, k, k] or [n, d]) that can be fitted: every weight finite and at most
    :data:`MAX_ABS_WEIGHT` in magnitude. One pass over the data (a NaN makes the row's maximum NaN)."""
    peak = filters.reshape(filters.shape[0], -1).abs().amax(dim=1) if filters.shape[0] else filters.new_zeros(0)
    return peak <= MAX_ABS_WEIGHT
