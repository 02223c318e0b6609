"""What every discovery shares: training the autoencoders (:func:`train_stack`), one or two rounds of candidates +
greedy path (:func:`run_rounds`, returning :class:`Rounds`), and the one rule that picks the round and the set that
become the keys (:func:`choose_round`, :meth:`Rounds.chosen`). Both the main pipeline
(:mod:`masterkey.discover.pipeline`) and the universality check (:mod:`masterkey.discover.universality`) build on
this module."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from masterkey.discover.autoencoder import TrainedAutoencoder
from masterkey.discover.candidates import Candidates, latent_grid, make_candidates, resample_around
from masterkey.discover.greedy import GreedyPath, greedy_backward
from masterkey.discover.objectives import Objective
from masterkey.discover.settings import DiscoverConfig
from masterkey.discover.training import train_autoencoders
from masterkey.errors import MasterkeyError, option

__all__ = ["ObjectiveFactory", "Rounds", "choose_round", "run_rounds", "train_stack"]

ObjectiveFactory = Callable[[Tensor], Objective]


def choose_round(paths: Sequence[GreedyPath], sizes: Sequence[int], n_keys: int, rule: str = "best") -> int | None:
    """Index (0-based) of the round whose greedy set of ``n_keys`` keys is kept, or None when no round's path has
    a set of that size. ``rule="best"``: the round with the larger objective there (the first wins ties);
    ``"last"``: the last round that has such a set. ``sizes`` are the rounds' candidate counts."""
    reach = [r for r, (p, size) in enumerate(zip(paths, sizes, strict=True)) if min(p.n_keys) <= n_keys <= size]
    if not reach:
        return None
    if rule == "last":
        return reach[-1]
    values = [paths[r].objective_at(n_keys) for r in reach]
    return reach[values.index(max(values))]


@dataclass
class Rounds:
    """What :func:`run_rounds` found: per round its candidates, objective and greedy path."""

    autoencoder: TrainedAutoencoder
    candidates: list[Candidates]
    objectives: list[Objective]
    paths: list[GreedyPath]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def elbows(self) -> dict[int, int]:
        """The elbow of each round's path (round numbers from 1)."""
        return {i + 1: p.elbow() for i, p in enumerate(self.paths)}

    def chosen(self, config: DiscoverConfig) -> tuple[int, tuple[int, ...]]:
        """``(round index, candidate indices)`` of the keys: the round per ``config.keep_round`` (judged at K), then
        its set of K keys (``config.stop="k"``) or of its elbow's size (``"elbow"``)."""
        sizes = [len(c) for c in self.candidates]
        r = choose_round(self.paths, sizes, config.n_keys, config.keep_round)
        if r is None:  # K is not on any path (a path that stops above K cannot happen: floor <= K)
            raise MasterkeyError(f"no round has a set of {config.n_keys} keys")
        size = self.paths[r].elbow() if config.stop == "elbow" else config.n_keys
        return r, self.paths[r].subset_at(size)


def autoencoder_config(config: DiscoverConfig):
    """The autoencoder's configuration within ``config`` (seeded by the discovery's seed)."""
    return replace(config.autoencoder, seed=config.seed)


def train_stack(
    data: Sequence[tuple[Tensor, Tensor]],
    config: DiscoverConfig,
    device: str | torch.device = "cpu",
    checkpoint: Path | None = None,
    progress: bool = False,
    desc: str = "autoencoders",
    width: int | None = None,
) -> tuple[list[TrainedAutoencoder], float]:
    """The autoencoders of several filter sets (``(filters, weights)`` each), trained as one batched model (padded
    to ``width``), and the seconds that took."""
    t0 = time.perf_counter()
    found = train_autoencoders(data, autoencoder_config(config), device, checkpoint, progress, desc, width=width)
    return found, time.perf_counter() - t0


def _autoencoder_notes(ae: TrainedAutoencoder) -> list[str]:
    notes = []
    if ae.resumed_from:
        notes.append(f"autoencoder resumed from a checkpoint at step {ae.resumed_from}")
    return notes


def run_rounds(
    filters: Tensor,
    config: DiscoverConfig,
    objective_factory: ObjectiveFactory,
    autoencoder: TrainedAutoencoder,
    device: str | torch.device = "cpu",
    checkpoint_dir: Path | None = None,
    tag: str = "main",
    progress: bool = False,
) -> Rounds:
    """One or two rounds of candidates + greedy path from a trained ``autoencoder`` of ``filters`` (the core of
    :func:`masterkey.discover.discover_keys`)."""
    k = int(filters.shape[-1])
    notes = _autoencoder_notes(autoencoder)
    latents = autoencoder.encode(filters)
    t0 = time.perf_counter()
    first = make_candidates(autoencoder, latent_grid(latents, config.n_candidates, config.spacing), config.dedupe)
    if len(first) < config.n_keys:
        removed = "near-duplicates and constants removed" if config.dedupe is not None else "constants removed"
        raise MasterkeyError(
            f"{k}x{k}: {option('n_keys', config.n_keys, flag='-k')} is larger than the {len(first)} distinct "
            f"candidates the autoencoder gave (of {config.n_candidates}, {removed}); lower "
            f"{option('n_keys', flag='-k')} or raise {option('n_candidates', flag='--candidates')}"
        )

    def greedy(objective: Objective, round_: int) -> GreedyPath:
        return greedy_backward(
            objective,
            floor=config.floor,
            checkpoint=checkpoint_dir / f"k{k}-{tag}-greedy-r{round_}.json" if checkpoint_dir is not None else None,
            progress=progress,
            desc=f"{k}x{k} greedy r{round_}",
        )

    objective = objective_factory(first.keys)
    found = Rounds(autoencoder, [first], [objective], [greedy(objective, 1)], notes)
    if config.rounds == 2:
        best = max(config.round2_best, config.n_keys)
        if len(first) <= best:
            notes.append(f"second round skipped: only {len(first)} candidates, not more than the best {best}")
        else:
            centres = first.latents[list(found.paths[0].subset_at(best))]
            second = make_candidates(autoencoder, resample_around(centres, config.n_candidates), config.dedupe)
            if len(second) < config.n_keys:
                notes.append(
                    f"second round skipped: {len(second)} distinct candidates around the best {best}, fewer than K"
                )
            else:
                found.candidates.append(second)
                found.objectives.append(objective_factory(second.keys))
                found.paths.append(greedy(found.objectives[1], 2))
    found.timings["greedy_s"] = time.perf_counter() - t0
    return found
