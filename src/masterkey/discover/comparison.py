"""The comparison table of a discovery: the discovered sets along the greedy paths and every baseline at each
compared set size, scored on the same filters with the same objective (``baselines.csv``)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from masterkey.discover.baselines import baseline_keysets, weighted_scatter
from masterkey.discover.candidates import Candidates
from masterkey.discover.greedy import GreedyPath
from masterkey.discover.objectives import Objective
from masterkey.discover.rounds import choose_round
from masterkey.discover.settings import DiscoverConfig
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet
from masterkey.progress import progress_bar
from masterkey.stats import mean_ci95

__all__ = ["COLUMNS", "BaselineScores", "BuiltBaselines", "build_baselines", "score_baselines"]

#: The columns of ``baselines.csv``.
COLUMNS = ["method", "n_keys", "objective", "span_objective", "ci95", "n_seeds", "round"]


@dataclass
class BaselineScores:
    """What :func:`score_baselines` returns."""

    table: pd.DataFrame  #: :data:`COLUMNS`, one row per method and set size
    keysets: dict[str, KeySet]  #: each baseline's key set at K
    notes: list[str] = field(default_factory=list)  #: what was skipped or subsampled
    subsampled: dict[str, dict[str, int]] = field(default_factory=dict)  #: method -> sample size, of how many
    timings: dict[str, float] = field(default_factory=dict)  #: seconds per method, and for scoring them all


@dataclass
class BuiltBaselines:
    """Every baseline's key sets at every compared size, before scoring (:func:`build_baselines`)."""

    sets: list[tuple[str, int | None, list[KeySet]]]  #: ``(method, size or None, key sets)``
    notes: list[str]  #: baselines skipped, and why
    timings: dict[str, float]  #: seconds per method


def compared_sizes(n: int, config: DiscoverConfig) -> list[int]:
    """The set sizes of the comparison table for ``n`` filters: ``config.compare_k`` and K."""
    return sorted({s for s in (*config.compare_k, config.n_keys) if 1 <= s <= n})


