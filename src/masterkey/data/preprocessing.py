"""How images become model inputs: the deterministic evaluation geometry, the mean / std, and the one normalisation.

- :class:`Preprocessing`: resize of the shorter side, centre crop, interpolation, mean and std.
- :func:`preprocessing_for`: the preprocessing a model was trained with: what a masterkey-trained model's weights
  record (``preprocessing`` in their metadata, written by ``masterkey train``), the CIFAR recipe for weights that
  say ``dataset=cifar10``, timm's data config, or torchvision's ImageNet evaluation.
- :func:`normalize_images`: uint8 ``[B, 3, H, W]`` → float32 ``(x / 255 - mean) / std``, the one definition used
  by evaluation, recalibration and training (in the order of torchvision's ``ToTensor`` + ``Normalize``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from masterkey.errors import MasterkeyError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "preprocessing") -> Preprocessing:
        """The preprocessing :meth:`to_dict` wrote; :class:`MasterkeyError` naming ``where`` for anything else."""
        try:
            resize, crop = data["resize"], data["crop"]
            mean = tuple(float(v) for v in data["mean"])
            std = tuple(float(v) for v in data["std"])
            interpolation = str(data["interpolation"])
            sizes_ok = all(v is None or (isinstance(v, int) and 1 <= v <= 8192) for v in (resize, crop))
            if not sizes_ok or len(mean) != 3 or len(std) != 3 or interpolation not in INTERPOLATIONS:
                raise ValueError("out of range")
            if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
                raise ValueError("mean / std not finite, or std not positive")
        except (KeyError, TypeError, ValueError) as exc:
            raise MasterkeyError(f"{where}: not a valid preprocessing record ({exc})") from None
        return cls(resize, crop, interpolation, mean, std)  # type: ignore[arg-type]


CIFAR10 = Preprocessing(None, None, "bilinear", CIFAR10_MEAN, CIFAR10_STD)
TORCHVISION_IMAGENET = Preprocessing(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
#: The metadata key of weights files under which ``masterkey train`` records the test preprocessing.
METADATA_KEY = "preprocessing"


def preprocessing_for(model: nn.Module, metadata: Mapping[str, str] | None = None) -> Preprocessing:
    """The preprocessing ``model`` was trained with, from its weights' safetensors ``metadata`` where they say:

    ``preprocessing`` (JSON of :meth:`Preprocessing.to_dict`, what ``masterkey train`` writes: its test images'
    size and normalisation); ``dataset=cifar10`` (the CIFAR-10 ConvNeXts of ../shared) gives the 32x32 CIFAR recipe.
    Otherwise timm models use their data config (input size, crop_pct, interpolation, mean / std) and torchvision
    ImageNet models resize 256, crop 224, bilinear.
    """
    metadata = metadata or {}
    if METADATA_KEY in metadata:
        try:
            recorded = json.loads(metadata[METADATA_KEY])
        except (TypeError, ValueError):
            recorded = None
        if not isinstance(recorded, dict):
            raise MasterkeyError(f"the weights' metadata '{METADATA_KEY}' is not a JSON object")
        return Preprocessing.from_dict(recorded, f"the weights' metadata '{METADATA_KEY}'")
    if str(metadata.get("dataset", "")).lower().startswith("cifar"):
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


def preprocessing_named(name: str, model: nn.Module, metadata: Mapping[str, str] | None = None) -> Preprocessing:
    """``"auto"`` (the model's own, see :func:`preprocessing_for`), ``"cifar10"`` or ``"imagenet"`` (torchvision's
    resize 256 / crop 224 / ImageNet mean and std)."""
    key = name.lower()
    if key == "auto":
        return preprocessing_for(model, metadata)
    if key.startswith("cifar"):
        return CIFAR10
    if key == "imagenet":
        return TORCHVISION_IMAGENET
    raise MasterkeyError(f"preprocessing {name!r}: expected auto, cifar10 or imagenet")


def normalize_images(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] → float32 ``(x / 255 - mean) / std`` (``mean``, ``std``: [3] on the same device)."""
    x = images.to(torch.float32).div_(255)
    return x.sub_(mean[:, None, None]).div_(std[:, None, None])


def normalization_tensors(prep: Preprocessing, device: str | torch.device) -> tuple[Tensor, Tensor]:
    """``prep``'s mean and std as float32 [3] tensors on ``device`` (what :func:`normalize_images` takes)."""
    return torch.tensor(prep.mean, device=device), torch.tensor(prep.std, device=device)
