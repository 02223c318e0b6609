"""Training and test splits: where they are, decoded once into memory, and the normalisation they use.

:func:`load_train_data` decodes ``DATA/train`` and ``DATA/test`` (or ``val``) through the decoded-image cache
(:mod:`masterkey.data.memory`) into a :class:`TrainData` (the in-memory path; batches and augmentation are
:mod:`masterkey.data.batches` and :mod:`masterkey.data.augment`); :func:`normalization` gives the mean and std either
path normalises with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from masterkey.data.decode import list_image_folder
from masterkey.data.memory import ImageSet, load_image_folder
from masterkey.data.preprocessing import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from masterkey.data.selection import stratified_split
from masterkey.data.stream import StreamedImages, image_batches, ranges
from masterkey.errors import MasterkeyError, option

TRAIN_SPLITS = ("train",)
TEST_SPLITS = ("test", "val")


@dataclass
class TrainData:
    """Train and test images (uint8 [N, 3, H, W]) with labels, class names and the normalisation in use."""

    train: ImageSet
    test: ImageSet
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_dir: Path
    test_dir: Path

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


def _split(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
        if (root / f"{name}.tar").is_file():
            return root / f"{name}.tar"
    return None


def find_splits(root: str | Path) -> tuple[Path, Path]:
    """``(DATA/train, DATA/test or DATA/val)`` — each an ImageFolder tree, a folder of tar shards or a ``.tar``
    file (``DATA/train.tar``); a clear error for any other layout."""
    root = Path(root)
    if not root.is_dir():
        raise MasterkeyError(f"{option('data', root)}: no such data folder")
    train = _split(root, TRAIN_SPLITS)
    test = _split(root, TEST_SPLITS)
    if train is None or test is None:
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        missing = "train/" if train is None else "test/ (or val/)"
        hint = ""
        if subdirs and train is None and any(list((root / d).glob("*.*"))[:1] for d in subdirs[:3]):
            hint = (
                f"; it looks like one split of class folders: point {option('data')} at the folder holding train/ "
                "and test/"
            )
        shown = ", ".join(subdirs[:6]) + (", ..." if len(subdirs) > 6 else "")
        raise MasterkeyError(
            f"{option('data', root)}: expected DATA/train and DATA/test (or DATA/val) ImageFolders (or tar shards, or "
            f"train.tar and val.tar), missing {missing} (found sub-folders: {shown or 'none'}){hint}"
        )
    return train, test


def _class_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def size_hint() -> str:
    """What training advises for images of different sizes."""
    return f"give {option('image_size', 'N')} to resize and centre-crop them to one size"


def eval_resize(image_size: int | None, crop_pct: float) -> int | None:
    """The shorter-side size evaluation images are resized to before the centre crop to ``image_size``."""
    return None if image_size is None else math.floor(image_size / crop_pct)


def _load_split(
    path: Path, image_size: int | None, max_images: int | None, crop_pct: float = 1.0, interpolation: str = "bilinear"
) -> ImageSet:
    per_class = None
    if max_images is not None:
        classes = _class_dirs(path)
        if not classes:
            list_image_folder(path)  # raises the layout error
        per_class = math.ceil(max_images / len(classes))
    resize = eval_resize(image_size, crop_pct)
    images = load_image_folder(
        path,
        resize=resize,
        crop=image_size,
        interpolation=interpolation,
        max_per_class=per_class,
        size_hint=size_hint(),
    )
    if max_images is not None and len(images) > max_images:
        keep, _ = stratified_split(images.labels, len(images) - max_images, seed=0)
        images = images.subset(keep)
    return images


_MEMO: dict[tuple[object, ...], TrainData] = {}


def _signature(path: Path) -> tuple[object, ...]:
    # Adding, removing or renaming images changes a class folder's mtime.
    return tuple((p.name, p.stat().st_mtime_ns) for p in [path, *_class_dirs(path)])


def load_train_data(
    root: str | Path,
    image_size: int | None = None,
    max_train_images: int | None = None,
    max_test_images: int | None = None,
    normalize: str = "auto",
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
) -> TrainData:
    """Decode (or read from the cache) ``root/train`` and ``root/test`` (or ``root/val``).

    ``max_*_images`` keep a class-balanced subset (the first files of each class, then an even trim), the same
    for every seed. ``normalize``: ``auto`` (CIFAR-10 statistics when the folder name says cifar, ImageNet
    statistics otherwise), ``cifar10``, ``imagenet``, or ``dataset`` (computed from the training images).
    Images are resized (shorter side, ``interpolation``) to ``image_size / crop_pct`` and centre-cropped to
    ``image_size`` (nothing when ``image_size`` is None).
    The last few results are kept in memory (keyed by the options and the folders' modification times), so the
    runs of an experiment do not re-read the cache; treat the returned tensors as read-only.
    """
    train_dir, test_dir = find_splits(root)
    key = (
        str(Path(root).resolve()),
        image_size,
        max_train_images,
        max_test_images,
        normalize,
        crop_pct,
        interpolation,
        _signature(train_dir),
        _signature(test_dir),
    )
    if key in _MEMO:
        return _MEMO[key]
    geometry = (crop_pct, interpolation)
    data = _load_train_data(
        root, train_dir, test_dir, image_size, max_train_images, max_test_images, normalize, geometry
    )
    if len(_MEMO) >= 4:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = data
    return data


def _load_train_data(
    root: str | Path,
    train_dir: Path,
    test_dir: Path,
    image_size: int | None,
    max_train_images: int | None,
    max_test_images: int | None,
    normalize: str,
    geometry: tuple[float, str] = (1.0, "bilinear"),
) -> TrainData:
    train = _load_split(train_dir, image_size, max_train_images, *geometry)
    test = _load_split(test_dir, image_size, max_test_images, *geometry)
    names = (train_dir.name, test_dir.name)
    check_same_classes(train.classes, test.classes, f"{option('data', root)}: {names[0]}/ and {names[1]}/", *names)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise MasterkeyError(
            f"{option('data', root)}: train images are {tuple(train.images.shape[1:])} but test images "
            f"{tuple(test.images.shape[1:])}; pass {option('image_size', 'N')} to make them equal"
        )
    mean, std = normalization(normalize, Path(root), train)
    return TrainData(train, test, train.classes, mean, std, train_dir, test_dir)


def normalization(
    name: str, root: Path, train: ImageSet | StreamedImages, workers: int | None = None
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std (in [0, 1] units) for ``name`` (see :func:`load_train_data`); ``dataset`` reads the
    training images (in memory, or streamed once by ``workers`` processes)."""
    if name == "auto":
        name = "cifar10" if "cifar" in str(root.resolve()).lower() else "imagenet"
    if name == "cifar10":
        return CIFAR10_MEAN, CIFAR10_STD
    if name == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if name != "dataset":
        raise MasterkeyError(f"normalize '{name}': expected auto, cifar10, imagenet or dataset")
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    chunk_size = 4096 if isinstance(train, ImageSet) else 256
    for chunk, _ in image_batches(train, ranges(len(train), chunk_size), workers=workers):
        x = chunk.to(torch.float64) / 255
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())  # type: ignore[return-value]


def check_same_classes(
    train: Sequence[str], test: Sequence[str], what: str, train_name: str = "train", test_name: str = "test"
) -> None:
    """Refuse train and test splits whose class lists differ, naming a few classes found in only one of them."""
    if train != test:
        only_train = sorted(set(train) - set(test))[:3]
        only_test = sorted(set(test) - set(train))[:3]
        raise MasterkeyError(
            f"{what} have different classes ({len(train)} vs {len(test)}; only in {train_name}: {only_train}, "
            f"only in {test_name}: {only_test})"
        )
