"""Objectives that score a set of keys, for the greedy reduction and for the baselines (docs/design.md, step 3).

* :class:`VarianceObjective` (data-free): the mean explained variance (cos²) of a bank's filters under their best
  affine fits, averaged per source first, so that one big model cannot dominate.
* :class:`AccuracyObjective`: the top-1 accuracy of a model on a held-out split of *training* images after every
  depthwise filter is swapped for its best fit (:func:`~masterkey.networks.surgery.swap_depthwise`); the original
  weights are restored before every evaluation. Ties in top-1 (common on small splits) are broken by the mean
  log-likelihood.

An objective scores subsets of a fixed list of candidate keys (``value(subset)``), all one-candidate removals of a
subset at once (``removal_values(subset)``, what the greedy step needs), and any other key set (``score_keys``,
for the baselines).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from masterkey.discover.chunks import (
    BLOCK,
    blocks,
    is_large,
    iter_unit_rows,
    row_chunks,
    weighted_scatter,
)
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet
from masterkey.normalize import centring, unit_rows


@dataclass(frozen=True, order=True)
class Score:
    """An objective value; ``secondary`` only breaks ties of ``value`` (larger is better for both)."""

    value: float
    secondary: float = 0.0


class Objective(Protocol):
    """What :func:`masterkey.discover.greedy.greedy_backward` needs."""

    name: str
    n_candidates: int

    def value(self, subset: Sequence[int]) -> Score:
        """Score of the candidates ``subset``."""
        ...

    def removal_values(self, subset: Sequence[int]) -> dict[int, Score]:
        """Score of ``subset`` without ``c``, for every ``c`` in ``subset``."""
        ...

    def score_keys(self, keys: KeySet) -> Score:
        """Score of an arbitrary key set of the same kernel size."""
        ...


def source_weights(groups: Sequence[Any] | np.ndarray | None, n: int) -> Tensor:
    """Per-filter weights that sum to 1 with every group (source) contributing equally: ``1 / (G * n_g)``.

    ``groups`` None gives uniform weights ``1 / n``.
    """
    if n == 0:
        raise MasterkeyError("no filters to weight")
    if groups is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise MasterkeyError(f"{len(labels)} source labels for {n} filters")
    # factorize hashes the labels: sorting a million Python strings (np.unique) took seconds.
    codes, _ = pd.factorize(labels)
    counts = np.bincount(codes)
    return torch.from_numpy(1.0 / (len(counts) * counts[codes].astype(np.float64)))


def _key_matrix(keys: Tensor | KeySet) -> Tensor:
    return unit_rows(keys.keys if isinstance(keys, KeySet) else keys)


def _best_cos2(x: Tensor, kmat: Tensor) -> Tensor:
    """Best single-key cos² of unit rows ``x`` with unit keys ``kmat``."""
    return (x @ kmat.T).square().amax(dim=1)


def _span_basis(kmat: Tensor) -> Tensor:
    """Orthonormal basis [d, r] of the keys' span (centred keys span only centred directions, so the constant is
    separate)."""
    u, s, _ = torch.linalg.svd(kmat.T, full_matrices=False)
    return u[:, s > s.max() * 1e-10]


def _span_cos2(x: Tensor, basis: Tensor) -> Tensor:
    """cos² of unit rows ``x`` with their projection on the span of ``basis``."""
    return (x @ basis).square().sum(dim=1).clamp(0.0, 1.0)


def _means(
    filters: Tensor,
    weights: Tensor | None,
    per_row: Sequence[Callable[[Tensor], Tensor]],
    device: str | torch.device | None = None,
) -> list[float]:
    """Weighted means over ``filters`` of each per-row statistic of their unit rows, in one pass block by block.

    ``weights`` None averages plainly. A small bank is one block: exactly the single-pass computation.
    """
    n = int(filters.shape[0])
    totals = [0.0] * len(per_row)
    for _, x, w in iter_unit_rows(filters, weights, device):
        if w is None and len(x) == n:
            return [float(stat(x).mean()) for stat in per_row]  # one block, no weights: the plain mean, as always
        for i, stat in enumerate(per_row):
            values = stat(x)
            totals[i] += float((values * w).sum() if w is not None else values.sum())
    return totals if weights is not None else [t / n for t in totals]


def explained_variance(
    filters: Tensor, keys: Tensor | KeySet, weights: Tensor | None = None, device: str | torch.device | None = None
) -> float:
    """Weighted mean over filters of the best single-key cos² (the fit's explained fraction of centred energy)."""
    kmat = _key_matrix(keys).to(device or filters.device)
    return _means(filters, weights, [lambda x: _best_cos2(x, kmat)], device)[0]


def span_explained_variance(
    filters: Tensor, keys: Tensor | KeySet, weights: Tensor | None = None, device: str | torch.device | None = None
) -> float:
    """Weighted mean cos² when each filter is the least-squares combination of *all* keys (plus a constant).

    This is what a per-channel mix of the K keys could explain; the gap to :func:`explained_variance` is what
    one key per channel gives up. It is at least the single-key value for the same keys.
    """
    basis = _span_basis(_key_matrix(keys)).to(device or filters.device)
    return _means(filters, weights, [lambda x: _span_cos2(x, basis)], device)[0]


#: The greedy's score matrix (every filter's cos² with every candidate, float64) is kept while it takes at most
#: this much memory: 41,943 filters for 50 candidates (the default bank's largest kernel size takes 3.9 MB).
#: Beyond it the objective keeps each filter's best and second-best candidate instead (48 bytes per filter, with
#: its mean and norm).
SCORE_MATRIX_BYTES = 16 * 2**20


@dataclass
class _TopTwo:
    """Each filter's best and second-best candidate within ``subset`` and their cos² (second: 0 for one member)."""

    subset: tuple[int, ...]
    best: Tensor
    best_cos2: Tensor
    second: Tensor
    second_cos2: Tensor


class VarianceObjective:
    """Data-free objective: source-weighted mean cos² of ``filters`` under their best fits from the candidates.

    A removal's effect is exact and cheap: only filters whose best candidate was removed fall back to their second
    best. For banks whose score matrix (every filter's cos² with every candidate) fits in
    :data:`SCORE_MATRIX_BYTES`, the matrix is computed once and kept; for larger banks each filter's best and
    second-best candidate are kept instead, and after a removal only the filters that lost one of the two are
    rescored — the same values, with memory that grows by 48 bytes per filter. Filters are read block by block
    (:mod:`masterkey.discover.chunks`); ``device`` runs the products there.
    """

    name = "variance"

    def __init__(
        self,
        filters: Tensor,
        candidates: Tensor,
        weights: Tensor | None = None,
        device: str | torch.device = "cpu",
        score_matrix_bytes: int = SCORE_MATRIX_BYTES,
    ) -> None:
        if len(filters) == 0:
            raise MasterkeyError("variance objective: no filters")
        self.filters = filters
        self.device = torch.device(device)
        self.candidates = unit_rows(candidates)
        d = int(np.prod(filters.shape[1:]))
        if d != self.candidates.shape[1]:
            raise MasterkeyError(f"variance objective: filters have {d} weights, candidates {self.candidates.shape[1]}")
        n = len(filters)
        self.weights = (
            weights.to(torch.float64) if weights is not None else torch.full((n,), 1.0 / n, dtype=torch.float64)
        )
        self.n_candidates = int(self.candidates.shape[0])
        self._cands = self.candidates.to(self.device)
        self._weights = self.weights.to(self.device)
        self.cos2: Tensor | None = None
        self._top: _TopTwo | None = None
        self._scatter: Tensor | None = None
        self._centre: tuple[Tensor, Tensor] | None = None  # each filter's float64 mean and centred norm
        if n * self.n_candidates * 8 <= score_matrix_bytes:
            self.cos2 = torch.cat([self._cos2(rows, self._cands) for rows in blocks(n)]).cpu()
        else:
            means = torch.empty(n, 1, dtype=torch.float64, device=self.device)
            norms = torch.empty_like(means)
            for rows in blocks(n):  # also checks the filters
                _, means[rows], norms[rows] = centring(self.filters[rows].to(self.device))
            self._centre = (means, norms)
            self._top = self._top_two_of(tuple(range(self.n_candidates)))

    # ------------------------------------------------------------------ best and second best, for large banks
    def _cos2(self, rows: Tensor | slice, cands: Tensor) -> Tensor:
        """cos² [m, C] of filters ``rows`` (a block) with unit candidates ``cands`` [C, d]."""
        if self._centre is None:
            x = unit_rows(self.filters[rows].to(self.device))
        else:
            # unit_rows' arithmetic with each filter's mean and norm kept from the first pass: the same numbers,
            # without two reductions per filter every time a removal makes it rescored.
            flat = self.filters[rows].to(self.device)
            x = (flat.reshape(len(flat), -1).to(torch.float64) - self._centre[0][rows]) / self._centre[1][rows]
        return (x @ cands.T).square()

    def _rescore(self, rows: Tensor | slice, members: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Best / second-best candidate (ids) and cos² of filters ``rows`` (a block) among candidates ``members``."""
        cos2 = self._cos2(rows, self._cands[members])
        if len(members) == 1:
            zeros = torch.zeros(cos2.shape[0], dtype=torch.float64, device=self.device)
            first = members.expand(cos2.shape[0])
            return first, cos2[:, 0], first, zeros
        # Two max passes: 3x faster than topk(2) here. cos² >= 0, so -1 takes the best out of the second pass.
        best_cos2, best = cos2.max(dim=1)
        second_cos2, second = cos2.scatter_(1, best[:, None], -1.0).max(dim=1)
        return members[best], best_cos2, members[second], second_cos2

    def _top_two_of(self, subset: tuple[int, ...]) -> _TopTwo:
        members = torch.as_tensor(subset, dtype=torch.long, device=self.device)
        n = len(self.filters)
        best = torch.empty(n, dtype=torch.long, device=self.device)
        second = torch.empty_like(best)
        best_cos2 = torch.empty(n, dtype=torch.float64, device=self.device)
        second_cos2 = torch.empty_like(best_cos2)
        for rows in blocks(n):
            best[rows], best_cos2[rows], second[rows], second_cos2[rows] = self._rescore(rows, members)
        return _TopTwo(subset, best, best_cos2, second, second_cos2)

    def _top_two(self, subset: Sequence[int]) -> _TopTwo:
        key = tuple(sorted(int(c) for c in subset))
        top = self._top
        if top is not None and top.subset == key:
            return top
        removed = set(top.subset) - set(key) if top is not None else set()
        if top is None or len(top.subset) != len(key) + 1 or len(removed) != 1:
            self._top = self._top_two_of(key)
            return self._top
        # One candidate fewer: only filters whose best or second best it was change.
        (gone,) = removed
        members = torch.as_tensor(key, dtype=torch.long, device=self.device)
        stale = torch.nonzero((top.best == gone) | (top.second == gone))[:, 0]
        for part in row_chunks(len(stale), BLOCK):
            rows = stale[part]
            top.best[rows], top.best_cos2[rows], top.second[rows], top.second_cos2[rows] = self._rescore(
                rows.to(self.filters.device), members
            )
        top.subset = key
        return top

    # ------------------------------------------------------------------ the Objective protocol
    def value(self, subset: Sequence[int]) -> Score:
        if self.cos2 is not None:
            idx = torch.as_tensor(list(subset), dtype=torch.long)
            return Score(float((self.cos2[:, idx].amax(dim=1) * self.weights).sum()))
        return Score(float((self._top_two(subset).best_cos2 * self._weights).sum()))

    def removal_values(self, subset: Sequence[int]) -> dict[int, Score]:
        members = list(subset)
        if len(members) == 1:
            return {members[0]: Score(0.0)}
        if self.cos2 is not None:
            idx = torch.as_tensor(members, dtype=torch.long)
            top = self.cos2[:, idx].topk(2, dim=1)
            total = float((top.values[:, 0] * self.weights).sum())
            loss = torch.zeros(len(members), dtype=torch.float64)
            loss.index_add_(0, top.indices[:, 0], (top.values[:, 0] - top.values[:, 1]) * self.weights)
            return {c: Score(total - float(loss[j])) for j, c in enumerate(members)}
        state = self._top_two(members)
        total = float((state.best_cos2 * self._weights).sum())
        gain = (state.best_cos2 - state.second_cos2) * self._weights
        loss = torch.zeros(self.n_candidates, dtype=torch.float64, device=self.device).index_add_(0, state.best, gain)
        lost = loss.tolist()
        return {c: Score(total - lost[c]) for c in members}

    def scatter(self) -> Tensor:
        """The weighted scatter ``Σ w x xᵀ`` [d, d] (float64, CPU) of the filters' unit rows, computed once."""
        if self._scatter is None:
            self._scatter = weighted_scatter(self.filters, self.weights, self.device)
        return self._scatter

    def score_keys(self, keys: KeySet) -> Score:
        return self.score_many([keys], span=False)[0][0]

    def score_many(
        self, keysets: Sequence[KeySet], best: bool = True, span: bool = True
    ) -> list[tuple[Score | None, Score | None]]:
        """``(score, span score)`` of each key set (None where not asked for), in one pass over the filters.

        A small bank (one block, :mod:`masterkey.discover.chunks`) is scored key set by key set, row by row, as
        always. A larger bank is scored with one product per block for all key sets together, and span scores come
        from the weighted scatter ``S`` (one d x d matrix): ``Σ w ‖Bᵀx‖² = trace(Bᵀ S B)`` for an orthonormal basis
        ``B`` of a key set's span: the same numbers up to rounding, at a fraction of the cost (the default
        comparison scores 67 key sets).
        """
        kmats = [_key_matrix(keys).to(self.device) for keys in keysets]
        bases = [_span_basis(kmat) for kmat in kmats] if span else []
        if not is_large(len(self.filters)):
            stats: list[Callable[[Tensor], Tensor]] = []
            for i, kmat in enumerate(kmats):
                if best:
                    stats.append(lambda x, kmat=kmat: _best_cos2(x, kmat))
                if span:
                    stats.append(lambda x, basis=bases[i]: _span_cos2(x, basis))
            values = iter(_means(self.filters, self.weights, stats, self.device))
            return [(Score(next(values)) if best else None, Score(next(values)) if span else None) for _ in keysets]
        bests = _best_many(self.filters, self.weights, kmats, self.device) if best else [None] * len(kmats)
        if span:
            scatter = self.scatter().to(self.device)
            spans = [float((basis * (scatter @ basis)).sum()) for basis in bases]
        return [(Score(b) if b is not None else None, Score(spans[i]) if span else None) for i, b in enumerate(bests)]


def _best_many(filters: Tensor, weights: Tensor, kmats: Sequence[Tensor], device: torch.device) -> list[float]:
    """Weighted mean best cos² of ``filters`` under each key matrix: one product per block for all of them, laid
    out key-major so that each maximum runs along the long filter axis (twice as fast as along the keys)."""
    edges = np.cumsum([0, *(len(k) for k in kmats)]).tolist()
    every = torch.cat(list(kmats))  # [total keys, d]
    totals = torch.zeros(len(kmats), dtype=torch.float64, device=device)
    best = torch.empty(0, dtype=torch.float64, device=device)
    buffer = torch.empty(0, dtype=torch.float64, device=device)  # reused: fresh large allocations fault in slowly
    for _, x, w in iter_unit_rows(filters, weights, device):
        m = len(x)
        if buffer.numel() < m * len(every):
            buffer = torch.empty(m * len(every), dtype=torch.float64, device=device)
            best = torch.empty(len(kmats) * m, dtype=torch.float64, device=device)
        scores = torch.mm(every, x.T, out=buffer[: m * len(every)].view(len(every), m)).square_()
        block_best = best[: len(kmats) * m].view(len(kmats), m)
        for i in range(len(kmats)):
            torch.amax(scores[edges[i] : edges[i + 1]], dim=0, out=block_best[i])
        totals += block_best @ w
    return totals.tolist()


class AccuracyObjective:
    """Top-1 accuracy (ties broken by mean log-likelihood) of ``model`` on ``images`` after swapping its k x k
    depthwise filters for their best fits from a key set.

    ``images`` must be a held-out split of *training* data (never the test split): the selection would otherwise
    be tuned on the numbers it is judged by. Removing a candidate that no filter uses leaves the swapped model
    unchanged, so its score is reused instead of evaluated.
    """

    name = "accuracy"

    def __init__(
        self,
        model: nn.Module,
        images: Any,
        prep: Any,
        candidates: Tensor,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> None:
        from masterkey.depthwise import find_depthwise

        self.model = model.eval()
        self.images = images
        self.prep = prep
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.candidates = candidates.to(torch.float32)
        self.n_candidates = int(candidates.shape[0])
        k = int(candidates.shape[-1])
        self.kernel_size = k
        convs = find_depthwise(model)
        self.layers = [dw.name for dw in convs if tuple(dw.kernel_size) == (k, k)]
        if not self.layers:
            sizes = sorted({dw.kernel_size[0] for dw in convs})
            raise MasterkeyError(
                f"accuracy objective: the model has no {k}x{k} depthwise layers (its kernel sizes: {sizes or 'none'})"
            )
        self.skipped_layers = [dw.name for dw in convs if dw.name not in set(self.layers)]
        from masterkey.data.evaluate import check_class_count

        check_class_count(model, images, prep, device=self.device)  # the one class check, as swap makes it
        self.model.to(self.device)
        self.original = copy.deepcopy(self.model.state_dict())
        layer_set = set(self.layers)
        parts = []
        for dw in convs:
            if dw.name in layer_set:
                w = dw.conv.weight.detach().float().cpu().reshape(dw.conv.weight.shape[0], k, k)
                parts.append(w[torch.isfinite(w).flatten(1).all(dim=1)])
        # The swapped layers' filters, to tell which candidates a subset's fit actually uses (fit as swap fits).
        self.layer_filters = torch.cat(parts)
        self.evaluations = 0
        self._cache: dict[tuple[int, ...], Score] = {}

    def _restore(self) -> None:
        self.model.load_state_dict(self.original)

    def _evaluate(self) -> Score:
        from masterkey.data.evaluate import predict_logits

        logits = predict_logits(
            self.model, self.images, self.prep, batch_size=self.batch_size, device=self.device, progress=False
        )
        labels = self.images.labels
        top1 = float((logits.argmax(dim=1) == labels).double().mean())
        loglik = float(-nn.functional.cross_entropy(logits, labels))
        self.evaluations += 1
        return Score(top1, loglik)

    def score_keys(self, keys: KeySet) -> Score:
        from masterkey.networks.surgery import swap_depthwise

        self._restore()
        try:
            swap_depthwise(self.model, keys, layers=self.layers, resize=False)
            return self._evaluate()
        finally:
            self._restore()

    def unswapped(self) -> Score:
        """The model's own score, without any swap."""
        self._restore()
        return self._evaluate()

    def _used(self, subset: Sequence[int]) -> tuple[int, ...]:
        from masterkey.fit import fit_affine

        members = sorted(subset)
        fit = fit_affine(self.layer_filters, KeySet("subset", self.candidates[members]))
        return tuple(members[i] for i in torch.unique(fit.key).tolist())

    def value(self, subset: Sequence[int]) -> Score:
        members = tuple(sorted(subset))
        used = self._used(members)
        # The swapped model depends only on the candidates some filter uses.
        if used not in self._cache:
            keys = KeySet("subset", self.candidates[list(used)])
            self._cache[used] = self.score_keys(keys)
        return self._cache[used]

    def removal_values(self, subset: Sequence[int]) -> dict[int, Score]:
        members = sorted(subset)
        return {c: self.value([m for m in members if m != c]) for c in members}