def build_baselines(
    filters: Tensor,
    weights: Tensor,
    config: DiscoverConfig,
    provenance: dict[str, Any] | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> BuiltBaselines:
    """Every baseline's key sets at every compared size; they depend on the filters and weights only (not on the
    discovered keys nor the objective), so a discovery may build them while its autoencoder trains."""
    sizes = compared_sizes(int(filters.shape[0]), config)
    return BuiltBaselines(*_build_baselines(filters, weights, config, sizes, provenance or {}, progress, device))


def _discovered_sets(
    sizes: Sequence[int], paths: Sequence[GreedyPath], cands: Sequence[Candidates], rule: str
) -> list[tuple[int, float, int, KeySet]]:
    """``(size, objective, round, keys)`` of the chosen round's greedy set at each size the paths reach."""
    found = []
    for size in sizes:
        r = choose_round(paths, [len(c) for c in cands], size, rule)
        if r is not None:
            keys = KeySet("d", cands[r].keys[list(paths[r].subset_at(size))])
            found.append((size, paths[r].objective_at(size), r + 1, keys))
    return found


def _build_baselines(
    filters: Tensor,
    weights: Tensor,
    config: DiscoverConfig,
    sizes: Sequence[int],
    provenance: dict[str, Any],
    progress: bool,
    device: str | torch.device | None,
) -> tuple[list[tuple[str, int | None, list[KeySet]]], list[str], dict[str, float]]:
    """Every baseline's key sets at every compared size (``(method, size, sets)``), notes, seconds per method."""

    k = int(filters.shape[-1])
    seeds = list(range(config.seed, config.seed + config.random_seeds))
    jobs = [(m, s) for m in config.baselines for s in (sizes if m in ("kmeans", "pca", "random") else [None])]
    built: list[tuple[str, int | None, list[KeySet]]] = []
    notes: list[str] = []
    timings: dict[str, float] = {}
    scatter = None
    bar = progress_bar(jobs, desc=f"{k}x{k} baselines", unit="set", enabled=progress)
    for method, size in bar:
        if method == "pca" and size is not None and size >= k * k:
            continue  # k x k centred filters span only k*k - 1 directions
        t0 = time.perf_counter()
        if method == "pca" and scatter is None:
            scatter = weighted_scatter(filters, weights, device)  # one pass, shared by every K
        try:
            sets = baseline_keysets(
                method,
                filters,
                size or 1,
                weights,
                seeds=seeds if method == "random" else [config.seed],
                kmeans_init=config.kmeans_init,
                provenance={**provenance, "kernel_size": k, "seed": config.seed},
                kmeans_sample_size=config.kmeans_sample,
                pca_scatter=scatter,
                device=device,
            )
        except MasterkeyError as exc:
            notes.append(f"baseline {method} skipped: {exc}")
            continue
        finally:
            timings[method] = timings.get(method, 0.0) + time.perf_counter() - t0
        built.append((method, size, sets))
    return built, notes, timings


def score_baselines(
    filters: Tensor,
    weights: Tensor,
    config: DiscoverConfig,
    objective: Objective,
    paths: Sequence[GreedyPath],
    cands: Sequence[Candidates],
    provenance: dict[str, Any] | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
    built: BuiltBaselines | None = None,
) -> BaselineScores:
    """The comparison table (discovered along the paths, and every baseline at each compared set size) and the
    baselines' key sets at K. ``span_objective`` (data-free objectives only; NaN otherwise) is the score when every
    filter is a least-squares combination of all the set's keys.

    Every key set is built first; then a data-free objective scores them all in one pass over the filters
    (an objective without ``score_many`` scores them one by one). ``built``: the baselines'
    key sets already built (:func:`build_baselines` of the same filters, weights and config)."""
    n = int(filters.shape[0])
    sizes = compared_sizes(n, config)
    discovered = _discovered_sets(sizes, paths, cands, config.keep_round)
    if built is None:
        built = build_baselines(filters, weights, config, provenance, progress, device)
    notes, timings = list(built.notes), dict(built.timings)
    t0 = time.perf_counter()
    every = [keys for *_, keys in discovered] + [s for *_, sets in built.sets for s in sets]
    score_many = getattr(objective, "score_many", None)
    scores = score_many(every) if score_many is not None else [(objective.score_keys(s), None) for s in every]
    timings["scoring"] = time.perf_counter() - t0
    span = iter([math.nan if sp is None else sp.value for _, sp in scores])
    value = iter([math.nan if sc is None else sc.value for sc, _ in scores])
    rows: list[dict[str, Any]] = []
    for size, val, round_, _ in discovered:
        next(value)
        row = {"method": "discovered", "n_keys": size, "objective": val, "span_objective": next(span)}
        rows.append({**row, "ci95": math.nan, "n_seeds": 1, "round": round_})
    keysets: dict[str, KeySet] = {}
    for method, size, sets in built.sets:
        values = [next(value) for _ in sets]
        mean, ci = mean_ci95(values)
        spans = [next(span) for _ in sets]
        row = {"method": method, "n_keys": len(sets[0]), "objective": mean, "span_objective": float(np.mean(spans))}
        rows.append({**row, "ci95": ci, "n_seeds": len(sets), "round": math.nan})
        if size is None or size == config.n_keys:
            keysets[method] = sets[0]
    subsampled = {}
    if any(method == "kmeans" for method, *_ in built.sets) and n > config.kmeans_sample:
        notes.append(
            f"kmeans: keys learned on a seeded sample of {config.kmeans_sample:,} of the {n:,} filters (drawn with "
            "the objective's weights), then polished and scored on all of them"
        )
        subsampled["kmeans"] = {"sample": config.kmeans_sample, "of_filters": n}
    table = pd.DataFrame(rows, columns=COLUMNS)
    return BaselineScores(table, keysets, notes, subsampled, timings)


def matched_cos(a: KeySet | Tensor, b: KeySet | Tensor) -> np.ndarray:
    """|cos| of the keys of ``a`` with their partners in ``b`` under the one-to-one matching that maximises the sum
    of |cos| (Hungarian; the sign of a key is free), in ``a``'s order; a key left without a partner (``b`` is
    smaller) gets 0. Both sets are centred and unit-normed first."""
    from scipy.optimize import linear_sum_assignment

    from masterkey.normalize import unit_rows

    ka, kb = (unit_rows(s.keys if isinstance(s, KeySet) else s) for s in (a, b))
    cos = (ka @ kb.T).abs().numpy()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    out = np.zeros(len(ka))
    out[rows] = cos[rows, cols]
    return out
