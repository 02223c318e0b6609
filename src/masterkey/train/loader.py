"""The streamed training path, and the choice between it and the in-memory one.

Images are decoded by DataLoader worker processes while the model trains (memory: a few batches per worker,
whatever the data set size; pinned memory and non-blocking copies on CUDA). Determinism does not depend on the
workers or the world size:

- the global batch of step ``s`` in epoch ``e`` is ``global_batch(epoch_order(N, seed, e), s)`` — the in-memory
  path's — and each rank reads its contiguous slice (:class:`StepBatchSampler`, which can start at any step: exact
  mid-epoch resume);
- per-image randomness (timm's RandomResizedCrop, RandAugment, random erasing) is seeded from ``(seed, epoch,
  sample index)`` inside the worker (:class:`TrainSamples`); per-batch randomness (the pad-crop / flip of the
  ``cifar`` recipe, mixup / cutmix) is drawn exactly as in memory, so for the ``cifar`` recipe both paths train to
  the same weights.

A training image that cannot be decoded is left out of its batch, counted (``skipped_images`` in the metrics) and
named in a warning — a run should not die at hour 30 for one file; more than 1% of an epoch unreadable stops it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from masterkey.errors import MasterkeyError, option
from masterkey.images import ImageSet, decode_image, open_rgb
from masterkey.stream import (
    DataMode,
    Samples,
    StreamedImages,
    choose_data_mode,
    decode_all,
    default_workers,
    list_samples,
)
from masterkey.train import data as D
from masterkey.train.distributed import Distributed, run_on_main, shard_batch

log = logging.getLogger("masterkey")
#: A streamed epoch stops when more than this fraction of its images could not be decoded: a damaged data set.
MAX_SKIPPED_FRACTION = 0.01


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python's, numpy's and torch's global generators (which timm's transforms draw from) for one image. In the
    main process (``workers=0``) the previous states are put back afterwards, so that loading leaves the training
    RNG alone; a worker process owns its generators (and numpy's state round trip costs ~0.2 ms an image)."""
    in_main = torch.utils.data.get_worker_info() is None
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if in_main else None
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # The CPU generator alone: torch.manual_seed would also queue a lazy CUDA seeding (with a formatted stack
    # trace, about 7 ms) for every image.
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if states is not None:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


def worker_transform(config: Any, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """timm's training transform (``create_transform(is_training=True)``): RandomResizedCrop to ``size`` (or, for
    ``train_crop='pad'``, a random crop with reflect padding of the fixed-geometry image), flip, the
    ``auto_augment`` policy, normalisation and random erasing (per-pixel noise)."""
    from timm.data import create_transform
    from torchvision import transforms

    transform = create_transform(
        input_size=size,
        is_training=True,
        hflip=0.5 if config.hflip else 0.0,
        auto_augment=config.auto_augment,
        interpolation=config.interpolation,
        mean=mean,
        std=std,
        re_prob=config.re_prob,
        re_mode="pixel",
        re_count=1,
    )
    if config.train_crop == "pad":  # as ConvNeXt-V2's datasets.py does for 32-pixel images
        if config.crop_padding > 0:
            transform.transforms[0] = transforms.RandomCrop(size, padding=config.crop_padding, padding_mode="reflect")
        else:
            transform.transforms.pop(0)
    return pillow_safe_posterize(transform)


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:  # what ImageOps.posterize did for 0 bits before Pillow refused it: every value to 0
        return img.point([0] * 256 * len(img.getbands()))
    from PIL import ImageOps

    return ImageOps.posterize(img, bits_to_keep)


def pillow_safe_posterize(transform: Any) -> Any:
    """``transform`` with the posterize of its RandAugment / AutoAugment ops made safe for current Pillow.

    At the top magnitude (10, reached by ``rand-m9-mstd0.5``'s noise on about 2% of its draws) timm's
    PosterizeIncreasing asks Pillow to keep 0 bits, which Pillow used to answer with a black image and now refuses
    ("bits must be between or equal to 1 and 8"), killing the loader worker. The old answer is restored for the ops
    of this transform only."""
    from timm.data import auto_augment

    for t in getattr(transform, "transforms", [transform]):
        for op in getattr(t, "ops", []):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


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
            with seeded(D.derive_seed(self.seed, epoch, i, "augment")):
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
        self.steps = D.steps_per_epoch(n_images, batch_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = D.epoch_order(self.n_images, self.seed, self.epoch)
        for step in range(self.start, self.steps):
            index = shard_batch(D.global_batch(order, step, self.batch_size), self.rank, self.world_size)
            yield [(self.epoch, int(i)) for i in index]


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    torch.set_num_threads(1)
    if info is not None:
        info.dataset.samples.worker_init()


class StreamBatches:
    """Batches of the streamed path (the same interface as :class:`~masterkey.train.data.MemoryBatches`)."""

    stream = True

    def __init__(
        self,
        dataset: TrainSamples,
        config: Any,
        info: Distributed,
        device: torch.device,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        workers: int,
    ) -> None:
        self.config, self.info, self.device = config, info, device
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        self.sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, info.rank, info.world_size)
        self.steps = self.sampler.steps
        self.per_sample = dataset.transform is not None
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=_train_collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=_worker_init if workers else None,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers else None,
            generator=torch.Generator().manual_seed(D.derive_seed(config.seed, "loader")),  # not the global RNG
        )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[D.StepBatch]:
        config = self.config
        per_rank = config.batch_size // self.info.world_size
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
                x = D.normalize_images(x, self.mean, self.std)
                mask = None if bool(keep.all()) else keep.to(self.device)
                x = D.device_augment(x, config, epoch, step, self.info.rank, per_rank, keep=mask)
            yield D.StepBatch(x, y, index, wait, errors)


