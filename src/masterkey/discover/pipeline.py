"""The discovery pipeline for one kernel size, and for every kernel size of a bank (docs/design.md, pipeline step 3).

autoencoder (1-D latent) → candidates (decoded evenly spaced latents) → greedy backward elimination under an
objective → [second round: resample latents around the best 10, repeat] → keys; then baselines (k-means, PCA,
random, impulse, paper8) and the least-squares-combination upper bound, scored on the same bank with the same
objective; optionally the leave-one-source-out universality check. The autoencoders of a bank's kernel sizes train
together as one batched model (:func:`masterkey.discover.autoencoder.train_autoencoders`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from masterkey.bank import FilterBank
from masterkey.discover.autoencoder import TrainedAutoencoder
from masterkey.discover.chunks import BLOCK, blocks, is_large, row_chunks
from masterkey.discover.comparison import BuiltBaselines, build_baselines, score_baselines
from masterkey.discover.discovery import NULLS, AccuracyRecord, Discovery, objective_unit
from masterkey.discover.objectives import Objective, VarianceObjective, source_weights
from masterkey.discover.rounds import ObjectiveFactory, Rounds, run_rounds, train_stack
from masterkey.discover.settings import DiscoverConfig
from masterkey.discover.universality import leave_one_source_out
from masterkey.errors import MasterkeyError, option
from masterkey.keys import KeySet
from masterkey.normalize import EXCLUDED, FilterFlag, center_norm, excluded_counts, filter_flags, unit_rows
from masterkey.progress import progress_bar
from masterkey.threads import torch_threads

__all__ = [
    "NULLS",
    "AccuracyRecord",
    "AccuracySetup",
    "Discovery",
    "discover_bank",
    "discover_keys",
    "objective_unit",
    "prepare_filters",
]


def prepare_filters(bank: FilterBank, kernel_size: int) -> tuple[Tensor, np.ndarray, dict[str, int]]:
    """The usable k x k filters of ``bank``, centred and unit-normed (float32), their source labels, and how many
    filters of that size were excluded (non-finite, all-zero, constant) and why.

    The bank is read and normalised chunk by chunk into one float32 tensor, so memory holds the filters once.
    """
    if len(bank) == 0:
        raise MasterkeyError(f"{bank.path}: the bank (or query) holds no filters")
    sizes = bank.kernel_sizes
    if kernel_size not in sizes:
        listed = ", ".join(f"{s}x{s}" for s in sizes)
        raise MasterkeyError(f"{bank.path}: has no {kernel_size}x{kernel_size} filters (it holds {listed})")
    of_size = (bank.metadata["kernel_size"] == kernel_size).to_numpy()
    flags = bank.metadata["filter_flags"].to_numpy()
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
        # The bank flagged and excluded unusable filters when it was written: what is left needs no check.
        for rows in row_chunks(len(chunk), BLOCK) if is_large(len(usable)) else [slice(0, len(chunk))]:
            out[start + rows.start : start + rows.stop] = center_norm(chunk[rows], check=False)
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
    for rows in blocks(n):
        try:
            out[rows] = unit_rows(filters[rows]).reshape(out[rows].shape).to(torch.float32)
        except MasterkeyError:
            flags = filter_flags(filters[rows].cpu())
            nonfinite = int(((flags & int(FilterFlag.NONFINITE)) != 0).sum())
            if nonfinite:
                raise MasterkeyError(
                    f"discover: {nonfinite} of {n} filters hold NaN or Inf; exclude them first "
                    "(a bank does so itself: FilterBank.usable())"
                ) from None
            raise MasterkeyError("discover: some filters are constant or all-zero; exclude them first") from None
    return out


def _shares(filters: Tensor, keys: Tensor, weights: Tensor, device: torch.device) -> Tensor:
    """The weight of the filters whose best key (largest cos²) each key is, block by block."""
    kmat = keys.reshape(len(keys), -1).double().to(device)
    shares = torch.zeros(len(keys), dtype=torch.float64, device=device)
    for rows in blocks(len(filters)):
        cos2 = (filters[rows].reshape(rows.stop - rows.start, -1).to(device).double() @ kmat.T).square()
        shares.index_add_(0, cos2.argmax(dim=1), weights[rows].to(device))
    return shares.cpu()


@dataclass
class _Prepared:
    """One kernel size's filters, checked and on the device, with their weights."""

    x: Tensor
    sources: np.ndarray
    weights: Tensor


