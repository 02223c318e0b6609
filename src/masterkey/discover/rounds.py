"""What every discovery shares: its configuration (:class:`DiscoverConfig`) and its core, :func:`run_rounds`
(autoencoder, then one or two rounds of candidates + greedy path). Both the main pipeline
(:mod:`masterkey.discover.pipeline`) and the universality check (:mod:`masterkey.discover.universality`) build on
this module."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from masterkey.discover.autoencoder import AutoencoderConfig, TrainedAutoencoder, train_autoencoder
from masterkey.discover.baselines import BASELINES, KMEANS_SAMPLE
from masterkey.discover.candidates import SPACINGS, Candidates, latent_grid, make_candidates, resample_around
from masterkey.discover.greedy import GreedyPath, greedy_backward
from masterkey.discover.objectives import Objective
from masterkey.errors import MasterkeyError, option

ObjectiveFactory = Callable[[Tensor], Objective]
WEIGHTINGS = ("source", "filter")


@dataclass(frozen=True)
class DiscoverConfig:
    """Everything that shapes a discovery (saved in ``run.json`` and the keys' provenance)."""

    n_keys: int = 8  #: K, the size of the final key set
    n_candidates: int = 50  #: latents decoded per round
    spacing: str = "range"  #: how latents are spread (see :func:`masterkey.discover.candidates.latent_grid`)
    dedupe: float = 0.995  #: candidates with |cos| at least this with an earlier one are dropped
    rounds: int = 2  #: 1, or 2 for the paper's second round around the best ``round2_best``
    round2_best: int = 10
    floor: int = 1  #: the greedy path goes down to this many keys (the elbow needs the path below K)
    weighting: str = "source"  #: "source" (every source counts equally) or "filter" (every filter does)
    compare_k: tuple[int, ...] = (1, 2, 4, 8, 16)  #: set sizes of the comparison table (K is always added)
    baselines: tuple[str, ...] = BASELINES
    random_seeds: int = 10  #: seeds of the random baseline (mean and 95% CI)
    kmeans_init: int = 3  #: k-means restarts
    kmeans_sample: int = KMEANS_SAMPLE  #: k-means learns on a seeded sample of at most this many filters
    seed: int = 0  #: seeds the autoencoder (and k-means)
    cpu_threads: int | None = 1  #: torch CPU threads during discovery (None: leave torch's setting); see below
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)

    def __post_init__(self) -> None:
        if self.n_keys < 1:
            raise MasterkeyError(
                f"{option('n_keys', flag='-k')}: the number of keys must be at least 1, got {self.n_keys}"
            )
        if self.n_candidates < 2:
            raise MasterkeyError(
                f"{option('n_candidates', flag='--candidates')} must be at least 2, got {self.n_candidates}"
            )
        if self.n_keys > self.n_candidates:
            raise MasterkeyError(
                f"{option('n_keys', self.n_keys, flag='-k')} is larger than the candidate count {self.n_candidates}; "
                f"lower {option('n_keys', flag='-k')} or raise {option('n_candidates', flag='--candidates')}"
            )
        if self.rounds not in (1, 2):
            raise MasterkeyError(f"{option('rounds')} must be 1 or 2, got {self.rounds}")
        if not 1 <= self.floor <= self.n_keys:
            raise MasterkeyError(
                f"{option('floor', flag='--path-to')} must lie in 1..K ({self.n_keys}), got {self.floor}"
            )
        if self.spacing not in SPACINGS:
            raise MasterkeyError(f"{option('spacing', repr(self.spacing))}: expected one of {', '.join(SPACINGS)}")
        if self.weighting not in WEIGHTINGS:
            raise MasterkeyError(
                f"{option('weighting', repr(self.weighting))}: expected one of {', '.join(WEIGHTINGS)}"
            )
        if not 0 < self.dedupe <= 1:
            raise MasterkeyError(f"{option('dedupe')} must lie in (0, 1], got {self.dedupe}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise MasterkeyError(f"unknown baseline(s) {unknown}: expected some of {', '.join(BASELINES)}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise MasterkeyError(
                f"{option('cpu_threads', flag='--threads')} must be at least 1, got {self.cpu_threads}"
            )
        largest = max((*self.compare_k, self.n_keys))
        if self.kmeans_sample < largest:
            raise MasterkeyError(
                f"{option('kmeans_sample', self.kmeans_sample)}: k-means needs at least as many filters as keys "
                f"({largest})"
            )
        if self.random_seeds < 1:
            raise MasterkeyError(f"{option('random_seeds')} must be at least 1, got {self.random_seeds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_rounds(
    filters: Tensor,
    weights: Tensor,
    config: DiscoverConfig,
    objective_factory: ObjectiveFactory,
    device: str | torch.device = "cpu",
    checkpoint_dir: Path | None = None,
    tag: str = "main",
    progress: bool = False,
) -> tuple[TrainedAutoencoder, list[Candidates], list[GreedyPath], list[Objective], list[str], dict[str, float]]:
    """Autoencoder, then one or two rounds of candidates + greedy path (the core of :func:`discover_keys`)."""
    k = int(filters.shape[-1])
    notes: list[str] = []
    timings: dict[str, float] = {}
    ae_config = replace(config.autoencoder, seed=config.seed, cpu_threads=config.cpu_threads)
    ckpt = (lambda name: checkpoint_dir / f"k{k}-{tag}-{name}") if checkpoint_dir is not None else (lambda name: None)
    t0 = time.perf_counter()
    ae = train_autoencoder(
        filters, weights, ae_config, device=device, checkpoint=ckpt("ae.pt"), progress=progress, desc=f"{k}x{k} ae"
    )
    timings["autoencoder_s"] = time.perf_counter() - t0
    if ae.resumed_from:
        notes.append(f"autoencoder resumed from a checkpoint at step {ae.resumed_from}")
    latents = ae.encode(filters)
    t0 = time.perf_counter()
    cands = [make_candidates(ae, latent_grid(latents, config.n_candidates, config.spacing), config.dedupe)]
    if len(cands[0]) < config.n_keys:
        raise MasterkeyError(
            f"{k}x{k}: {option('n_keys', config.n_keys, flag='-k')} is larger than the {len(cands[0])} distinct "
            f"candidates the autoencoder gave (of {config.n_candidates}, near-duplicates removed); lower "
            f"{option('n_keys', flag='-k')} or raise {option('n_candidates', flag='--candidates')}"
        )

    def greedy(objective: Objective, round_: int) -> GreedyPath:
        return greedy_backward(
            objective,
            floor=config.floor,
            checkpoint=ckpt(f"greedy-r{round_}.json"),
            progress=progress,
            desc=f"{k}x{k} greedy r{round_}",
        )

    objectives = [objective_factory(cands[0].keys)]
    paths = [greedy(objectives[0], 1)]
    if config.rounds == 2:
        best = max(config.round2_best, config.n_keys)
        if len(cands[0]) <= best:
            notes.append(f"second round skipped: only {len(cands[0])} candidates, not more than the best {best}")
        else:
            centres = cands[0].latents[list(paths[0].subset_at(best))]
            second = make_candidates(ae, resample_around(centres, config.n_candidates), config.dedupe)
            if len(second) < config.n_keys:
                notes.append(
                    f"second round skipped: {len(second)} distinct candidates around the best {best}, fewer than K"
                )
            else:
                cands.append(second)
                objectives.append(objective_factory(second.keys))
                paths.append(greedy(objectives[1], 2))
    timings["greedy_s"] = time.perf_counter() - t0
    return ae, cands, paths, objectives, notes, timings
