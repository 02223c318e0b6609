"""Training batches, in memory or streamed, in an order that depends only on ``(seed, epoch)``.

- the global batch of step ``s`` in epoch ``e`` is ``global_batch(epoch_order(N, seed, e), s)`` and each rank reads
  its contiguous slice (:func:`shard_batch`), from any step on (exact mid-epoch resume);
- :class:`MemoryBatches`: the whole uint8 training set on the device, gathered, normalised, cropped and flipped there;
- :class:`StreamBatches`: images decoded by DataLoader workers (:class:`TrainSamples`, :class:`StepBatchSampler`),
  with per-image transforms in the workers or the in-memory path's per-batch augmentation on the device: for the
  ``cifar`` recipe both paths train to the same weights.

A streamed training image that cannot be decoded is left out of its batch, counted (``skipped_images`` in the
metrics) and named in a warning — a run should not die at hour 30 for one file; more than
:data:`MAX_SKIPPED_FRACTION` of an epoch unreadable stops it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from masterkey.data.augment import derive_seed, device_augment, generator, seeded
from masterkey.data.decode import decode_image, open_rgb
from masterkey.data.preprocessing import normalize_images
from masterkey.data.samples import Samples, worker_init
from masterkey.data.training import TrainData
from masterkey.errors import MasterkeyError, option

#: A streamed epoch stops when more than this fraction of its images could not be decoded: a damaged data set.
MAX_SKIPPED_FRACTION = 0.01


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped, so every step has the same size)."""
    steps = n_images // batch_size
    if steps == 0:
        raise MasterkeyError(f"batch size {batch_size} exceeds the {n_images} training images; use a smaller batch")
    return steps


def epoch_order(n_images: int, seed: int, epoch: int) -> Tensor:
    """The permutation of the training images used in ``epoch`` (a function of seed and epoch only)."""
    return torch.randperm(n_images, generator=generator(seed, epoch, "order"))


def global_batch(order: Tensor, step: int, batch_size: int) -> Tensor:
    """Indices of the ``step``-th global batch of an epoch."""
    return order[step * batch_size : (step + 1) * batch_size]