def _prepare(
    filters: Tensor, sources: Sequence[str] | np.ndarray | None, config: DiscoverConfig, device, copy: bool
) -> _Prepared:
    x = _check_filters(filters, out=None if copy else filters).to(device)
    n = int(x.shape[0])
    if config.n_keys > n:
        raise MasterkeyError(
            f"{option('n_keys', config.n_keys, flag='-k')} is larger than the number of usable filters ({n})"
        )
    src = np.asarray(sources if sources is not None else ["filters"] * n)
    if src.shape != (n,):
        raise MasterkeyError(f"discover: {len(src)} source labels for {n} filters")
    return _Prepared(x, src, source_weights(src if config.weighting == "source" else None, n))


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
    autoencoder: TrainedAutoencoder | None = None,
) -> Discovery:
    """Discover ``config.n_keys`` keys from ``filters`` [N, k, k] of one kernel size.

    ``sources`` labels each filter's source; with ``config.weighting == "source"`` every source weighs the same in
    the autoencoder's sampling and in the data-free objective. ``objective_factory(candidates)`` builds the greedy
    objective (default: :class:`VarianceObjective` on these filters); the baselines are scored with the same
    objective. ``checkpoint_dir`` makes an interrupted run resume (autoencoder and greedy paths). ``autoencoder``:
    one already trained on these filters (:func:`discover_bank` trains a bank's together).

    On CPU the work runs with ``config.cpu_threads`` torch threads (1 by default; see :mod:`masterkey.threads`).
    Every pass over the filters goes block by block, so memory holds the filters once (float32) plus a few numbers
    per filter; ``copy=False`` normalises ``filters`` in place rather than in a copy (the tensor is overwritten).
    With a CUDA ``device`` the filters move there once and every stage runs there.
    """
    config = config or DiscoverConfig()
    with torch_threads(config.cpu_threads, device):
        start = time.perf_counter()
        data = _prepare(filters, sources, config, device, copy)
        return _discover(data, config, objective_factory, objective_name, device, checkpoint_dir, progress,
                         provenance, with_baselines, autoencoder, start)  # fmt: skip


def _discover(
    data: _Prepared,
    config: DiscoverConfig,
    objective_factory: ObjectiveFactory | None,
    objective_name: str | None,
    device: str | torch.device,
    checkpoint_dir: str | Path | None,
    progress: bool,
    provenance: dict[str, Any] | None,
    with_baselines: bool,
    autoencoder: TrainedAutoencoder | None,
    start: float,
    baselines: Future[BuiltBaselines] | None = None,
) -> Discovery:
    """:func:`discover_keys` once its filters are checked (and threads set); ``baselines``: the baselines' key sets
    being built meanwhile (see :func:`discover_bank`)."""
    x, weights = data.x, data.weights
    n, k = int(x.shape[0]), int(x.shape[-1])
    if objective_factory is None:

        def objective_factory(candidates: Tensor) -> Objective:
            return VarianceObjective(x, candidates, weights, device=device)

        objective_name = "variance"
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    if autoencoder is None:
        ckpt = ckpt_dir / f"k{k}-main-ae.pt" if ckpt_dir is not None else None
        (autoencoder,), timings["autoencoder_s"] = train_stack(
            [(x, weights)], config, device, ckpt, progress, f"{k}x{k} autoencoder"
        )
    found: Rounds = run_rounds(x, config, objective_factory, autoencoder, device, ckpt_dir, "main", progress)
    timings.update(found.timings)
    final, subset = found.chosen(config)
    keys = found.candidates[final].keys[list(subset)]
    latents = found.candidates[final].latents[list(subset)]
    shares = _shares(x, keys, weights, x.device)
    if config.order == "share":
        order = torch.argsort(shares, descending=True, stable=True)
        keys, latents, shares = keys[order], latents[order], shares[order]
    sources_list = list(dict.fromkeys(data.sources.tolist()))
    prov = {
        **(provenance or {}),
        "method": "1-D-latent autoencoder -> candidates -> greedy backward elimination",
        "protocol": config.protocol,
        "objective": objective_name or getattr(found.objectives[0], "name", "custom"),
        "kernel_size": k,
        "sources": sources_list,
        "n_filters": n,
        "seed": config.seed,
        "round": final + 1,
        "stop": config.stop,
        "latents": [round(float(z), 6) for z in latents],
        "shares": [round(float(s), 6) for s in shares],
    }
    name = f"discovered{len(keys)}-{k}x{k}"
    keyset = KeySet(name, keys, prov, tuple(f"z={float(z):.3f}" for z in latents))
    disc = Discovery(
        kernel_size=k,
        objective=prov["objective"],
        keys=keyset,
        candidates=found.candidates,
        paths=found.paths,
        final_round=final + 1,
        autoencoder=autoencoder,
        n_filters=n,
        sources=sources_list,
        config=config,
        timings=timings,
        notes=found.notes,
    )
    if config.stop == "elbow":
        disc.notes.append(f"keys: the {len(keys)} at the elbow of round {final + 1}'s path (K={config.n_keys} is "
                          "only compared at)")  # fmt: skip
    if with_baselines:
        t0 = time.perf_counter()
        built = baselines.result() if baselines is not None else None
        scored = score_baselines(
            x, weights, config, found.objectives[0], found.paths, found.candidates, provenance, progress, device,
            built,
        )  # fmt: skip
        disc.baselines, disc.baseline_keys = scored.table, scored.keysets
        disc.notes.extend(scored.notes)
        disc.subsampled, disc.baseline_timings = scored.subsampled, scored.timings
        disc.timings["baselines_s"] = time.perf_counter() - t0
    disc.timings["total_s"] = time.perf_counter() - start
    return disc


