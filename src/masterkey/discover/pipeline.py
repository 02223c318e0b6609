"""The discovery pipeline for one kernel size, and for every kernel size of a bank (docs/design.md, pipeline step 3).

autoencoder (1-D latent) → candidates (decoded evenly spaced latents) → greedy backward elimination under an
objective → [second round: resample latents around the best 10, repeat] → keys; then baselines (k-means, PCA,
random, impulse, paper8) and the least-squares-combination upper bound, scored on the same bank with the same
objective; optionally the leave-one-source-out universality check.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from masterkey.bank import FilterBank
from masterkey.discover.autoencoder import TrainedAutoencoder, cpu_threads
from masterkey.discover.baselines import baseline_keysets, weighted_scatter
from masterkey.discover.candidates import Candidates
from masterkey.discover.chunks import BLOCK, blocks, is_large, row_chunks
from masterkey.discover.greedy import GreedyPath
from masterkey.discover.objectives import Objective, VarianceObjective, source_weights
from masterkey.discover.rounds import DiscoverConfig, ObjectiveFactory, run_rounds
from masterkey.discover.universality import leave_one_source_out
from masterkey.errors import MasterkeyError, option
from masterkey.keys import KeySet
from masterkey.normalize import EXCLUDED, excluded_counts
from masterkey.progress import progress_bar
from masterkey.stats import mean_ci95


@dataclass
class Discovery:
    """What a discovery on one kernel size found."""

    kernel_size: int
    objective: str
    keys: KeySet
    candidates: list[Candidates]  #: per round
    paths: list[GreedyPath]  #: per round
    final_round: int
    baselines: pd.DataFrame  #: method, n_keys, objective, span_objective, ci95, n_seeds, round
    baseline_keys: dict[str, KeySet]
    autoencoder: TrainedAutoencoder
    n_filters: int
    sources: list[str]
    config: DiscoverConfig
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    universality: pd.DataFrame | None = None

    @property
    def elbows(self) -> dict[int, int]:
        return {i + 1: p.elbow() for i, p in enumerate(self.paths)}

    def path_frame(self) -> pd.DataFrame:
        """``path.csv``: round, n_keys, objective, removed (the candidate index within that round's candidates)."""
        return pd.concat([p.to_frame(i + 1) for i, p in enumerate(self.paths)], ignore_index=True)

    def comparison(self) -> pd.DataFrame:
        """Objective vs K: one row per set size, one column per method (random: mean, with ``random_ci95``)."""
        table = self.baselines
        if table.empty:
            return pd.DataFrame({"n_keys": pd.Series(dtype=int)})
        out = table.pivot_table(index="n_keys", columns="method", values="objective", aggfunc="first")
        order = [m for m in ("discovered", "kmeans", "pca", "random", "paper8", "impulse") if m in out.columns]
        out = out[order + [c for c in out.columns if c not in order]]
        if "random" in set(table["method"]):
            ci = table[table["method"] == "random"].set_index("n_keys")["ci95"]
            out["random_ci95"] = ci.reindex(out.index)
        out.columns.name = None
        return out.reset_index()

    def summary(self) -> dict[str, Any]:
        k = len(self.keys)
        return {
            "kernel_size": self.kernel_size,
            "objective": self.objective,
            "n_keys": k,
            "objective_at_k": self.paths[self.final_round - 1].objective_at(k),
            "final_round": self.final_round,
            "elbows": {str(r): e for r, e in self.elbows.items()},
            "n_filters": self.n_filters,
            "sources": self.sources,
            "n_candidates": [len(c) for c in self.candidates],
            "evaluations": [p.evaluations for p in self.paths],
            "keys": {
                "labels": self.keys.key_labels(),
                "latents": self.keys.provenance.get("latents"),
                "shares": self.keys.provenance.get("shares"),
            },
            "autoencoder": {
                "config": asdict(self.autoencoder.config),
                "final_loss": self.autoencoder.losses[-1][1] if self.autoencoder.losses else None,
                "resumed_from_step": self.autoencoder.resumed_from,
            },
            "comparison": self.comparison().to_dict(orient="records"),
            "baselines": self.baselines.to_dict(orient="records"),
            "universality": None if self.universality is None else self.universality.to_dict(orient="records"),
            "timings_s": self.timings,
            "notes": self.notes,
            **self.extra,
        }


def prepare_filters(bank: FilterBank, kernel_size: int) -> tuple[Tensor, np.ndarray, dict[str, int]]:
    """The usable k x k filters of ``bank``, centred and unit-normed, their source labels, and how many filters of
    that size were excluded (non-finite, all-zero, constant) and why.

    The bank is read and normalised chunk by chunk into one float32 tensor, so memory holds the filters once.
    """
    if len(bank) == 0:
        raise MasterkeyError(f"{bank.path}: the bank (or query) holds no filters")
    sizes = bank.kernel_sizes
    if kernel_size not in sizes:
        listed = ", ".join(f"{s}x{s}" for s in sizes)
        raise MasterkeyError(f"{bank.path}: has no {kernel_size}x{kernel_size} filters (it holds {listed})")
    of_size = (bank.metadata["kernel_size"] == kernel_size).to_numpy()
    flags = bank.metadata["flags"].to_numpy()
    excluded = excluded_counts(flags[of_size])
    usable = bank.select(of_size & ((flags & int(EXCLUDED)) == 0))
    if len(usable) == 0:
        raise MasterkeyError(
            f"{bank.path}: none of its {int(of_size.sum())} {kernel_size}x{kernel_size} filters is usable "
            f"(excluded: {excluded})"
        )
    out = torch.empty(len(usable), kernel_size, kernel_size)
    start = 0
    for _, chunk in usable.iter_filters(kernel_size):
        for rows in row_chunks(len(chunk), BLOCK) if is_large(len(usable)) else [slice(0, len(chunk))]:
            # center_norm's arithmetic without its flag check: the bank flagged these filters when it was written
            # and usable() left out every excluded one (the check cost 5 s per million filters).
            flat = chunk[rows].reshape(rows.stop - rows.start, -1)
            centred = flat - flat.mean(dim=1, keepdim=True)
            unit = centred / torch.linalg.vector_norm(centred, dim=1, keepdim=True)
            out[start + rows.start : start + rows.stop] = unit.reshape(-1, kernel_size, kernel_size)
        start += len(chunk)
    return out, usable.metadata["source"].to_numpy(), excluded


def _check_filters(filters: Tensor, out: Tensor | None = None) -> Tensor:
    """Centred unit-norm float32 copies of ``filters`` [N, k, k] (normalised in float64, block by block), written to
    ``out`` if given (which may be ``filters`` itself); one clear error for empty, non-finite or constant input."""
    if filters.ndim != 3 or filters.shape[1] != filters.shape[2]:
        raise MasterkeyError(f"discover: expected filters of shape [N, k, k], got {tuple(filters.shape)}")
    if filters.shape[0] == 0:
        raise MasterkeyError("discover: no filters (the bank or selection is empty)")
    if filters.shape[-1] < 2:
        raise MasterkeyError(f"discover: {filters.shape[-1]}x{filters.shape[-1]} filters have no spatial structure")
    n = int(filters.shape[0])
    out = out if out is not None else torch.empty(filters.shape, dtype=torch.float32, device=filters.device)
    nonfinite, constant = 0, False
    for rows in blocks(n):
        flat = filters[rows].reshape(rows.stop - rows.start, -1).to(torch.float64)
        centred = flat - flat.mean(dim=1, keepdim=True)
        norms = centred.norm(dim=1)
        # A NaN or Inf anywhere in a row makes its norm NaN or Inf.
        finite = torch.isfinite(norms)
        nonfinite += int((~finite).sum())
        constant = constant or bool((norms <= 1e-12 * flat.norm(dim=1).clamp_min(1e-300)).any())
        out[rows] = (centred / norms[:, None]).reshape(out[rows].shape).to(torch.float32)
    if nonfinite:
        raise MasterkeyError(
            f"discover: {nonfinite} of {n} filters hold NaN or Inf; exclude them first "
            "(a bank does so itself: FilterBank.usable())"
        )
    if constant:
        raise MasterkeyError("discover: some filters are constant or all-zero; exclude them first")
    return out


def _shares(filters: Tensor, keys: Tensor, weights: Tensor, device: torch.device) -> Tensor:
    """The weight of the filters whose best key (largest cos²) each key is, block by block."""
    kmat = keys.reshape(len(keys), -1).double().to(device)
    shares = torch.zeros(len(keys), dtype=torch.float64, device=device)
    for rows in blocks(len(filters)):
        cos2 = (filters[rows].reshape(rows.stop - rows.start, -1).to(device).double() @ kmat.T).square()
        shares.index_add_(0, cos2.argmax(dim=1), weights[rows].to(device))
    return shares.cpu()


def discover_keys(
    filters: Tensor,
    sources: Sequence[str] | np.ndarray | None = None,
    config: DiscoverConfig | None = None,
    objective_factory: ObjectiveFactory | None = None,
    objective_name: str | None = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
    provenance: dict[str, Any] | None = None,
    with_baselines: bool = True,
    copy: bool = True,
) -> Discovery:
    """Discover ``config.n_keys`` keys from ``filters`` [N, k, k] of one kernel size.

    ``sources`` labels each filter's source; with ``config.weighting == "source"`` every source weighs the same in
    the autoencoder's sampling and in the data-free objective. ``objective_factory(candidates)`` builds the greedy
    objective (default: :class:`VarianceObjective` on these filters); the baselines are scored with the same
    objective. ``checkpoint_dir`` makes an interrupted run resume (autoencoder and greedy paths).

    On CPU the work runs with ``config.cpu_threads`` torch threads (1 by default): its matrices are small, and on
    shared cores waiting OpenMP threads made it several times slower (see ``docs/discover.md``). Every pass over
    the filters goes block by block, so memory holds the filters once (float32) plus a few numbers per filter;
    ``copy=False`` normalises ``filters`` in place rather than in a copy (the tensor is overwritten). With a CUDA
    ``device`` the filters move there once and every stage runs there.
    """
    config = config or DiscoverConfig()
    with cpu_threads(config.cpu_threads if torch.device(device).type == "cpu" else None):
        return _discover_keys(
            filters,
            sources,
            config,
            objective_factory,
            objective_name,
            device,
            checkpoint_dir,
            progress,
            provenance,
            with_baselines,
            copy,
        )


def _discover_keys(
    filters: Tensor,
    sources: Sequence[str] | np.ndarray | None,
    config: DiscoverConfig,
    objective_factory: ObjectiveFactory | None,
    objective_name: str | None,
    device: str | torch.device,
    checkpoint_dir: str | Path | None,
    progress: bool,
    provenance: dict[str, Any] | None,
    with_baselines: bool,
    copy: bool,
) -> Discovery:
    start = time.perf_counter()
    x = _check_filters(filters, out=None if copy else filters).to(device)
    n, k = int(x.shape[0]), int(x.shape[-1])
    if config.n_keys > n:
        raise MasterkeyError(
            f"{option('n_keys', config.n_keys, flag='-k')} is larger than the number of usable filters ({n})"
        )
    src = np.asarray(sources if sources is not None else ["filters"] * n)
    if src.shape != (n,):
        raise MasterkeyError(f"discover: {len(src)} source labels for {n} filters")
    weights = source_weights(src if config.weighting == "source" else None, n)
    if objective_factory is None:

        def objective_factory(candidates: Tensor) -> Objective:
            return VarianceObjective(x, candidates, weights, device=device)

        objective_name = "variance"
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    ae, cands, paths, objectives, notes, timings = run_rounds(
        x, weights, config, objective_factory, device, ckpt_dir, "main", progress
    )
    at_k = [
        p.objective_at(config.n_keys) if config.n_keys <= len(c) else -math.inf
        for p, c in zip(paths, cands, strict=True)
    ]
    final = int(np.argmax(at_k))  # first round wins ties
    subset = list(paths[final].subset_at(config.n_keys))
    keys = cands[final].keys[subset]
    latents = cands[final].latents[subset]
    shares = _shares(x, keys, weights, x.device)
    order = torch.argsort(shares, descending=True, stable=True)
    keys, latents, shares = keys[order], latents[order], shares[order]
    sources_list = list(dict.fromkeys(src.tolist()))
    prov = {
        **(provenance or {}),
        "method": "1-D-latent autoencoder -> candidates -> greedy backward elimination",
        "objective": objective_name or getattr(objectives[0], "name", "custom"),
        "kernel_size": k,
        "sources": sources_list,
        "n_filters": n,
        "seed": config.seed,
        "round": final + 1,
        "latents": [round(float(z), 6) for z in latents],
        "shares": [round(float(s), 6) for s in shares],
    }
    keyset = KeySet(f"discovered{config.n_keys}-{k}x{k}", keys, prov, tuple(f"z={float(z):.3f}" for z in latents))
    disc = Discovery(
        kernel_size=k,
        objective=prov["objective"],
        keys=keyset,
        candidates=cands,
        paths=paths,
        final_round=final + 1,
        baselines=pd.DataFrame(),
        baseline_keys={},
        autoencoder=ae,
        n_filters=n,
        sources=sources_list,
        config=config,
        timings=timings,
        notes=notes,
    )
    if with_baselines:
        t0 = time.perf_counter()
        scored = score_baselines(
            x, weights, config, objectives[0], paths, cands, provenance=provenance, progress=progress, device=device
        )
        disc.baselines, disc.baseline_keys = scored.table, scored.keysets
        disc.notes.extend(scored.notes)
        disc.extra.update(scored.extra)
        disc.timings["baselines_s"] = time.perf_counter() - t0
    disc.timings["total_s"] = time.perf_counter() - start
    return disc


@dataclass
class BaselineScores:
    """What :func:`score_baselines` returns."""

    table: pd.DataFrame  #: method, n_keys, objective, span_objective, ci95, n_seeds, round
    keysets: dict[str, KeySet]  #: each baseline's key set at K
    notes: list[str]  #: what was skipped or subsampled
    extra: dict[str, Any]  #: ``subsampled`` (what, sample size, of how many) and ``baseline_timings_s``


def _discovered_sets(
    sizes: Sequence[int], paths: Sequence[GreedyPath], cands: Sequence[Candidates]
) -> list[tuple[int, float, int, KeySet]]:
    """``(size, objective, round, keys)`` of the best round's greedy set at each size the paths reach."""
    found = []
    for size in sizes:
        best = None
        for r, (p, c) in enumerate(zip(paths, cands, strict=True)):
            if size <= len(c) and size >= min(p.n_keys):
                val = p.objective_at(size)
                if best is None or val > best[1]:
                    best = (size, val, r + 1, KeySet("d", c.keys[list(p.subset_at(size))]))
        if best is not None:
            found.append(best)
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
) -> BaselineScores:
    """The comparison table (discovered along the paths, and every baseline at each compared set size) and the
    baselines' key sets at K. ``span_objective`` (data-free objectives only) is the score when every filter is a
    least-squares combination of all the set's keys.

    Every key set is built first; then a data-free objective scores them all in one pass over the filters
    (an objective without ``score_many`` scores them one by one)."""
    n = int(filters.shape[0])
    sizes = sorted({s for s in (*config.compare_k, config.n_keys) if 1 <= s <= n})
    discovered = _discovered_sets(sizes, paths, cands)
    built, notes, timings = _build_baselines(filters, weights, config, sizes, provenance or {}, progress, device)
    t0 = time.perf_counter()
    every = [keys for *_, keys in discovered] + [s for *_, sets in built for s in sets]
    score_many = getattr(objective, "score_many", None)
    scores = score_many(every) if score_many is not None else [(objective.score_keys(s), None) for s in every]
    timings["scoring"] = time.perf_counter() - t0
    span = iter([math.nan if sp is None else sp.value for _, sp in scores])
    value = iter([math.nan if sc is None else sc.value for sc, _ in scores])
    rows: list[dict[str, Any]] = []
    for size, val, round_, _ in discovered:
        next(value)
        rows.append(
            {
                "method": "discovered",
                "n_keys": size,
                "objective": val,
                "span_objective": next(span),
                "ci95": math.nan,
                "n_seeds": 1,
                "round": round_,
            }
        )
    keysets: dict[str, KeySet] = {}
    for method, size, sets in built:
        values = [next(value) for _ in sets]
        mean, ci = mean_ci95(values)
        rows.append(
            {
                "method": method,
                "n_keys": len(sets[0]),
                "objective": mean,
                "span_objective": float(np.mean([next(span) for _ in sets])),
                "ci95": ci,
                "n_seeds": len(sets),
                "round": math.nan,
            }
        )
        if size is None or size == config.n_keys:
            keysets[method] = sets[0]
    extra: dict[str, Any] = {"baseline_timings_s": timings}
    if any(method == "kmeans" for method, *_ in built) and n > config.kmeans_sample:
        notes.append(
            f"kmeans: keys learned on a seeded sample of {config.kmeans_sample:,} of the {n:,} filters (drawn with "
            "the objective's weights), then polished and scored on all of them"
        )
        extra["subsampled"] = {"kmeans": {"sample": config.kmeans_sample, "of_filters": n}}
    table = pd.DataFrame(rows, columns=["method", "n_keys", "objective", "span_objective", "ci95", "n_seeds", "round"])
    return BaselineScores(table, keysets, notes, extra)


