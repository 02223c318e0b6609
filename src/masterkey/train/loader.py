"""The training data path: list the splits, choose in memory or streamed, and open the batches.

The images themselves — decoding, the (seed, epoch)-derived order, augmentation, the batches of either path — live in
:mod:`masterkey.data` (:mod:`~masterkey.data.batches`, :mod:`~masterkey.data.augment`,
:mod:`~masterkey.data.training`); this module is the training stage's glue: which path, decided once by rank 0 and
followed by every rank, and what the loop needs to know about the data (:class:`TrainInputs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from masterkey.data import training as D
from masterkey.data.augment import worker_transform
from masterkey.data.batches import MemoryBatches, StreamBatches, TrainSamples
from masterkey.data.memory import ImageSet
from masterkey.data.preprocessing import Preprocessing
from masterkey.data.samples import Samples, list_samples
from masterkey.data.selection import subset_positions
from masterkey.data.stream import DataMode, StreamedImages, choose_data_mode, decode_all, default_workers
from masterkey.errors import option
from masterkey.train.distributed import Distributed, run_on_main

log = logging.getLogger("masterkey")


@dataclass
class TrainInputs:
    """What the training loop reads: the chosen data path, the batches, the test images, and facts about them."""

    mode: DataMode
    batches: MemoryBatches | StreamBatches
    test: ImageSet | StreamedImages
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    n_train: int
    n_test: int
    image_shape: tuple[int, int, int]
    source: str  #: the training split, for messages
    workers: int
    preprocessing: Preprocessing  #: of the test images: what the trained model's weights record


def _split_samples(config: Any) -> tuple[Samples, Samples]:
    if config.dataset:
        train = list_samples(config.data, config.dataset, "train")
        test = list_samples(config.data, config.dataset, "validation")
    else:
        train_dir, test_dir = D.find_splits(config.data)
        train, test = list_samples(train_dir), list_samples(test_dir)
    D.check_same_classes(train.classes, test.classes, f"{option('data', config.data)}: the train and test splits")
    keep_train = subset_positions(train.labels, len(train.classes), config.max_train_images)
    keep_test = subset_positions(test.labels, len(test.classes), config.max_test_images)
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
    hint = D.size_hint()
    test_images = StreamedImages(test, resize, config.image_size, config.interpolation, hint)
    train_fixed = StreamedImages(train, resize, config.image_size, config.interpolation, hint)
    root = Path(config.data)

    def prep(mean: tuple[float, float, float], std: tuple[float, float, float]) -> Preprocessing:
        return Preprocessing(resize, config.image_size, config.interpolation, mean, std)

    if not mode.stream:
        data = _memory_data(config, info, train_fixed, test_images, workers)
        return TrainInputs(
            mode, MemoryBatches(data, config, info.rank, info.world_size, device),
            ImageSet(data.test.images.to(device), data.test.labels.to(device), data.classes, data.test.root),
            data.classes, data.mean, data.std, len(data.train), len(data.test), data.image_shape, train.root, workers,
            prep(data.mean, data.std),
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
    batches = StreamBatches(dataset, config, info.rank, info.world_size, device, mean, std, workers)
    return TrainInputs(
        mode, batches, test_images, train.classes, mean, std, len(train), len(test), image_shape, train.root, workers,
        prep(mean, std),
    )  # fmt: skip


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