def _batch_error(config: Any, errors: list[str], epoch: int, step: int) -> str:
    if errors and "cannot decode" not in errors[0]:
        return f"{config.data}: {errors[0]}; pass {option('image_size', 'N')} to make them equal"
    return f"every image of a batch (epoch {epoch + 1}, step {step + 1}) was unreadable: {errors[0]}"


@dataclass
class TrainInputs:
    """What the training loop reads: the chosen data path, the batches, the test images, and facts about them."""

    mode: DataMode
    batches: D.MemoryBatches | StreamBatches
    test: ImageSet | StreamedImages
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    n_train: int
    n_test: int
    image_shape: tuple[int, int, int]
    source: str  #: the training split, for messages
    workers: int


def _split_samples(config: Any) -> tuple[Samples, Samples]:
    if config.dataset:
        train = list_samples(config.data, config.dataset, "train")
        test = list_samples(config.data, config.dataset, "validation")
    else:
        train_dir, test_dir = D.find_splits(config.data)
        train, test = list_samples(train_dir), list_samples(test_dir)
    D.check_same_classes(train.classes, test.classes, f"{option('data', config.data)}: the train and test splits")
    keep_train = D.subset_positions(train.labels, len(train.classes), config.max_train_images)
    keep_test = D.subset_positions(test.labels, len(test.classes), config.max_test_images)
    return (
        train.subset(keep_train) if keep_train is not None else train,
        test.subset(keep_test) if keep_test is not None else test,
    )


def _choose(config: Any, train: Samples, test: Samples, device: torch.device) -> tuple[DataMode, tuple[int, ...]]:
    resize = D.eval_resize(config.image_size, config.crop_pct)
    shape = StreamedImages(test, resize, config.image_size, config.interpolation).image_shape()
    needs = None
    if config.worker_augment:
        what = ["RandomResizedCrop"] if config.train_crop == "rrc" else []
        what += [f"auto_augment {config.auto_augment}"] if config.auto_augment else []
        what += [f"random erasing {config.re_prob}"] if config.re_prob > 0 else []
        needs = f"the per-image augmentation ({', '.join(what)}) runs in DataLoader workers"
    mode = choose_data_mode(
        config.data_mode,
        len(train) + len(test),
        shape,
        what=f"{config.data} (train + test)",
        budget=config.memory_budget,
        device=device,
        needs_stream=needs,
    )
    return mode, shape


def open_train_inputs(config: Any, info: Distributed, device: torch.device) -> TrainInputs:
    """List the splits, choose the data path (rank 0 decides and logs one line; every rank follows), and open it."""
    train, test = _split_samples(config)
    mode, shape = run_on_main(info, lambda: _choose(config, train, test, device))
    if info.is_main:
        log.info(f"data: {mode.reason}")
    workers = config.workers if config.workers is not None else default_workers()
    resize = D.eval_resize(config.image_size, config.crop_pct)
    test_images = StreamedImages(test, resize, config.image_size, config.interpolation)
    train_fixed = StreamedImages(train, resize, config.image_size, config.interpolation)
    root = Path(config.data)
    if not mode.stream:
        data = _memory_data(config, info, train_fixed, test_images, workers)
        return TrainInputs(
            mode, D.MemoryBatches(data, config, info.rank, info.world_size, device),
            ImageSet(data.test.images.to(device), data.test.labels.to(device), data.classes, data.test.root),
            data.classes, data.mean, data.std, len(data.train), len(data.test), data.image_shape, train.root, workers,
        )  # fmt: skip
    mean, std = run_on_main(info, lambda: D.normalization(config.normalize, root, train_fixed, workers))
    if config.worker_augment:
        size = config.image_size or shape[-1]
        transform = worker_transform(config, size, mean, std)
        fixed = config.train_crop == "pad"
        dataset = TrainSamples(train, resize, config.image_size, config.interpolation, transform, fixed, config.seed)
        image_shape = (3, size, size)
    else:
        dataset = TrainSamples(train, resize, config.image_size, config.interpolation, seed=config.seed)
        image_shape = tuple(shape)
    batches = StreamBatches(dataset, config, info, device, mean, std, workers)
    return TrainInputs(
        mode, batches, test_images, train.classes, mean, std, len(train), len(test), image_shape, train.root, workers
    )


def _memory_data(
    config: Any, info: Distributed, train: StreamedImages, test: StreamedImages, workers: int
) -> D.TrainData:
    """The in-memory data: ImageFolder trees through the decoded-image cache (rank 0 fills it first, the other
    ranks then read it), anything else (tar shards, timm data sets) decoded here."""
    if not config.dataset and all(s.samples.from_folder for s in (train, test)):

        def load() -> D.TrainData:
            return D.load_train_data(
                config.data, config.image_size, config.max_train_images, config.max_test_images, config.normalize,
                config.crop_pct, config.interpolation,
            )  # fmt: skip

        loaded: list[D.TrainData] = []
        run_on_main(info, lambda: loaded.append(load()))
        return loaded[0] if loaded else load()
    train_set = decode_all(train, workers)
    test_set = decode_all(test, workers)
    mean, std = D.normalization(config.normalize, Path(config.data), train_set)
    return D.TrainData(train_set, test_set, train.classes, mean, std, Path(train.root), Path(test.root))
