"""Universality check: do keys discovered on some sources explain the filters of another?

For every source S of one kernel size (at least two sources needed):

* leave-one-source-out: keys discovered on all other sources, fitted to S (``keys_from = "all but S"``; with two
  sources this is the pairwise row below);
* own: keys discovered on S alone, fitted to S (in-sample, so an optimistic reference);
* pairwise: keys discovered on each other source T alone, fitted to S (``keys_from = T``).

Every key set comes from the same pipeline as the main discovery (autoencoder → candidates → greedy, data-free
objective); the ``kmeans_*`` columns repeat the check with spherical k-means keys, which needs no autoencoder.
The score is the mean cos² of S's filters under their best single-key fits (S's filters weighted equally).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from masterkey.discover.baselines import spherical_kmeans
from masterkey.discover.chunks import ONE_PASS
from masterkey.discover.objectives import VarianceObjective, explained_variance, source_weights
from masterkey.discover.rounds import run_rounds, train_stack
from masterkey.discover.settings import DiscoverConfig
from masterkey.errors import MasterkeyError
from masterkey.progress import progress_bar

COLUMNS = ["keys_from", "fitted_to", "objective", "own_objective", "kmeans_objective", "kmeans_own_objective"]


#: The autoencoders of the universality check's source sets train in stacks of at most this many filters in all
#: (each set is a copy of its filters while its stack trains).
STACK_FILTERS = 4 * ONE_PASS


def _discover_on(
    jobs: list[tuple[Tensor, np.ndarray]],
    config: DiscoverConfig,
    device: str | torch.device,
    checkpoint_dir: Path | None,
    tags: list[str],
) -> list[tuple[Tensor, Tensor]]:
    """(discovered keys, k-means keys) at K for each ``(filters, sources)`` set (no baselines, no plots); their
    autoencoders train together as one batched model."""
    weights = [source_weights(src if config.weighting == "source" else None, len(x)) for x, src in jobs]
    name = "-".join(tags)
    aes, _ = train_stack(
        [(x, w) for (x, _), w in zip(jobs, weights, strict=True)],
        config,
        device,
        checkpoint_dir / f"k{int(jobs[0][0].shape[-1])}-{name}-ae.pt" if checkpoint_dir is not None else None,
    )
    out = []
    for (x, _), w, ae, tag in zip(jobs, weights, aes, tags, strict=True):

        def factory(candidates: Tensor, x: Tensor = x, w: Tensor = w) -> VarianceObjective:
            return VarianceObjective(x, candidates, w, device=device)

        found = run_rounds(x, config, factory, ae, device, checkpoint_dir, tag, False)
        final, subset = found.chosen(replace(config, stop="k"))  # universality compares sets of K keys
        keys = found.candidates[final].keys[list(subset)]
        kmeans, _ = spherical_kmeans(
            x, config.n_keys, w, seed=config.seed, n_init=config.kmeans_init, sample_size=config.kmeans_sample,
            device=device, score=False,
        )  # fmt: skip
        out.append((keys, kmeans))
    return out


def _stacks(sizes: list[int]) -> list[list[int]]:
    """Consecutive groups of job indices whose filter counts add up to at most :data:`STACK_FILTERS` (a larger
    job alone)."""
    groups: list[list[int]] = []
    total = 0
    for i, n in enumerate(sizes):
        if not groups or total + n > STACK_FILTERS:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += n
    return groups


def leave_one_source_out(
    filters: Tensor,
    sources: Sequence[str] | np.ndarray,
    config: DiscoverConfig | None = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
    pairwise: bool = True,
) -> pd.DataFrame:
    """The universality table for centred unit-norm ``filters`` [N, k, k] labelled by ``sources``.

    Columns: ``keys_from``, ``fitted_to``, ``objective`` (discovered keys), ``own_objective`` (keys discovered on
    ``fitted_to`` itself), and the same two for k-means keys. Needs at least two sources.
    """
    config = config or DiscoverConfig()
    src = np.asarray(sources)
    names = list(dict.fromkeys(src.tolist()))
    if len(names) < 2:
        raise MasterkeyError(f"universality needs filters from at least two sources, got {names}")
    k = int(filters.shape[-1])
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    own: dict[str, tuple[Tensor, Tensor]] = {}
    loso: dict[str, tuple[Tensor, Tensor]] = {}
    # With two sources, "all but S" is the other source: its own keys serve, and only pairwise rows are written.
    jobs = [("own", s) for s in names] + ([("loso", s) for s in names] if len(names) > 2 else [])
    masks = [src == name if kind == "own" else src != name for kind, name in jobs]
    bar = progress_bar(total=len(jobs), desc=f"{k}x{k} universality", unit="set", enabled=progress)
    for group in _stacks([int(m.sum()) for m in masks]):
        sets = [(filters[torch.from_numpy(masks[j]).to(filters.device)], src[masks[j]]) for j in group]
        tags = [f"{jobs[j][0]}{names.index(jobs[j][1])}" for j in group]
        for j, result in zip(group, _discover_on(sets, config, device, ckpt, tags), strict=True):
            kind, name = jobs[j]
            (own if kind == "own" else loso)[name] = result
            bar.update()
        del sets
    bar.close()
    rows = []
    for target in names:
        x = filters[torch.from_numpy(src == target).to(filters.device)]
        own_d, own_k = (explained_variance(x, keys, device=device) for keys in own[target])
        sets = [(f"all but {target}", loso[target])] if target in loso else []
        if pairwise or len(names) == 2:
            sets += [(other, own[other]) for other in names if other != target]
        for label, (disc, km) in sets:
            rows.append(
                {
                    "keys_from": label,
                    "fitted_to": target,
                    "objective": explained_variance(x, disc, device=device),
                    "own_objective": own_d,
                    "kmeans_objective": explained_variance(x, km, device=device),
                    "kmeans_own_objective": own_k,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)