def shard_batch(global_batch: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's contiguous slice of a global batch of indices; the slices are disjoint and cover the batch.

    The global batch size must be a multiple of ``world_size`` so that every rank does the same work.
    """
    n = len(global_batch)
    if n % world_size:
        raise MasterkeyError(f"batch size {n} is not a multiple of the {world_size} processes; choose another")
    per = n // world_size
    return global_batch[rank * per : (rank + 1) * per]


def shard_eval(n: int, rank: int, world_size: int) -> Tensor:
    """Indices ``rank, rank + world_size, ...`` of ``n`` evaluation items: disjoint, covering, no padding
    (sums are all-reduced, so uneven shards are exact)."""
    return torch.arange(rank, max(n, rank), world_size)


@dataclass
class StepBatch:
    """One step's share of the global batch on this rank, ready for the model (normalised and augmented)."""

    x: Tensor
    y: Tensor
    index: Tensor  #: sample indices of the images in ``x`` (into the training set)
    wait: float = 0.0  #: seconds this rank waited for the batch
    skipped: list[str] = field(default_factory=list)  #: unreadable images left out (their error lines)


class MemoryBatches:
    """Batches of the in-memory path: the whole uint8 training set on the device, gathered, normalised, cropped and
    flipped there per step. ``epoch(e, start)`` yields the steps ``start ...`` of epoch ``e``."""

    stream = False

    def __init__(self, data: TrainData, config: Any, rank: int, world_size: int, device: torch.device) -> None:
        self.config, self.rank, self.world_size = config, rank, world_size
        self.images, self.labels = data.train.images.to(device), data.train.labels.to(device)
        self.mean = torch.tensor(data.mean, device=device)
        self.std = torch.tensor(data.std, device=device)
        self.device = device
        self.steps = steps_per_epoch(len(data.train), config.batch_size)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[StepBatch]:
        config = self.config
        per_rank = config.batch_size // self.world_size
        order = epoch_order(len(self.labels), config.seed, epoch)
        for step in range(start_step, self.steps):
            index = shard_batch(global_batch(order, step, config.batch_size), self.rank, self.world_size)
            index = index.to(self.device, non_blocking=True)
            x = normalize_images(self.images[index], self.mean, self.std)
            x = device_augment(x, config, epoch, step, self.rank, per_rank)
            yield StepBatch(x, self.labels[index], index)


class TrainSamples(torch.utils.data.Dataset):
    """Training images read by key ``(epoch, index)``: decoded with the fixed geometry (``train_crop='pad'``) and,
    with a ``transform``, augmented one by one under a generator seeded from ``(seed, epoch, index)``. Returns
    ``(image or None, label, error, index)``."""

    def __init__(
        self,
        samples: Samples,
        resize: int | None,
        crop: int | None,
        interpolation: str,
        transform: Any = None,
        fixed_geometry: bool = True,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.resize, self.crop, self.interpolation = resize, crop, interpolation
        self.transform, self.fixed_geometry, self.seed = transform, fixed_geometry, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor | None, int, str, int]:
        from torchvision.transforms.functional import to_pil_image

        epoch, i = key
        label = int(self.samples.labels[i])
        try:
            source, name = self.samples.open(i), self.samples.name(i)
            if self.transform is None:
                return decode_image(source, self.resize, self.crop, self.interpolation, name=name), label, "", i
            if self.fixed_geometry:
                image = to_pil_image(decode_image(source, self.resize, self.crop, self.interpolation, name=name))
            else:
                image = open_rgb(source, name)
            with seeded(derive_seed(self.seed, epoch, i, "augment")):
                return self.transform(image), label, "", i
        except MasterkeyError as exc:
            return None, label, str(exc), i


def _train_collate(items: list[tuple[Tensor | None, int, str, int]]) -> tuple[Any, ...]:
    keep = torch.tensor([img is not None for img, _, _, _ in items])
    errors = [err for _, _, err, _ in items if err]
    good = [(img, lab, i) for img, lab, _, i in items if img is not None]
    if not good:
        return None, None, None, keep, errors
    shapes = {tuple(img.shape) for img, _, _ in good}
    if len(shapes) > 1:
        return None, None, None, keep, [f"images have different sizes ({', '.join(map(str, sorted(shapes)[:2]))})"]
    images = torch.stack([img for img, _, _ in good])
    labels = torch.tensor([lab for _, lab, _ in good])
    index = torch.tensor([i for _, _, i in good])
    return images, labels, index, keep, errors


class StepBatchSampler:
    """This rank's share of each global batch of an epoch, as ``(epoch, index)`` keys, from a given step on
    (set by :meth:`set_epoch` before each pass)."""

    def __init__(self, n_images: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.n_images, self.batch_size, self.seed = n_images, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps = steps_per_epoch(n_images, batch_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.n_images, self.seed, self.epoch)
        for step in range(self.start, self.steps):
            index = shard_batch(global_batch(order, step, self.batch_size), self.rank, self.world_size)
            yield [(self.epoch, int(i)) for i in index]


class StreamBatches:
    """Batches of the streamed path (the same interface as :class:`MemoryBatches`)."""

    stream = True

    def __init__(
        self,
        dataset: TrainSamples,
        config: Any,
        rank: int,
        world_size: int,
        device: torch.device,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        workers: int,
    ) -> None:
        self.config, self.rank, self.world_size, self.device = config, rank, world_size, device
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        self.sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, rank, world_size)
        self.steps = self.sampler.steps
        self.per_sample = dataset.transform is not None
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=_train_collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=worker_init if workers else None,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers else None,
            generator=torch.Generator().manual_seed(derive_seed(config.seed, "loader")),  # not the global RNG
        )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[StepBatch]:
        config = self.config
        per_rank = config.batch_size // self.world_size
        self.sampler.set_epoch(epoch, start_step)
        batches = iter(self.loader)
        for step in range(start_step, self.steps):
            start = time.perf_counter()
            x, y, index, keep, errors = next(batches)
            wait = time.perf_counter() - start
            if x is None:
                raise MasterkeyError(_batch_error(config, errors, epoch, step))
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if not self.per_sample:
                x = normalize_images(x, self.mean, self.std)
                mask = None if bool(keep.all()) else keep.to(self.device)
                x = device_augment(x, config, epoch, step, self.rank, per_rank, keep=mask)
            yield StepBatch(x, y, index, wait, errors)


def _batch_error(config: Any, errors: list[str], epoch: int, step: int) -> str:
    if errors and errors[0].startswith("images have different sizes"):
        return f"{config.data}: {errors[0]}; pass {option('image_size', 'N')} to make them equal"
    return f"every image of a batch (epoch {epoch + 1}, step {step + 1}) was unreadable: {errors[0]}"