@dataclass
class AccuracySetup:
    """What the accuracy objective needs: a model, a held-out split of its *training* data, its preprocessing."""

    model: torch.nn.Module
    images: Any  #: :class:`masterkey.data.memory.ImageSet`, the held-out split
    prep: Any  #: :class:`masterkey.data.preprocessing.Preprocessing`
    batch_size: int = 256
    description: dict[str, Any] = field(default_factory=dict)  #: model / weights / data / split, for provenance

    def factory(self, device: str | torch.device) -> ObjectiveFactory:
        """Builds the accuracy objective for a set of candidates."""
        from masterkey.discover.objectives import AccuracyObjective

        def build(candidates: Tensor) -> Objective:
            return AccuracyObjective(
                self.model, self.images, self.prep, candidates, device=device, batch_size=self.batch_size
            )

        return build


def _check_sizes(bank: FilterBank, kernel_sizes: Sequence[int] | None) -> list[int]:
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
    return sizes


def discover_bank(
    bank: FilterBank,
    kernel_sizes: Sequence[int] | None = None,
    config: DiscoverConfig | None = None,
    accuracy: AccuracySetup | None = None,
    universality: bool = False,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
    with_baselines: bool = True,
) -> dict[int, Discovery]:
    """Run :func:`discover_keys` on each kernel size of ``bank`` (all by default); their autoencoders train
    together as one batched model, then each size's rounds and baselines run in turn.

    With ``accuracy`` the greedy objective and the baselines are scored by the model's held-out accuracy (only
    the model's depthwise layers of the kernel size being discovered are swapped); the data-free objective
    otherwise. ``universality`` adds the leave-one-source-out table for kernel sizes with several sources;
    ``with_baselines=False`` leaves out the comparison table (the keys alone). Memory holds the bank's usable
    filters once (float32).
    """
    config = config or DiscoverConfig()
    sizes = _check_sizes(bank, kernel_sizes)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    with torch_threads(config.cpu_threads, device):
        start = time.perf_counter()
        prepared, excluded = {}, {}
        for k in sizes:
            filters, sources, excluded[k] = prepare_filters(bank, k)
            prepared[k] = _prepare(filters, sources, config, device, copy=False)  # a fresh tensor: held once
        if ckpt_dir is not None:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        provenance = {"bank": str(bank.path), **(accuracy.description if accuracy else {})}
        with _baselines_meanwhile(prepared, config, provenance, device, with_baselines) as baselines:
            results = _discover_sizes(sizes, prepared, excluded, config, accuracy, universality, device, ckpt_dir,
                                      progress, provenance, with_baselines, baselines)  # fmt: skip
        for disc in results.values():
            disc.timings["bank_total_s"] = time.perf_counter() - start
        return results


