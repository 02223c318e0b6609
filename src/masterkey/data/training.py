"""Training data in memory: decoded once (``masterkey.images`` cache), held as uint8 tensors on the device,
augmented there (:class:`MemoryBatches`); and what both data paths share: the (seed, epoch)-derived order, the
per-batch crop / flip, mixup / cutmix. The streamed path is :mod:`masterkey.train.loader`.

Every random choice — the epoch's order, each image's crop offset and flip, each batch's mixup / cutmix — is drawn
from a generator seeded by ``(seed, epoch, step, ...)``, never from a global random state. So an epoch replayed
after a crash is bitwise the same, and the augmentation of an image does not depend on how many processes share
the batch (the crop / flip parameters are drawn for the global batch and sliced per rank).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from masterkey.errors import MasterkeyError, option
from masterkey.images import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSet,
    first_per_class,
    list_image_folder,
    load_image_folder,
    stratified_split,
)
from masterkey.stream import StreamedImages, image_batches, ranges

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
    try:
        images = load_image_folder(
            path, resize=resize, crop=image_size, interpolation=interpolation, max_per_class=per_class
        )
    except MasterkeyError as exc:
        if "different sizes" in str(exc):
            raise MasterkeyError(f"{exc} (for training: {option('image_size', 'N')})") from None
        raise
    if max_images is not None and len(images) > max_images:
        keep, _ = stratified_split(images.labels, len(images) - max_images, seed=0)
        images = images.subset(keep)
    return images


_MEMO: dict[tuple[object, ...], TrainData] = {}


def _signature(path: Path) -> tuple[object, ...]:
    # Adding, removing or renaming images changes a class folder's mtime.
    return tuple((p.name, p.stat().st_mtime_ns) for p in [path, *_class_dirs(path)])


def subset_positions(labels: Tensor, n_classes: int, max_images: int | None) -> Tensor | None:
    """The class-balanced subset :func:`load_train_data` keeps (positions into ``labels``), or None for all: the
    first ``ceil(max / classes)`` of each class, then an even trim (seed 0). The streamed path uses it so that
    both paths train on the same images."""
    if max_images is None:
        return None
    keep = torch.tensor(first_per_class(labels.tolist(), math.ceil(max_images / n_classes)), dtype=torch.long)
    if len(keep) > max_images:
        kept, _ = stratified_split(labels[keep], len(keep) - max_images, seed=0)
        keep = keep[kept]
    return keep


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


# ---------------------------------------------------------------------- order and augmentation
def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


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


@dataclass
class CropFlip:
    """Per-image crop offsets (into the padded image) and flips for one global batch."""

    dy: Tensor
    dx: Tensor
    flip: Tensor

    def slice(self, start: int, stop: int) -> CropFlip:
        return CropFlip(self.dy[start:stop], self.dx[start:stop], self.flip[start:stop])

    def select(self, keep: Tensor) -> CropFlip:
        """The parameters of the images ``keep`` (a boolean mask) leaves, for a batch that lost unreadable images."""
        return CropFlip(self.dy[keep], self.dx[keep], self.flip[keep])


def crop_flip_params(batch_size: int, padding: int, hflip: bool, seed: int, epoch: int, step: int) -> CropFlip:
    """Crop offsets in ``[0, 2 * padding]`` and flips for a global batch, drawn from ``(seed, epoch, step)``."""
    gen = generator(seed, epoch, step, "cropflip")
    dy = torch.randint(0, 2 * padding + 1, (batch_size,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (batch_size,), generator=gen)
    flip = torch.rand(batch_size, generator=gen) < 0.5
    if not hflip:
        flip = torch.zeros_like(flip)
    return CropFlip(dy, dx, flip)


def normalize_images(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] → float32 ``(x / 255 - mean) / std`` (``mean``, ``std``: [3] on the same device)."""
    x = images.to(torch.float32).div_(255)
    return x.sub_(mean[:, None, None]).div_(std[:, None, None])


def random_crop_flip(x: Tensor, padding: int, params: CropFlip) -> Tensor:
    """Random crop with reflect padding plus horizontal flip of a float batch, in one gather on the device.

    The result is laid out channels-last in memory (call ``.contiguous()`` for NCHW).
    """
    b, _, h, w = x.shape
    if padding:
        x = F.pad(x, (padding, padding, padding, padding), mode="reflect")
    dev = x.device
    dy, dx, flip = params.dy.to(dev), params.dx.to(dev), params.flip.to(dev)
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


def soft_targets(labels: Tensor, n_classes: int, smoothing: float) -> Tensor:
    """One-hot targets with label smoothing: ``1 - s + s / C`` on the label, ``s / C`` elsewhere."""
    out = torch.full((len(labels), n_classes), smoothing / n_classes, device=labels.device)
    return out.scatter_(1, labels[:, None], 1 - smoothing + smoothing / n_classes)


def mix_batch(
    x: Tensor, targets: Tensor, mixup: float, cutmix: float, seed: int, epoch: int, step: int, rank: int
) -> tuple[Tensor, Tensor]:
    """Mixup (``mixup`` = Beta alpha) or cutmix (``cutmix`` = Beta alpha) with the reversed batch; when both are
    on, each batch takes one of them with probability 1/2. Returns mixed images and soft targets."""
    if not (mixup > 0 or cutmix > 0) or len(x) < 2:
        return x, targets
    rng = np.random.default_rng(derive_seed(seed, epoch, step, rank, "mix"))
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    partner = x.flip(0)
    if use_cutmix:
        h, w = x.shape[-2:]
        ratio = math.sqrt(1 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x.mul(lam).add_(partner, alpha=1 - lam)
    return x, targets.mul(lam).add_(targets.flip(0), alpha=1 - lam)


def device_augment(
    x: Tensor, config: Any, epoch: int, step: int, rank: int, per_rank: int, keep: Tensor | None = None
) -> Tensor:
    """The per-batch crop and flip of a normalised batch on its device: the parameters are drawn for the global
    batch from ``(seed, epoch, step)`` and this rank's slice is taken (``keep`` drops the images a streamed batch
    lost), so every image gets the same crop and flip whatever the number of processes and the data path."""
    if not (config.crop_padding > 0 or config.hflip):
        return x
    params = crop_flip_params(config.batch_size, config.crop_padding, config.hflip, config.seed, epoch, step)
    params = params.slice(rank * per_rank, (rank + 1) * per_rank)
    if keep is not None:
        params = params.select(keep)
    return random_crop_flip(x, config.crop_padding, params)


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
        from masterkey.train.distributed import shard_batch

        config = self.config
        per_rank = config.batch_size // self.world_size
        order = epoch_order(len(self.labels), config.seed, epoch)
        for step in range(start_step, self.steps):
            index = shard_batch(global_batch(order, step, config.batch_size), self.rank, self.world_size)
            index = index.to(self.device, non_blocking=True)
            x = normalize_images(self.images[index], self.mean, self.std)
            x = device_augment(x, config, epoch, step, self.rank, per_rank)
            yield StepBatch(x, self.labels[index], index)


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
