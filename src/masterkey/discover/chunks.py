"""Passes over a bank's filters in blocks: what keeps discovery's memory bounded however large the bank is.

Every stage that touches all filters (the greedy objective, PCA's scatter, the k-means and other baselines'
scores, the keys' shares) walks them in blocks of :data:`BLOCK` rows, converting one block at a time to float64 on
the compute device, and adds up per-block sums. No float64 copy of the bank and no [N, K, d] tensor is ever made;
what grows with the bank is the float32 filters themselves and a few numbers per filter. Small blocks also keep
every temporary small, which is markedly faster than one large product (large fresh allocations fault in page by
page; measured in bench/results/discover-scaling.md).

A bank of at most :data:`ONE_PASS` filters (the default bank's largest kernel size has 9,742) is one block, so its
arithmetic is exactly that of a single pass over all filters, as before discovery learned to scale (matrix
products and sums are not bitwise the same for every split of their rows).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import Tensor

from masterkey.errors import MasterkeyError
from masterkey.normalize import unit_rows

#: Banks of at most this many filters are computed in one pass (one block).
ONE_PASS = 65536
#: Filters per block in a larger bank: a block of 7x7 filters in float64 is 1.6 MB, its scores against 50
#: candidates too.
BLOCK = 4096


def row_chunks(n: int, size: int) -> list[slice]:
    """Slices covering ``range(n)`` in at most ``size`` rows each, of nearly equal lengths (no tiny last one)."""
    if n <= 0:
        return []
    parts = -(-n // size)
    bounds = [i * n // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def is_large(n: int) -> bool:
    """Whether a bank of ``n`` filters is walked in several blocks (a smaller one is computed in one pass)."""
    return n > ONE_PASS


def blocks(n: int) -> list[slice]:
    """The blocks of a bank of ``n`` filters: one if it is small, else blocks of at most :data:`BLOCK` rows."""
    return row_chunks(n, BLOCK if is_large(n) else max(n, 1))


def unit_rows_blocked(filters: Tensor, device: str | torch.device | None = None, what: str = "filters") -> Tensor:
    """:func:`unit_rows` of every row of ``filters``, block by block, as one float64 tensor [m, d] on ``device``."""
    device = torch.device(device) if device is not None else filters.device
    m = int(filters.shape[0])
    out = torch.empty(m, filters[0].numel() if m else 0, dtype=torch.float64, device=device)
    for rows in row_chunks(m, BLOCK):  # row by row arithmetic: the same for any blocking
        out[rows] = unit_rows(filters[rows].to(device), what)
    return out


def iter_unit_rows(
    filters: Tensor,
    weights: Tensor | None = None,
    device: str | torch.device | None = None,
    what: str = "filters",
) -> Iterator[tuple[slice, Tensor, Tensor | None]]:
    """Yield ``(rows, unit rows float64 [m, d], their weights float64 [m] or None)`` block by block (see
    :func:`blocks`), on ``device`` (default: the filters' own device)."""
    device = torch.device(device) if device is not None else filters.device
    for rows in blocks(int(filters.shape[0])):
        x = unit_rows(filters[rows].to(device), what)
        w = weights[rows].to(device=device, dtype=torch.float64) if weights is not None else None
        yield rows, x, w


def weighted_scatter(
    filters: Tensor, weights: Tensor | None = None, device: str | torch.device | None = None
) -> Tensor:
    """``Σ w x xᵀ`` [d, d] (float64, on the CPU) of the unit rows of ``filters``, block by block (``weights`` None:
    ``1 / N`` each)."""
    n = int(filters.shape[0])
    w = weights.to(torch.float64) if weights is not None else torch.full((n,), 1.0 / n, dtype=torch.float64)
    scatter = None
    for _, x, wb in iter_unit_rows(filters, w, device, "baselines: filters"):
        part = (x * wb[:, None]).T @ x
        scatter = part if scatter is None else scatter + part
    if scatter is None:
        raise MasterkeyError("scatter: no filters")
    return scatter.cpu()