@contextmanager
def _baselines_meanwhile(
    prepared: dict[int, _Prepared], config: DiscoverConfig, provenance: dict[str, Any], device, wanted: bool
) -> Iterator[dict[int, Future[BuiltBaselines]]]:
    """The baselines' key sets of every kernel size, built in a second thread while the block runs (they need
    neither the autoencoders nor the discovered keys).

    Why: the main job trains its autoencoders on one core; k-means and the other baselines then use the second
    core of a 2-core machine instead of waiting for the training (torch ops release the GIL). Each thread runs its
    ops on one torch thread, so the results are those of building them afterwards. Only while torch runs one CPU
    thread (discovery's default): other counts are set per block of work (k-means sets one), which a second thread
    would change under the first."""
    if not wanted or torch.get_num_threads() != 1:
        yield {}
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="masterkey-baselines")
    try:
        yield {
            k: pool.submit(build_baselines, p.x, p.weights, config, provenance, False, device)
            for k, p in prepared.items()
        }
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _discover_sizes(
    sizes: list[int],
    prepared: dict[int, _Prepared],
    excluded: dict[int, Any],
    config: DiscoverConfig,
    accuracy: AccuracySetup | None,
    universality: bool,
    device: str | torch.device,
    ckpt_dir: Path | None,
    progress: bool,
    provenance: dict[str, Any],
    with_baselines: bool,
    baselines: dict[int, Future[BuiltBaselines]],
) -> dict[int, Discovery]:
    """:func:`discover_bank` from its prepared filters: the autoencoders, then each size's discovery."""
    autoencoders, ae_seconds = _train_autoencoders(sizes, prepared, config, device, ckpt_dir, progress)
    results: dict[int, Discovery] = {}
    bar = progress_bar(sizes, desc="kernel sizes", unit="size", enabled=progress and len(sizes) > 1, leave=True)
    for k, ae in zip(bar, autoencoders, strict=True):
        t0 = time.perf_counter()
        factory = accuracy.factory(device) if accuracy is not None else None
        disc = _discover(prepared[k], config, factory, "accuracy" if accuracy else "variance", device, ckpt_dir,
                         progress, provenance, with_baselines, ae, t0, baselines.get(k))  # fmt: skip
        disc.timings["autoencoders_s"] = ae_seconds
        disc.trained_with = list(sizes)
        disc.excluded = excluded[k]
        if accuracy is not None:
            disc.accuracy = _accuracy_record(accuracy, factory, disc)
        if universality:
            _add_universality(disc, prepared[k], config, device, ckpt_dir, progress)
        results[k] = disc
    return results


def _train_autoencoders(
    sizes: list[int],
    prepared: dict[int, _Prepared],
    config: DiscoverConfig,
    device: str | torch.device,
    ckpt_dir: Path | None,
    progress: bool,
) -> tuple[list[TrainedAutoencoder], float]:
    """The autoencoders of every kernel size, batched, and the seconds they took.

    On one CPU thread with several sizes, the largest size trains in a second thread beside the others' stack, so
    a 2-core machine trains on both cores (torch ops release the GIL, and neither thread waits on the other). Both
    stacks pad to the same width, so every member gets the bits it gets in one stack of all sizes."""
    t0 = time.perf_counter()
    width = max(k * k for k in sizes)

    def train(group: list[int], show: bool) -> list[TrainedAutoencoder]:
        tag = "-".join(f"k{k}" for k in group)
        ckpt = ckpt_dir / f"{tag}-main-ae.pt" if ckpt_dir is not None else None
        desc = "autoencoders " + ", ".join(f"{k}x{k}" for k in group)
        data = [(prepared[k].x, prepared[k].weights) for k in group]
        return train_stack(data, config, device, ckpt, show, desc, width=width)[0]

    if len(sizes) < 2 or torch.device(device).type != "cpu" or torch.get_num_threads() != 1:
        return train(sizes, progress), time.perf_counter() - t0
    with ThreadPoolExecutor(1, thread_name_prefix="masterkey-autoencoder") as pool:
        last = pool.submit(train, sizes[-1:], False)
        first = train(sizes[:-1], progress)
        return [*first, *last.result()], time.perf_counter() - t0


def _accuracy_record(setup: AccuracySetup, factory: ObjectiveFactory, disc: Discovery) -> AccuracyRecord:
    probe = factory(disc.candidates[0].keys)
    return AccuracyRecord(
        description=dict(setup.description),
        held_out_images=len(setup.images),
        swapped_layers=len(probe.layers),  # type: ignore[attr-defined]
        layers_left_alone=list(probe.skipped_layers),  # type: ignore[attr-defined]
        unswapped_objective=probe.unswapped().value,  # type: ignore[attr-defined]
    )


def _add_universality(
    disc: Discovery, data: _Prepared, config: DiscoverConfig, device, ckpt_dir: Path | None, progress: bool
) -> None:
    k = disc.kernel_size
    if len(disc.sources) < 2:
        disc.notes.append(f"universality skipped: the {k}x{k} filters come from one source only")
        return
    t0 = time.perf_counter()
    disc.universality = leave_one_source_out(
        data.x, data.sources, config, device=device, checkpoint_dir=ckpt_dir, progress=progress
    )
    counts = pd.Series(data.sources).value_counts()
    largest = int(len(data.sources) - counts.min()) if len(counts) > 2 else int(counts.max())
    if largest > config.kmeans_sample:
        disc.notes.append(
            f"universality: k-means keys of source sets larger than {config.kmeans_sample:,} filters "
            "were learned on a seeded sample of that many"
        )
    disc.timings["universality_s"] = time.perf_counter() - t0
    disc.timings["total_s"] += disc.timings["universality_s"]
