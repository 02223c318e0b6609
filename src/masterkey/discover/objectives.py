"""Objectives that score a set of keys, for the greedy reduction and for the baselines (SPEC §2.5).

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet


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


def _flat_unit(filters: Tensor) -> Tensor:
    flat = filters.reshape(filters.shape[0], -1).to(torch.float64)
    flat = flat - flat.mean(dim=1, keepdim=True)
    norms = flat.norm(dim=1, keepdim=True)
    if bool((norms <= 0).any()) or not bool(torch.isfinite(flat).all()):
        raise MasterkeyError("filters must be finite and non-constant (exclude flagged filters first)")
    return flat / norms


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
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return torch.from_numpy(1.0 / (len(counts) * counts[inverse].astype(np.float64)))


def _key_matrix(keys: Tensor | KeySet) -> Tensor:
    return _flat_unit(keys.keys if isinstance(keys, KeySet) else keys)


def _mean(values: Tensor, weights: Tensor | None) -> float:
    if weights is None:
        return float(values.mean())
    return float((values * weights).sum())


def _best_cos2(x: Tensor, kmat: Tensor) -> Tensor:
    """Best single-key cos² of unit rows ``x`` with unit keys ``kmat``."""
    return (x @ kmat.T).square().amax(dim=1)


def _span_cos2(x: Tensor, kmat: Tensor) -> Tensor:
    """cos² of unit rows ``x`` with their projection on the span of the keys."""
    # Orthonormal basis of the keys' span (centred keys span only centred directions, so the constant is separate).
    u, s, _ = torch.linalg.svd(kmat.T, full_matrices=False)
    basis = u[:, s > s.max() * 1e-10]
    return (x @ basis).square().sum(dim=1).clamp(0.0, 1.0)


def explained_variance(filters: Tensor, keys: Tensor | KeySet, weights: Tensor | None = None) -> float:
    """Weighted mean over filters of the best single-key cos² (the fit's explained fraction of centred energy)."""
    return _mean(_best_cos2(_flat_unit(filters), _key_matrix(keys)), weights)


def span_explained_variance(filters: Tensor, keys: Tensor | KeySet, weights: Tensor | None = None) -> float:
    """Weighted mean cos² when each filter is the least-squares combination of *all* keys (plus a constant).

    This is what a per-channel mix of the K keys could explain; the gap to :func:`explained_variance` is what
    one key per channel gives up. It is at least the single-key value for the same keys.
    """
    return _mean(_span_cos2(_flat_unit(filters), _key_matrix(keys)), weights)


class VarianceObjective:
    """Data-free objective: source-weighted mean cos² of ``filters`` under their best fits from the candidates.

    The score matrix (every filter's cos² with every candidate) is computed once; a removal's effect is exact and
    cheap: only filters whose best candidate was removed fall back to their second best.
    """

    name = "variance"

    def __init__(
        self,
        filters: Tensor,
        candidates: Tensor,
        weights: Tensor | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(filters) == 0:
            raise MasterkeyError("variance objective: no filters")
        self.filters = _flat_unit(filters)
        self.candidates = _flat_unit(candidates)
        if self.filters.shape[1] != self.candidates.shape[1]:
            raise MasterkeyError(
                f"variance objective: filters have {self.filters.shape[1]} weights, candidates "
                f"{self.candidates.shape[1]}"
            )
        self.weights = (
            weights.to(torch.float64)
            if weights is not None
            else torch.full((len(self.filters),), 1.0 / len(self.filters), dtype=torch.float64)
        )
        dev = torch.device(device)
        self.cos2 = (self.filters.to(dev) @ self.candidates.to(dev).T).square().cpu()
        self.n_candidates = int(self.candidates.shape[0])

    def value(self, subset: Sequence[int]) -> Score:
        idx = torch.as_tensor(list(subset), dtype=torch.long)
        return Score(float((self.cos2[:, idx].amax(dim=1) * self.weights).sum()))

    def removal_values(self, subset: Sequence[int]) -> dict[int, Score]:
        members = list(subset)
        idx = torch.as_tensor(members, dtype=torch.long)
        if len(members) == 1:
            return {members[0]: Score(0.0)}
        top = self.cos2[:, idx].topk(2, dim=1)
        total = float((top.values[:, 0] * self.weights).sum())
        loss = torch.zeros(len(members), dtype=torch.float64)
        loss.index_add_(0, top.indices[:, 0], (top.values[:, 0] - top.values[:, 1]) * self.weights)
        return {c: Score(total - float(loss[j])) for j, c in enumerate(members)}

    def score_keys(self, keys: KeySet) -> Score:
        return Score(_mean(_best_cos2(self.filters, _key_matrix(keys)), self.weights))

    def span_keys(self, keys: KeySet) -> Score:
        """Score when every filter is a least-squares combination of all ``keys`` (the upper bound of a mix)."""
        return Score(_mean(_span_cos2(self.filters, _key_matrix(keys)), self.weights))


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
        from masterkey.networks.evaluate import predict_logits

        logits = predict_logits(
            self.model, self.images, self.prep, batch_size=self.batch_size, device=self.device, progress=False
        )
        labels = self.images.labels
        if logits.shape[1] <= int(labels.max()):
            raise MasterkeyError(
                f"accuracy objective: the data have {int(labels.max()) + 1} classes, the model predicts "
                f"{logits.shape[1]}"
            )
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
