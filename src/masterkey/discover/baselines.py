"""Baseline key sets, scored on the same bank with the same objective as the discovered keys.

* ``kmeans``: spherical, sign-invariant, weighted k-means — each filter joins the key of largest |cos|, each key
  becomes the top eigenvector of its members' weighted scatter ``Σ w x xᵀ`` (the exact maximiser of their cos²).
  It optimises the data-free objective directly, so it is the strongest data-free baseline.
* ``pca``: the top-K principal directions of the weighted (sign-symmetric, hence uncentred) scatter of all
  filters. Their span is the best K-dimensional subspace (Eckart–Young), so PCA's *span* score is the upper bound
  of any K keys mixed per channel.
* ``random``: ``random:K:SEED`` Gaussian keys over several seeds (mean and 95% CI).
* ``impulse``: one centred impulse; ``paper8``: the published 7x7 keys, centre-cropped for smaller kernels.

Large banks: every pass over the filters goes block by block (:mod:`masterkey.discover.chunks`); PCA's scatter is
exact (a d x d sum accumulated block by block); k-means learns its keys on a seeded weighted sample of at most
:data:`KMEANS_SAMPLE` filters, then polishes and scores them on every filter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from masterkey.discover.chunks import iter_unit_rows, unit_rows_blocked, weighted_scatter
from masterkey.discover.objectives import explained_variance
from masterkey.discover.settings import BASELINES, KMEANS_SAMPLE
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet, load_keys
from masterkey.threads import torch_threads

#: On a sample, Lloyd iterations also stop once the objective gains less than this fraction of its standard error
#: on the sample: smaller gains fit the sample rather than the bank (on 16,384 random 7x7 filters the objective of
#: held-out filters stopped improving after 10-20 iterations while the sample's crept on for 200).
SAMPLE_NOISE_FRACTION = 0.1


def _weights(weights: Tensor | None, n: int) -> Tensor:
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    return weights.to(torch.float64)


def _top_eigvec(scatter: Tensor) -> Tensor:
    _, vecs = torch.linalg.eigh(scatter)
    v = vecs[:, -1]
    # eigh's sign is arbitrary; fix it (largest-magnitude weight positive) so results are reproducible.
    return v * torch.sign(v[v.abs().argmax()])


def kmeans_sample(n: int, weights: Tensor | None, sample_size: int, seed: int) -> Tensor | None:
    """Rows (sorted, with repeats) of the seeded sample k-means learns on, or None when all ``n`` filters are used.

    Drawn with replacement with probabilities ``weights`` (uniform when None), so a filter's expected count in the
    sample is proportional to its weight and the sample's plain mean estimates the weighted objective.
    """
    if n <= sample_size:
        return None
    probs = _weights(weights, n).cpu().numpy()
    rows = np.random.default_rng(seed).choice(n, size=sample_size, replace=True, p=probs / probs.sum())
    return torch.from_numpy(np.sort(rows))


def spherical_kmeans(
    filters: Tensor,
    n_keys: int,
    weights: Tensor | None = None,
    seed: int = 0,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-7,
    threads: int | None = 1,
    sample_size: int = KMEANS_SAMPLE,
    device: str | torch.device | None = None,
    score: bool = True,
) -> tuple[Tensor, float]:
    """Sign-invariant spherical k-means of centred filters ``[N, k, k]``; returns ``(keys [K, k, k], objective)``.

    Maximises the weighted mean of each filter's best cos² with a key (the data-free objective). Initialised by
    k-means++ with the distance ``1 - cos²``; ``n_init`` restarts, the best kept. Each iteration assigns every
    filter to its key of largest |cos| and moves each key one power-iteration step towards the top eigenvector of
    its members' weighted scatter, ``c ← normalise(Σ w (x·c) x)``; neither step lowers the objective. Iterations
    stop when it gains less than ``tol``; then each key is polished to that eigenvector exactly. Deterministic for
    a seed. ``threads``: torch CPU threads meanwhile (see :func:`masterkey.threads.torch_threads`).

    Banks of more than ``sample_size`` filters are clustered on a seeded weighted sample of that many
    (:func:`kmeans_sample`), where iterations also stop once the gain is below :data:`SAMPLE_NOISE_FRACTION` of the
    sample objective's standard error; the best restart's keys are then polished on every filter (one pass
    accumulating each key's members' scatter), and the objective returned is that of every filter (one more pass;
    ``score=False`` skips it and returns NaN). ``device`` runs the work there (default: the filters' device).
    """
    with torch_threads(threads):
        n = int(filters.shape[0])
        if not 1 <= n_keys <= n:
            raise MasterkeyError(f"k-means: cannot make {n_keys} keys from {n} filters")
        if sample_size < n_keys:
            raise MasterkeyError(f"k-means: a sample of {sample_size} filters cannot make {n_keys} keys")
        device = torch.device(device) if device is not None else filters.device
        rows = kmeans_sample(n, weights, sample_size, seed)
        if rows is None:
            x64 = unit_rows_blocked(filters, device, "baselines: filters")
            w64 = _weights(weights, n).to(device)
        else:
            x64 = unit_rows_blocked(filters[rows.to(filters.device)], device, "baselines: filters")
            w64 = torch.full((len(rows),), 1.0 / len(rows), dtype=torch.float64, device=device)
        noise = SAMPLE_NOISE_FRACTION if rows is not None else 0.0
        keys, objective = _lloyd(x64, w64, n_keys, seed, n_init, max_iter, tol, noise)
        if rows is not None:
            del x64, w64
            keys = _polish_on_all(filters, _weights(weights, n), keys, device)
            objective = explained_variance(filters, keys, _weights(weights, n), device) if score else math.nan
        k = round(math.sqrt(keys.shape[1]))
        return keys.reshape(n_keys, k, k).to(device="cpu", dtype=torch.float32), objective


def _lloyd(
    x64: Tensor, w64: Tensor, n_keys: int, seed: int, n_init: int, max_iter: int, tol: float, noise: float = 0.0
) -> tuple[Tensor, float]:
    """k-means on unit rows ``x64`` held in memory: the best of ``n_init`` restarts, polished; keys [K, d] float64.

    Iterations stop when the objective gains at most ``tol``, or (``noise`` > 0, for a sample with equal weights)
    at most ``noise`` times its standard error over the rows."""
    n = x64.shape[0]
    x, w = x64.to(torch.float32), w64.to(torch.float32)
    rng = np.random.default_rng(seed)
    rows = torch.arange(n, device=x.device)
    best_keys, best_obj = None, -math.inf
    for _ in range(n_init):
        c = _kmeanspp(x64, w64, n_keys, rng).to(torch.float32)
        previous = -math.inf
        for _ in range(max_iter):
            scores = x @ c.T
            assign = scores.abs().argmax(dim=1)
            best = scores[rows, assign]
            cos2 = best.double().square()
            obj = float((cos2 * w64).sum())
            floor = max(tol, noise * float(cos2.std()) / math.sqrt(n)) if noise > 0 else tol
            if obj - previous <= floor:
                break
            previous = obj
            # Σ_{i in j} w_i (x_i·c_j) x_i for every key j at once.
            coef = torch.zeros(n, n_keys, dtype=x.dtype, device=x.device)
            coef[rows, assign] = w * best
            moved = coef.T @ x
            norms = moved.norm(dim=1)
            empty = norms <= 1e-12
            if bool(empty.any()):
                # A key nobody joined takes the worst-explained filters, one each.
                worst = torch.argsort(w * (1 - best.square()), descending=True)[: int(empty.sum())]
                moved[empty] = x[worst]
                norms = moved.norm(dim=1)
            c = moved / norms[:, None]
        c = _polish(x64, w64, c.to(torch.float64))
        obj = float(((x64 @ c.T).square().amax(dim=1) * w64).sum())
        if obj > best_obj + 1e-12:
            best_obj, best_keys = obj, c.clone()
    assert best_keys is not None
    return best_keys, best_obj


def _kmeanspp(x: Tensor, w: Tensor, n_keys: int, rng: np.random.Generator) -> Tensor:
    """k-means++ seeding on ``1 - cos²``, weighted by the filter weights."""
    n = x.shape[0]
    first = int(rng.choice(n, p=(w / w.sum()).cpu().numpy()))
    centres = [x[first]]
    gap = 1 - (x @ x[first]).square()
    for _ in range(1, n_keys):
        p = (w * gap.clamp_min(0)).cpu().numpy()
        total = p.sum()
        pick = int(rng.choice(n, p=p / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[pick])
        gap = torch.minimum(gap, 1 - (x @ x[pick]).square())
    return torch.stack(centres).clone()


def _polish(x: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """Replace each key by the exact top eigenvector of its members' weighted scatter (when that is no worse)."""
    assign = (x @ c.T).square().argmax(dim=1)
    out = c.clone()
    for j in range(len(c)):
        members = assign == j
        if bool(members.any()):
            xm, wm = x[members], w[members]
            v = _top_eigvec((xm * wm[:, None]).T @ xm)
            if float(((xm @ v).square() * wm).sum()) >= float(((xm @ c[j]).square() * wm).sum()):
                out[j] = v
    return out


def _polish_on_all(filters: Tensor, weights: Tensor, c: Tensor, device: torch.device) -> Tensor:
    """:func:`_polish` over every filter, block by block: each key's members' weighted scatter is accumulated (K
    d x d matrices), and a key is replaced by its top eigenvector when ``vᵀ S v ≥ cᵀ S c`` (their members' cos²)."""
    d = c.shape[1]
    scatter = torch.zeros(len(c), d, d, dtype=torch.float64, device=device)
    for _, x, w in iter_unit_rows(filters, weights, device, "baselines: filters"):
        assign = (x @ c.T).square().argmax(dim=1)
        # Rows grouped by key: one gather per block, then one small product per key.
        order = torch.argsort(assign, stable=True)
        xs, ws = x[order], w[order]
        start = 0
        for j, count in enumerate(torch.bincount(assign, minlength=len(c)).tolist()):
            if count:
                xm = xs[start : start + count]
                scatter[j] += (xm * ws[start : start + count, None]).T @ xm
                start += count
    out = c.clone()
    for j in range(len(c)):
        if bool(scatter[j].any()):
            v = _top_eigvec(scatter[j])
            if float(v @ scatter[j] @ v) >= float(c[j] @ scatter[j] @ c[j]):
                out[j] = v
    return out


def pca_keys(filters: Tensor, n_keys: int, weights: Tensor | None = None, scatter: Tensor | None = None) -> Tensor:
    """The top ``n_keys`` principal directions [K, k, k] of the weighted scatter of centred unit-norm filters.

    ``scatter``: :func:`weighted_scatter` of these filters and weights, when already computed (it is one pass over
    the filters; several K share it).
    """
    d = int(np.prod(filters.shape[1:]))
    if not 1 <= n_keys < d:
        raise MasterkeyError(
            f"PCA: {n_keys} keys asked for, but {round(math.sqrt(d))}x{round(math.sqrt(d))} "
            f"centred filters have at most {d - 1} directions"
        )
    if scatter is None:
        scatter = weighted_scatter(filters, weights)
    _, vecs = torch.linalg.eigh(scatter)
    top = vecs[:, -n_keys:].flip(1).T
    top = top * torch.sign(top.gather(1, top.abs().argmax(dim=1, keepdim=True)))
    k = round(math.sqrt(d))
    return top.reshape(n_keys, k, k).to(torch.float32)


def baseline_keysets(
    method: str,
    filters: Tensor,
    n_keys: int,
    weights: Tensor | None = None,
    seeds: Sequence[int] = (0,),
    kmeans_init: int = 4,
    provenance: dict | None = None,
    kmeans_sample_size: int = KMEANS_SAMPLE,
    pca_scatter: Tensor | None = None,
    device: str | torch.device | None = None,
) -> list[KeySet]:
    """The key sets of one baseline at ``n_keys`` keys (one per seed for ``random``; ``impulse`` / ``paper8``
    ignore ``n_keys``). ``filters`` are the bank's usable filters [N, k, k] of one kernel size.

    ``kmeans_sample_size``: see :func:`spherical_kmeans`; ``pca_scatter``: see :func:`pca_keys`."""
    if method not in _BASELINE_BUILDERS:
        raise MasterkeyError(f"unknown baseline {method!r}: expected one of {', '.join(BASELINES)}")
    request = _BaselineRequest(
        filters, n_keys, weights, seeds, kmeans_init, dict(provenance or {}), kmeans_sample_size, pca_scatter, device
    )
    return _BASELINE_BUILDERS[method](request)


@dataclass
class _BaselineRequest:
    """What :func:`baseline_keysets` was asked for, handed to the builder of one method."""

    filters: Tensor
    n_keys: int
    weights: Tensor | None
    seeds: Sequence[int]
    kmeans_init: int
    provenance: dict
    kmeans_sample_size: int
    pca_scatter: Tensor | None
    device: str | torch.device | None

    @property
    def kernel_size(self) -> int:
        return int(self.filters.shape[-1])


def _kmeans_baseline(r: _BaselineRequest) -> list[KeySet]:
    keys, _ = spherical_kmeans(
        r.filters,
        r.n_keys,
        r.weights,
        seed=r.seeds[0],
        n_init=r.kmeans_init,
        sample_size=r.kmeans_sample_size,
        device=r.device,
        score=False,
    )
    prov = r.provenance | {"method": "spherical sign-invariant k-means", "seed": r.seeds[0], "n_init": r.kmeans_init}
    if len(r.filters) > r.kmeans_sample_size:
        prov.update(sample=r.kmeans_sample_size, of_filters=len(r.filters))
    return [KeySet(f"kmeans{r.n_keys}", keys, prov)]


def _pca_baseline(r: _BaselineRequest) -> list[KeySet]:
    prov = r.provenance | {"method": "PCA top-K of the weighted scatter"}
    scatter = r.pca_scatter if r.pca_scatter is not None else weighted_scatter(r.filters, r.weights, r.device)
    return [KeySet(f"pca{r.n_keys}", pca_keys(r.filters, r.n_keys, r.weights, scatter), prov)]


#: The baselines by name: each builds its key sets from a :class:`_BaselineRequest` (the one place a new baseline
#: is added; :data:`BASELINES` lists the default ones in their order).
_BASELINE_BUILDERS: dict[str, Callable[[_BaselineRequest], list[KeySet]]] = {
    "kmeans": _kmeans_baseline,
    "pca": _pca_baseline,
    "random": lambda r: [load_keys(f"random:{r.n_keys}:{s}", kernel_size=r.kernel_size) for s in r.seeds],
    "impulse": lambda r: [load_keys("impulse", kernel_size=r.kernel_size)],
    "paper8": lambda r: [load_keys("paper8", kernel_size=r.kernel_size, resize=True)],
}
