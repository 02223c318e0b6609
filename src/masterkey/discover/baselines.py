"""Baseline key sets, scored on the same bank with the same objective as the discovered keys.

* ``kmeans``: spherical, sign-invariant, weighted k-means — each filter joins the key of largest |cos|, each key
  becomes the top eigenvector of its members' weighted scatter ``Σ w x xᵀ`` (the exact maximiser of their cos²).
  It optimises the data-free objective directly, so it is the strongest data-free baseline.
* ``pca``: the top-K principal directions of the weighted (sign-symmetric, hence uncentred) scatter of all
  filters. Their span is the best K-dimensional subspace (Eckart–Young), so PCA's *span* score is the upper bound
  of any K keys mixed per channel.
* ``random``: ``random:K:SEED`` Gaussian keys over several seeds (mean and 95% CI).
* ``impulse``: one centred impulse; ``paper8``: the published 7x7 keys, centre-cropped for smaller kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet, load_keys

BASELINES = ("kmeans", "pca", "random", "impulse", "paper8")


def _unit_rows(filters: Tensor) -> Tensor:
    flat = filters.reshape(filters.shape[0], -1).to(torch.float64)
    flat = flat - flat.mean(dim=1, keepdim=True)
    norms = flat.norm(dim=1, keepdim=True)
    if bool((norms <= 0).any()) or not bool(torch.isfinite(flat).all()):
        raise MasterkeyError("baselines: filters must be finite and non-constant (exclude flagged filters first)")
    return flat / norms


def _weights(weights: Tensor | None, n: int) -> Tensor:
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    return weights.to(torch.float64)


def _top_eigvec(scatter: Tensor) -> Tensor:
    _, vecs = torch.linalg.eigh(scatter)
    v = vecs[:, -1]
    # eigh's sign is arbitrary; fix it (largest-magnitude weight positive) so results are reproducible.
    return v * torch.sign(v[v.abs().argmax()])


def spherical_kmeans(
    filters: Tensor,
    n_keys: int,
    weights: Tensor | None = None,
    seed: int = 0,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-7,
    threads: int | None = 1,
) -> tuple[Tensor, float]:
    """Sign-invariant spherical k-means of centred filters ``[N, k, k]``; returns ``(keys [K, k, k], objective)``.

    Maximises the weighted mean of each filter's best cos² with a key (the data-free objective). Initialised by
    k-means++ with the distance ``1 - cos²``; ``n_init`` restarts, the best kept. Each iteration assigns every
    filter to its key of largest |cos| and moves each key one power-iteration step towards the top eigenvector of
    its members' weighted scatter, ``c ← normalise(Σ w (x·c) x)``; neither step lowers the objective. Iterations
    stop when it gains less than ``tol``; then each key is polished to that eigenvector exactly. Deterministic for
    a seed. ``threads``: torch CPU threads meanwhile (see :func:`masterkey.discover.autoencoder.cpu_threads`).
    """
    from masterkey.discover.autoencoder import cpu_threads

    with cpu_threads(threads):
        return _kmeans(filters, n_keys, weights, seed, n_init, max_iter, tol)


def _kmeans(
    filters: Tensor, n_keys: int, weights: Tensor | None, seed: int, n_init: int, max_iter: int, tol: float
) -> tuple[Tensor, float]:
    x64 = _unit_rows(filters)
    n, d = x64.shape
    if not 1 <= n_keys <= n:
        raise MasterkeyError(f"k-means: cannot make {n_keys} keys from {n} filters")
    w64 = _weights(weights, n)
    x, w = x64.to(torch.float32), w64.to(torch.float32)
    rng = np.random.default_rng(seed)
    rows = torch.arange(n)
    best_keys, best_obj = None, -math.inf
    for _ in range(n_init):
        c = _kmeanspp(x64, w64, n_keys, rng).to(torch.float32)
        previous = -math.inf
        for _ in range(max_iter):
            scores = x @ c.T
            assign = scores.abs().argmax(dim=1)
            best = scores[rows, assign]
            obj = float((best.double().square() * w64).sum())
            if obj - previous <= tol:
                break
            previous = obj
            # Σ_{i in j} w_i (x_i·c_j) x_i for every key j at once.
            coef = torch.zeros(n, n_keys, dtype=x.dtype)
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
    k = round(math.sqrt(d))
    return best_keys.reshape(n_keys, k, k).to(torch.float32), best_obj


def _kmeanspp(x: Tensor, w: Tensor, n_keys: int, rng: np.random.Generator) -> Tensor:
    """k-means++ seeding on ``1 - cos²``, weighted by the filter weights."""
    n = x.shape[0]
    first = int(rng.choice(n, p=(w / w.sum()).numpy()))
    centres = [x[first]]
    gap = 1 - (x @ x[first]).square()
    for _ in range(1, n_keys):
        p = (w * gap.clamp_min(0)).numpy()
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


def pca_keys(filters: Tensor, n_keys: int, weights: Tensor | None = None) -> Tensor:
    """The top ``n_keys`` principal directions [K, k, k] of the weighted scatter of centred unit-norm filters."""
    x = _unit_rows(filters)
    n, d = x.shape
    if not 1 <= n_keys < d:
        raise MasterkeyError(
            f"PCA: {n_keys} keys asked for, but {round(math.sqrt(d))}x{round(math.sqrt(d))} "
            f"centred filters have at most {d - 1} directions"
        )
    w = _weights(weights, n)
    _, vecs = torch.linalg.eigh((x * w[:, None]).T @ x)
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
) -> list[KeySet]:
    """The key sets of one baseline at ``n_keys`` keys (one per seed for ``random``; ``impulse`` / ``paper8``
    ignore ``n_keys``). ``filters`` are the bank's usable filters [N, k, k] of one kernel size."""
    k = int(filters.shape[-1])
    prov = dict(provenance or {})
    if method == "kmeans":
        keys, _ = spherical_kmeans(filters, n_keys, weights, seed=seeds[0], n_init=kmeans_init)
        prov.update(method="spherical sign-invariant k-means", seed=seeds[0], n_init=kmeans_init)
        return [KeySet(f"kmeans{n_keys}", keys, prov)]
    if method == "pca":
        prov.update(method="PCA top-K of the weighted scatter")
        return [KeySet(f"pca{n_keys}", pca_keys(filters, n_keys, weights), prov)]
    if method == "random":
        return [load_keys(f"random:{n_keys}:{s}", kernel_size=k) for s in seeds]
    if method == "impulse":
        return [load_keys("impulse", kernel_size=k)]
    if method == "paper8":
        return [load_keys("paper8", kernel_size=k, resize=True)]
    raise MasterkeyError(f"unknown baseline {method!r}: expected one of {', '.join(BASELINES)}")