@dataclass
class AccuracySetup:
    """What the accuracy objective needs: a model, a held-out split of its *training* data, its preprocessing."""

    model: torch.nn.Module
    images: Any  #: :class:`masterkey.data.memory.ImageSet`, the held-out split
    prep: Any  #: :class:`masterkey.data.preprocessing.Preprocessing`
    batch_size: int = 256
    description: dict[str, Any] = field(default_factory=dict)  #: model / weights / data / split, for provenance


def discover_bank(
    bank: FilterBank,
    kernel_sizes: Sequence[int] | None = None,
    config: DiscoverConfig | None = None,
    accuracy: AccuracySetup | None = None,
    universality: bool = False,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[int, Discovery]:
    """Run :func:`discover_keys` on each kernel size of ``bank`` (all by default), one at a time.

    With ``accuracy`` the greedy objective and the baselines are scored by the model's held-out accuracy (only
    the model's depthwise layers of the kernel size being discovered are swapped); the data-free objective
    otherwise. ``universality`` adds the leave-one-source-out table for kernel sizes with several sources.
    """
    config = config or DiscoverConfig()
    with cpu_threads(config.cpu_threads if torch.device(device).type == "cpu" else None):
        return _discover_bank(bank, kernel_sizes, config, accuracy, universality, device, checkpoint_dir, progress)


def _discover_bank(
    bank: FilterBank,
    kernel_sizes: Sequence[int] | None,
    config: DiscoverConfig,
    accuracy: AccuracySetup | None,
    universality: bool,
    device: str | torch.device,
    checkpoint_dir: str | Path | None,
    progress: bool,
) -> dict[int, Discovery]:
    from masterkey.discover.objectives import AccuracyObjective

    if len(bank) == 0:
        raise MasterkeyError(f"{bank.path}: the bank (or query) holds no filters")
    sizes = list(kernel_sizes) if kernel_sizes else bank.kernel_sizes
    missing = [s for s in sizes if s not in bank.kernel_sizes]
    if missing:
        held = ", ".join(f"{s}x{s}" for s in bank.kernel_sizes)
        raise MasterkeyError(
            f"{bank.path}: has no {missing[0]}x{missing[0]} filters (it holds {held}); choose "
            f"{option('kernel_sizes', flag='--kernel-size')} among them"
        )
    provenance_base = {"bank": str(bank.path)}
    results: dict[int, Discovery] = {}
    for k in progress_bar(sizes, desc="kernel sizes", unit="size", enabled=progress and len(sizes) > 1, leave=True):
        filters, sources, excluded = prepare_filters(bank, k)
        factory = None
        name = "variance"
        if accuracy is not None:
            setup = accuracy

            def factory(candidates: Tensor, setup: AccuracySetup = setup) -> Objective:
                return AccuracyObjective(
                    setup.model, setup.images, setup.prep, candidates, device=device, batch_size=setup.batch_size
                )

            name = "accuracy"
        # Universality needs the filters as prepared; otherwise they are normalised in place (held once).
        several = universality and len(pd.unique(sources)) > 1
        disc = discover_keys(
            filters,
            sources,
            config,
            objective_factory=factory,
            objective_name=name,
            device=device,
            checkpoint_dir=checkpoint_dir,
            progress=progress,
            provenance={**provenance_base, **(accuracy.description if accuracy else {})},
            copy=several,
        )
        disc.extra["excluded"] = excluded
        if accuracy is not None:
            probe = factory(disc.candidates[0].keys)  # type: ignore[misc]
            disc.extra["unswapped_objective"] = probe.unswapped().value
            disc.extra["accuracy"] = {
                **accuracy.description,
                "held_out_images": len(accuracy.images),
                "swapped_layers": len(probe.layers),  # type: ignore[attr-defined]
                "layers_left_alone": probe.skipped_layers,  # type: ignore[attr-defined]
            }
        if universality:
            if len(disc.sources) < 2:
                disc.notes.append(f"universality skipped: the {k}x{k} filters come from one source only")
            else:
                t0 = time.perf_counter()
                disc.universality = leave_one_source_out(
                    filters,
                    sources,
                    config,
                    device=device,
                    checkpoint_dir=checkpoint_dir,
                    progress=progress,
                )
                counts = pd.Series(sources).value_counts()
                largest = int(len(sources) - counts.min()) if len(counts) > 2 else int(counts.max())
                if largest > config.kmeans_sample:
                    disc.notes.append(
                        f"universality: k-means keys of source sets larger than {config.kmeans_sample:,} filters "
                        "were learned on a seeded sample of that many"
                    )
                disc.timings["universality_s"] = time.perf_counter() - t0
                disc.timings["total_s"] += disc.timings["universality_s"]
        results[k] = disc
    return results
