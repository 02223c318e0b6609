"""Re-estimate BatchNorm running statistics after a swap (docs/design.md, pipeline step 5: non-LayerNorm networks).

A BatchNorm after a depthwise conv normalises with the mean and variance the *trained* filter produced; once the
filter is swapped for ``a * key + b`` those statistics are stale. Re-estimating them on a few hundred training
images (no labels, no gradients, no weight change) removes that mismatch. LayerNorm networks (ConvNeXt) normalise
with per-image statistics and need nothing of the kind.

The estimate is the cumulative average over batches (``momentum=None``) of the per-batch statistics, with only
the BatchNorm layers in training mode (dropout and the rest stay in eval mode). Which images calibrate is chosen in
:mod:`masterkey.data.selection` (training images, or cross-fitted folds of the evaluation set).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from masterkey.data.preprocessing import Preprocessing, normalization_tensors, normalize_images
from masterkey.data.stream import Images, image_batches
from masterkey.errors import MasterkeyError
from masterkey.progress import progress_bar


@dataclass(frozen=True)
class RecalibrationReport:
    """What :func:`recalibrate_batchnorm` did."""

    n_images: int
    n_batchnorm: int
    batch_size: int
    seconds: float
    data: str


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BatchNorm layers of ``model`` that keep running statistics (timm's BatchNormAct2d included)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def has_batchnorm(model: nn.Module) -> bool:
    """True when ``model`` has BatchNorm layers with running statistics to re-estimate."""
    return bool(batchnorm_layers(model))


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    images: Images,
    prep: Preprocessing,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    workers: int | None = None,
    desc: str = "recalibrate",
) -> RecalibrationReport:
    """Reset and re-estimate, in place, the running mean / variance of every BatchNorm layer of ``model`` on
    ``images`` (in memory or streamed; labels unused). The model is left in eval mode with its momenta as they
    were. ``progress``: a bar per batch named ``desc``."""
    bns = batchnorm_layers(model)
    if not bns:
        raise MasterkeyError(
            f"{type(model).__name__}: the model has no BatchNorm layer to recalibrate (LayerNorm networks such as "
            "ConvNeXt normalise per image and keep no running statistics)"
        )
    if len(images) == 0:
        raise MasterkeyError(f"{images.root}: no calibration images")
    if len(images) < 2 or batch_size < 2:
        raise MasterkeyError("recalibration needs at least 2 images per batch (a variance of one image is zero)")
    start = time.perf_counter()
    device = torch.device(device)
    model.eval().to(device, memory_format=torch.channels_last)
    momenta = [bn.momentum for _, bn in bns]
    mean, std = normalization_tensors(prep, device)
    # A last batch of one image cannot give a variance: fold it into the previous batch.
    starts = list(range(0, len(images), batch_size))
    if len(starts) > 1 and len(images) - starts[-1] < 2:
        starts.pop()
    batches = [range(s, starts[i + 1] if i + 1 < len(starts) else len(images)) for i, s in enumerate(starts)]
    try:
        for _, bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: every batch counts equally
            bn.train()
        bar = progress_bar(total=len(batches), desc=desc, unit="batch", enabled=progress)
        for x, _ in image_batches(images, batches, device, workers=workers):
            model(normalize_images(x, mean, std).contiguous(memory_format=torch.channels_last))
            bar.update()
        bar.close()
    finally:
        for (_, bn), momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    return RecalibrationReport(len(images), len(bns), batch_size, time.perf_counter() - start, str(images.root))
