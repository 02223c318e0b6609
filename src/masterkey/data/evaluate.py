"""Top-1 / top-5 accuracy of a classifier on an image folder, with the model's own preprocessing, on images held in
memory or streamed from disk (:mod:`masterkey.stream`)."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from masterkey.errors import MasterkeyError
from masterkey.images import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    first_per_class,
    load_image_folder,
    stratified_split,
)
from masterkey.progress import progress_bar
from masterkey.stream import (
    Images,
    Samples,
    StreamedImages,
    choose_data_mode,
    decode_all,
    image_batches,
    list_samples,
    ranges,
)

log = logging.getLogger("masterkey")


@dataclass(frozen=True)
class Preprocessing:
    """Deterministic evaluation preprocessing: resize the shorter side, centre-crop, normalise."""

    resize: int | None
    crop: int | None
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CIFAR10 = Preprocessing(None, None, "bilinear", CIFAR10_MEAN, CIFAR10_STD)
TORCHVISION_IMAGENET = Preprocessing(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)


def preprocessing_for(model: nn.Module, dataset: str | None = None) -> Preprocessing:
    """The preprocessing a model was trained with.

    ``dataset="cifar10"`` (as recorded in the CIFAR-10 ConvNeXts' metadata) gives the 32x32 CIFAR recipe; timm
    models use their data config (input size, crop_pct, interpolation, mean / std); torchvision ImageNet models
    resize 256, crop 224, bilinear.
    """
    if dataset and dataset.lower().startswith("cifar"):
        return CIFAR10
    if type(model).__module__.startswith("timm."):
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        size = int(cfg["input_size"][-1])
        return Preprocessing(
            resize=math.floor(size / cfg.get("crop_pct", 1.0)),
            crop=size,
            interpolation=str(cfg.get("interpolation", "bilinear")),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
        )
    return TORCHVISION_IMAGENET


def preprocessing_named(name: str, model: nn.Module) -> Preprocessing:
    """``"auto"`` (the model's own, see :func:`preprocessing_for`), ``"cifar10"`` or ``"imagenet"`` (torchvision's
    resize 256 / crop 224 / ImageNet mean and std)."""
    key = name.lower()
    if key == "auto":
        return preprocessing_for(model)
    if key.startswith("cifar"):
        return CIFAR10
    if key == "imagenet":
        return TORCHVISION_IMAGENET
    raise MasterkeyError(f"preprocessing {name!r}: expected auto, cifar10 or imagenet")


def select_eval_samples(
    root: str | Path, max_per_class: int | None = None, max_images: int | None = None, seed: int = 0
) -> Samples:
    """The samples of ``root`` an evaluation reads: the first ``max_per_class`` of each class, then a
    class-stratified random subset of ``max_images`` (seeded). Nothing is decoded."""
    if max_images is not None and max_images < 1:
        raise MasterkeyError(f"max_images={max_images}: must be at least 1")
    samples = list_samples(root)
    if max_per_class is not None:
        samples = samples.subset(first_per_class(samples.labels.tolist(), max_per_class))
    if max_images is not None and max_images < len(samples):
        _, keep = stratified_split(samples.labels, held_out=max_images, seed=seed)
        samples = samples.subset(keep)
    return samples


def load_eval_images(
    root: str | Path,
    prep: Preprocessing,
    max_per_class: int | None = None,
    max_images: int | None = None,
    seed: int = 0,
    data_mode: str = "memory",
    memory_budget: str | int | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> Images:
    """The images of ``root`` (an ImageFolder tree or tar shards of one) with the geometry of ``prep`` applied.

    ``max_per_class`` keeps the first N files of each class; ``max_images`` then a class-stratified random subset
    of N images (seeded), decoding only those (handy for the 1000-class imagenet-samples with one image a class).
    ``data_mode``: ``memory`` decodes them once (an ImageFolder without ``max_images`` through the disk cache) into
    an :class:`ImageSet`; ``stream`` returns :class:`~masterkey.stream.StreamedImages` decoded batch by batch when
    evaluated (the same pixels); ``auto`` streams when the decoded set exceeds the memory budget (see
    :func:`masterkey.stream.choose_data_mode`) and logs which path it took. ``progress``: a bar while decoding.
    """
    samples = select_eval_samples(root, max_per_class, max_images, seed)
    streamed = StreamedImages(samples, prep.resize, prep.crop, prep.interpolation)
    choice = choose_data_mode(data_mode, len(samples), streamed.image_shape(), what=str(root), budget=memory_budget)
    if data_mode == "auto":
        log.info(f"data: {choice.reason}")
    if choice.stream:
        return streamed
    if max_images is None and samples.from_folder:
        return load_image_folder(
            root,
            resize=prep.resize,
            crop=prep.crop,
            interpolation=prep.interpolation,
            max_per_class=max_per_class,
            progress=progress,
        )
    return decode_all(streamed, workers=workers, progress=progress)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Images,
    prep: Preprocessing,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    workers: int | None = None,
    desc: str = "evaluate",
) -> Tensor:
    """Logits [N, classes] of ``model`` (in eval mode) over ``images`` (in memory, or streamed by ``workers``
    DataLoader processes: the same batches, the same numbers). ``progress``: a bar per batch named ``desc``."""
    device = torch.device(device)
    # channels_last is markedly faster for depthwise convs on CPU (oneDNN) and on GPU tensor cores.
    model.eval().to(device, memory_format=torch.channels_last)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255
    out = []
    batches = ranges(len(images), batch_size)
    bar = progress_bar(total=len(batches), desc=desc, unit="batch", enabled=progress)
    for x, _ in image_batches(images, batches, device, workers=workers):
        x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu())
        bar.update()
    bar.close()
    return torch.cat(out) if out else torch.empty(0)


def accuracy(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions) and the number of images."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError("logits and labels differ in length")
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels[:, None]
    return {"top1": float(hit[:, 0].float().mean()), "top5": float(hit.any(dim=1).float().mean()), "n": len(labels)}


def evaluate(
    model: nn.Module,
    images: Images,
    prep: Preprocessing,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    workers: int | None = None,
    desc: str = "evaluate",
) -> dict[str, float]:
    """Top-1 / top-5 accuracy of ``model`` on ``images``; the class count must match the data's (checked on one
    image before the whole set is run). ``progress``: a bar per batch named ``desc``."""
    check_class_count(model, images, prep, device=device)
    logits = predict_logits(
        model, images, prep, batch_size=batch_size, device=device, progress=progress, workers=workers, desc=desc
    )
    return accuracy(logits, images.labels)


@torch.no_grad()
def check_class_count(model: nn.Module, images: Images, prep: Preprocessing, device: str | torch.device = "cpu") -> int:
    """The number of classes ``model`` predicts; :class:`MasterkeyError` if it differs from the data's."""
    if len(images) == 0:
        raise MasterkeyError(f"{images.root}: no images to evaluate")
    first = images.subset([0])
    n_out = int(predict_logits(model, first, prep, batch_size=1, device=device, progress=False, workers=0).shape[1])
    n_classes = len(images.classes)
    if n_out != n_classes:
        raise MasterkeyError(
            f"{images.root}: class-count mismatch: the data has {n_classes} classes, the model predicts {n_out}"
        )
    return n_out
