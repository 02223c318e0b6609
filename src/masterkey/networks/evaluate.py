"""Top-1 / top-5 accuracy of a classifier on an image folder, with the model's own preprocessing."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from masterkey.errors import MasterkeyError
from masterkey.images import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSet,
    _decode,
    list_image_folder,
    load_image_folder,
    stratified_split,
)


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


def load_eval_images(
    root: str | Path,
    prep: Preprocessing,
    max_per_class: int | None = None,
    max_images: int | None = None,
    seed: int = 0,
) -> ImageSet:
    """Decode (once, cached) the images of ``root`` with the geometric part of ``prep`` applied.

    ``max_per_class`` keeps the first N files of each class; ``max_images`` then a class-stratified random subset
    of N images (seeded), decoding only those (handy for the 1000-class imagenet-samples with one image a class).
    """
    if max_images is None:
        return load_image_folder(
            root, resize=prep.resize, crop=prep.crop, interpolation=prep.interpolation, max_per_class=max_per_class
        )
    if max_images < 1:
        raise MasterkeyError(f"max_images={max_images}: must be at least 1")
    files, labels, classes = list_image_folder(root)
    if max_per_class is not None:
        seen: dict[int, int] = {}
        keep_first = []
        for i, lab in enumerate(labels):
            seen[lab] = seen.get(lab, 0) + 1
            if seen[lab] <= max_per_class:
                keep_first.append(i)
        files, labels = [files[i] for i in keep_first], [labels[i] for i in keep_first]
    label_tensor = torch.tensor(labels, dtype=torch.long)
    if max_images < len(files):
        _, keep = stratified_split(label_tensor, held_out=max_images, seed=seed)
        files, label_tensor = [files[i] for i in keep.tolist()], label_tensor[keep]
    decoded = [_decode(f, prep.resize, prep.crop, prep.interpolation) for f in files]
    if len({tuple(img.shape) for img in decoded}) > 1:
        raise MasterkeyError(f"{root}: images have different sizes; the preprocessing must resize and crop them")
    return ImageSet(torch.stack(decoded).contiguous(), label_tensor, classes, str(root))


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: ImageSet,
    prep: Preprocessing,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Tensor:
    """Logits [N, classes] of ``model`` (in eval mode) over ``images``."""
    device = torch.device(device)
    # channels_last is markedly faster for depthwise convs on CPU (oneDNN) and on GPU tensor cores.
    model.eval().to(device, memory_format=torch.channels_last)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255
    out = []
    batches = range(0, len(images), batch_size)
    for start in tqdm(batches, desc="evaluate", unit="batch", disable=None if progress else True, leave=False):
        x = images.images[start : start + batch_size].to(device, non_blocking=True).float()
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu())
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
    images: ImageSet,
    prep: Preprocessing,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy of ``model`` on ``images``; the class count must match the data's (checked on one
    image before the whole set is run)."""
    check_class_count(model, images, prep, device=device)
    logits = predict_logits(model, images, prep, batch_size=batch_size, device=device, progress=progress)
    return accuracy(logits, images.labels)


@torch.no_grad()
def check_class_count(
    model: nn.Module, images: ImageSet, prep: Preprocessing, device: str | torch.device = "cpu"
) -> int:
    """The number of classes ``model`` predicts; :class:`MasterkeyError` if it differs from the data's."""
    if len(images) == 0:
        raise MasterkeyError(f"{images.root}: no images to evaluate")
    n_out = int(predict_logits(model, images.subset([0]), prep, batch_size=1, device=device, progress=False).shape[1])
    n_classes = len(images.classes)
    if n_out != n_classes:
        raise MasterkeyError(
            f"{images.root}: class-count mismatch: the data has {n_classes} classes, the model predicts {n_out}"
        )
    return n_out
