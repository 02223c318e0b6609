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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from masterkey.discover.baselines import spherical_kmeans
from masterkey.discover.objectives import VarianceObjective, explained_variance, source_weights
from masterkey.discover.rounds import DiscoverConfig, run_rounds
from masterkey.errors import MasterkeyError
from masterkey.progress import progress_bar

COLUMNS = ["keys_from", "fitted_to", "objective", "own_objective", "kmeans_objective", "kmeans_own_objective"]


def _discover_on(
    filters: Tensor,
    sources: np.ndarray,
    config: DiscoverConfig,
    device: str | torch.device,
    checkpoint_dir: Path | None,
    tag: str,
) -> tuple[Tensor, Tensor]:
    """(discovered keys, k-means keys) at K for these filters (no baselines, no plots)."""
    weights = source_weights(sources if config.weighting == "source" else None, len(filters))

    def factory(candidates: Tensor) -> VarianceObjective:
        return VarianceObjective(filters, candidates, weights, device=device)

    _, cands, paths, _, _, _ = run_rounds(filters, weights, config, factory, device, checkpoint_dir, tag, False)
    at_k = [p.objective_at(config.n_keys) for p in paths]
    best = int(np.argmax(at_k))
    keys = cands[best].keys[list(paths[best].subset_at(config.n_keys))]
    kmeans, _ = spherical_kmeans(
        filters,
        config.n_keys,
        weights,
        seed=config.seed,
        n_init=config.kmeans_init,
        sample_size=config.kmeans_sample,
        device=device,
        score=False,
    )
    return keys, kmeans


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
    bar = progress_bar(jobs, desc=f"{k}x{k} universality", unit="set", enabled=progress)
    for kind, name in bar:
        i = names.index(name)
        mask = src == name if kind == "own" else src != name
        rows = torch.from_numpy(mask).to(filters.device)
        result = _discover_on(filters[rows], src[mask], config, device, ckpt, f"{kind}{i}")
        (own if kind == "own" else loso)[name] = result
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
